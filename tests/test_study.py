"""``multitag study``: a two-run grid on a small real subset produces the table and report."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FASHION, requires_fashion

pytestmark = [pytest.mark.slow, requires_fashion]


def test_config_validation(tmp_path):
    from multitag.research.study import StudyConfig

    with pytest.raises(ValueError, match="unknown keys"):
        StudyConfig.from_dict({"data": "x.csv", "epoch": 3})
    cfg = StudyConfig.from_dict(
        {
            "data": "x.csv",
            "freeze": ["all", "blocks.5"],
            "sharing": ["single", "hard"],
            "balancing": ["equal", "uncertainty"],
        }
    )
    runs = cfg.runs()
    # 'all' trains heads only (one run), single-task runs have nothing to balance
    assert {
        "backbone": "tf_efficientnet_lite0",
        "freeze": "all",
        "sharing": "hard",
        "balancing": "equal",
    } in runs
    assert len(runs) == 1 + 1 + 2


def test_two_run_study(tmp_path):
    from typer.testing import CliRunner

    from multitag.cli.main import app

    config = tmp_path / "study.yaml"
    config.write_text(
        f"data: {FASHION / 'styles.csv'}\nimages: {FASHION / 'images'}\n"
        "tasks: [gender, masterCategory]\nsubset: 120\nimage_size: 64\nepochs: 1\n"
        "warm_epochs: 3\nfreeze: [all, blocks.5]\nsharing: [hard]\nbalancing: [equal]\n"
        f"cache_dir: {tmp_path / 'cache'}\n"
    )
    out = tmp_path / "study"
    result = CliRunner().invoke(app, ["study", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = (out / "study.csv").read_text().splitlines()
    assert len(table) == 3 and table[0].startswith("backbone,freeze,sharing,balancing,gender_f1")
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 2
    for path in runs:
        run = json.loads(path.read_text())
        assert 0.3 < run["metrics"]["gender"]["weighted_f1"] <= 1.0
        assert run["trainable_params"] > 0 and run["inference_ms"] > 0
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "blocks.5" in html
    # resumable: a second call trains nothing new
    stamps = [p.stat().st_mtime_ns for p in runs]
    result = CliRunner().invoke(app, ["study", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [p.stat().st_mtime_ns for p in runs] == stamps
    assert json.loads((out / "data.json").read_text())["group_copies"] is True
    # a new run on another split (here: another seed) is refused before it trains
    config.write_text(
        config.read_text().replace("freeze: [all, blocks.5]", "freeze: [all, blocks.5, blocks.6]")
        + "seed: 3\n"
    )
    result = CliRunner().invoke(app, ["study", str(config), "--out", str(out)])
    assert result.exit_code != 0
    assert "2 finished run(s) were scored on another val/test split" in result.output
    assert not (out / "runs" / "tf_efficientnet_lite0__blocks.6__hard__equal.json").exists()
