"""Learning curves: heads refitted on growing shares of the training rows, real images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from multitag.research.learning_curve import (
    LearningCurve,
    fit_power_law,
    learning_curve,
    power_law,
    rows_for_target,
)
from tests.conftest import FASHION, requires_fashion


def test_power_law_fit_recovers_a_known_curve():
    n = np.array([500, 1000, 2000, 4000, 8000], float)
    error = power_law(n, a=3.0, b=0.5, c=0.05)
    fit = fit_power_law(n, error)
    assert fit["b"] == pytest.approx(0.5, abs=0.02)
    assert fit["c"] == pytest.approx(0.05, abs=0.005)
    # F1 0.96 needs error 0.04, below the floor: no number of rows reaches it
    assert rows_for_target(fit, 0.96) is None
    needed = rows_for_target(fit, 0.9)  # 0.05 + 3 / sqrt(n) = 0.1  ->  n = 3600
    assert needed == pytest.approx(3600, rel=0.05)
    assert fit_power_law(n[:2], error[:2]) is None  # too few sizes
    assert fit_power_law(n, error[::-1]) is None  # error grows with n: no curve to fit


def test_extrapolate_reports_doublings_and_rows_for_target(tmp_path):
    rows = []
    for n in (1000, 2000, 4000, 8000):
        for seed in (0, 1):
            f1 = 1 - power_law(n, 3.0, 0.5, 0.05) + (0.002 if seed else -0.002)
            rows.append({"fraction": n / 8000, "n_train": n, "seed": seed, "task": "t"})
            rows[-1].update(weighted_f1=f1, accuracy=f1)
    import pandas as pd

    curve = LearningCurve(pd.DataFrame(rows), n_val=100)
    summary = curve.summary()
    assert summary["weighted_f1_std"].gt(0).all() and summary["seeds"].eq(2).all()
    row = curve.extrapolate({"t": 0.92}).iloc[0]
    expected_last = power_law(4000, 3.0, 0.5, 0.05) - power_law(8000, 3.0, 0.5, 0.05)
    assert row["last_doubling_gain"] == pytest.approx(expected_last, rel=1e-6)
    assert 0 < row["next_doubling_gain"] < row["last_doubling_gain"]
    assert row["rows_for_target"] == pytest.approx(3.0**2 / 0.03**2, rel=0.1)  # 10,000
    assert curve.plot({"t": 0.92}).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match=r"\['colour'\], which are not among the tasks \['t'\]"):
        curve.extrapolate({"t": 0.92, "colour": 0.8})
    with pytest.raises(ValueError, match="colour"):  # refused before any file is written
        curve.save(tmp_path / "lc", {"colour": 0.8})
    assert not (tmp_path / "lc").exists()


@requires_fashion
def test_learning_curve_on_real_images(fashion_frame, cache_dir, tmp_path):
    from multitag import MultiTaskTagger
    from multitag.tagger.config import from_flat

    def tagger(**kw):
        return MultiTaskTagger(["gender", "articleType"], **from_flat(dict(
            image_size=96, epochs=10, cache_dir=cache_dir, progress=False, min_count=3, **kw,
        )))  # fmt: skip

    curve = learning_curve(tagger(), fashion_frame, fractions=(0.125, 0.5, 1.0), seeds=2)
    s = curve.summary().set_index(["task", "n_train"]).sort_index()
    sizes = sorted(curve.scores["n_train"].unique())
    assert len(sizes) == 3 and sizes[-1] == curve.settings["n_train_all"]
    assert len(curve.scores) == 3 * 2 * 2  # sizes x seeds x tasks
    # eight articleTypes: 30 training photos are far worse than all of them
    at = s.loc["articleType", "weighted_f1"]
    assert at.iloc[-1] > at.iloc[0] + 0.1
    # the same split and seed as fit(): the full-size first draw is the fitted tagger's heads
    # (the curve trains on the photos alone, so the fitted tagger has no extra views either)
    fitted = tagger(views="none").fit(fashion_frame)
    assert len(fitted.split_["val_ids"]) == curve.n_val
    first = curve.scores.query("seed == 0 and n_train == @sizes[-1] and task == 'articleType'")
    from multitag.evaluation.report import evaluate_split

    report = evaluate_split(fitted)
    assert first["weighted_f1"].item() == pytest.approx(
        report["tasks"]["articleType"]["weighted_f1"], abs=1e-6
    )
    out = curve.save(tmp_path / "lc", {"articleType": 0.99})
    doc = json.loads((out / "learning_curve.json").read_text())
    assert {r["task"] for r in doc["extrapolation"]} == {"gender", "articleType"}
    assert (out / "learning_curve.png").read_bytes().startswith(b"\x89PNG")
    table = (out / "learning_curve.md").read_text().splitlines()
    assert table[0] == "| training rows | gender | articleType |"
    assert len(table) == 2 + 3 + 4  # header, sizes, gains, target, rows needed
    assert table[-1].startswith("| rows the target needs |  | ")  # gender has no target
    with pytest.raises(ValueError, match="fractions"):
        learning_curve(tagger(), fashion_frame, fractions=(0, 1.0))
    with pytest.raises(ValueError, match="freeze='all'"):
        learning_curve(tagger(freeze="blocks.5"), fashion_frame)


@requires_fashion
def test_learning_curve_cli(tmp_path):
    from typer.testing import CliRunner

    from multitag.cli.main import app
    from multitag.data.manifest import load_manifest

    frame = load_manifest(FASHION / "styles.csv", FASHION / "images")
    common = frame["articleType"].value_counts().index[:4]
    sample = frame[frame["articleType"].isin(common)].sort_values("id").groupby("articleType")
    sample.head(25).drop(columns="path").to_csv(tmp_path / "styles.csv", index=False)
    args = [
        "learning-curve", "--data", str(tmp_path / "styles.csv"), "--images",
        str(FASHION / "images"), "--tasks", "articleType,gender", "--fractions", "0.25,0.5,1",
        "--seeds", "1", "--image-size", "64", "--epochs", "5", "--min-count", "3",
        "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "lc"),
    ]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--target", "articleType=0.95"])
    assert result.exit_code == 0, result.output
    assert "rows_for_target" in result.output
    scores = (tmp_path / "lc" / "learning_curve.csv").read_text().splitlines()
    assert len(scores) == 1 + 3 * 2
    bad = CliRunner().invoke(app, [*args, "--target", "articleType:0.9"])
    assert bad.exit_code == 2 and "TASK=F1" in bad.output
    bad = CliRunner().invoke(app, [*args, "--target", "colour=0.9"])
    assert bad.exit_code == 2 and "not among the tasks" in bad.output
