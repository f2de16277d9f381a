"""Every numeric CLI option is range-checked before any work starts, and the error names the
option (a negative batch size used to tag every row alike; --top-k -1 dropped a label)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from multitag.cli.main import app
from multitag.tagger.batch import check_at_least

runner = CliRunner()

CASES = [
    (["tag", "m", "x.jpg", "--out", "t.csv", "--batch-size", "-5"], "--batch-size"),
    (["tag", "m", "x.jpg", "--out", "t.csv", "--batch-size", "0"], "--batch-size"),
    (["tag", "m", "x.jpg", "--out", "t.csv", "--top-k", "-1"], "--top-k"),
    (["tag", "m", "x.jpg", "--out", "t.csv", "--top-k", "0"], "--top-k"),
    (["train", "--data", "d.csv", "--out", "m", "--epochs", "0"], "--epochs"),
    (["train", "--data", "d.csv", "--out", "m", "--val-fraction", "1.5"], "--val-fraction"),
    (["train", "--data", "d.csv", "--out", "m", "--head-sets", "0"], "--head-sets"),
    (["train", "--data", "d.csv", "--out", "m", "--min-count", "-2"], "--min-count"),
    (["train", "--data", "d.csv", "--out", "m", "--image-size", "-1"], "--image-size"),
    (["validate", "--data", "d.csv", "--min-count", "0"], "--min-count"),
    (["catalog", "build", "m", "x", "--out", "c", "--chunk-size", "0"], "--chunk-size"),
    (["catalog", "build", "m", "x", "--out", "c", "--topics", "0"], "--topics"),
    (["catalog", "build", "m", "x", "--out", "c", "--clusters", "-3"], "--clusters"),
    (["catalog", "build", "m", "x", "--out", "c", "--batch-size", "0"], "--batch-size"),
    (["serve", "c", "--port", "70000"], "--port"),
    (["serve", "c", "--max-upload-mb", "-1"], "--max-upload-mb"),
    (["similar", "idx", "q.jpg", "-k", "0"], "'-k'"),
    (["embed", "train", "--data", "d.csv", "--same", "a", "--out", "m", "--dim", "0"], "--dim"),
    (["learning-curve", "--data", "d.csv", "--out", "o", "--seeds", "0"], "--seeds"),
]


@pytest.mark.parametrize(
    ("argv", "option"), CASES, ids=[" ".join(c[0][:2]) + " " + c[1] for c in CASES]
)
def test_bad_number_is_refused_naming_the_option(argv, option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, argv)
    assert res.exit_code == 2, res.output
    text = re.sub(r"[\s│╭╮╰╯─]+", " ", res.output)
    assert f"Invalid value for {option}" in text.replace("'", "") or option in text, text
    assert "Traceback" not in res.output
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_library_checks_name_the_parameter():
    with pytest.raises(ValueError, match="batch_size=-5: must be an integer >= 1"):
        check_at_least("batch_size", -5, 1)
    with pytest.raises(ValueError, match="top_k=0"):
        check_at_least("top_k", 0, 1)
    check_at_least("top_k", 1, 1)
