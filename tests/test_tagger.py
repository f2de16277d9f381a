"""Integration: real fashion-products images, real Lite0 weights: train, save, reload, tag."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from multitag import MultiTaskTagger
from multitag.cli.main import app
from multitag.core.io import read_table_any
from multitag.evaluation.report import evaluate_frame
from multitag.tagger.batch import tag_to_file
from tests.conftest import FASHION, requires_fashion

pytestmark = [requires_fashion, pytest.mark.slow]
runner = CliRunner()


def test_fit_learns_real_tasks(trained_tagger):
    t = trained_tagger
    assert [task.name for task in t.tasks_][:2] == ["gender", "masterCategory"]
    assert t.validation_.ok and not t.validation_.unreadable
    assert t.history_.val_score[t.history_.best_epoch] > t.history_.val_score[0] - 1e-9
    proba = t.predict_proba_features(t.val_features_)
    y = t.val_targets_["masterCategory"]
    acc = (proba["masterCategory"].argmax(1) == y)[y >= 0].mean()
    assert acc > 0.9  # Apparel/Footwear/Accessories from real pixels


def test_save_reload_identical(trained_tagger, tmp_path, fashion_frame):
    trained_tagger.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m/config.json").read_text())
    assert cfg["backbone"]["name"] == "tf_efficientnet_lite0"
    assert [t["name"] for t in cfg["tasks"]] == [t.name for t in trained_tagger.tasks_]
    assert not list(tmp_path.glob("m/*.pkl")) and (tmp_path / "m/model.safetensors").is_file()
    reloaded = MultiTaskTagger.load(tmp_path / "m")
    paths = fashion_frame.path.tolist()[:24]
    a = trained_tagger.predict_proba(paths)
    b = reloaded.predict_proba(paths)
    for name in a["proba"]:
        np.testing.assert_array_equal(a["proba"][name], b["proba"][name])
    np.testing.assert_array_equal(a["imagenet"], b["imagenet"])


def test_tag_with_bad_files_writes_rejects(trained_tagger, tmp_path, fashion_frame):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in fashion_frame.path[:5]:
        shutil.copy(p, folder)
    (folder / "broken.jpg").write_bytes(Path(fashion_frame.path[0]).read_bytes()[:300])
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "tags.parquet"
    written, rejects, n_ok, n_bad = tag_to_file(trained_tagger, [folder], out, top_k=2)
    assert (n_ok, n_bad) == (5, 2)
    tags = read_table_any(out)
    assert len(tags) == 5 and set(tags.columns) >= {
        "id",
        "gender",
        "gender_prob",
        "gender_top",
        "imagenet_top5",
    }
    top = tags["articleType_top"].iloc[0]
    assert len(top) == 2 and top[0]["prob"] >= top[1]["prob"]
    assert len(tags["imagenet_top5"].iloc[0]) == 5
    rej = pd.read_csv(rejects)
    assert sorted(rej.id) == ["broken", "empty"] and rej.reason.str.len().min() > 10
    assert not list(tmp_path.glob(".tags.parquet*"))  # atomic: no temp file left


def test_evaluate_on_manifest_skips_unreadable(trained_tagger, fashion_frame, tmp_path):
    frame = fashion_frame.head(30).copy()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    frame.loc[0, "path"] = str(bad)
    report = evaluate_frame(trained_tagger, frame)
    assert report["n_images"] == 29 and report["rejects"][0]["path"] == str(bad)
    m = report["tasks"]["gender"]
    assert set(m) >= {"accuracy", "top3_accuracy", "macro_f1", "weighted_f1", "support"}
    # the most frequent errors are the largest off-diagonal cells of the confusion matrix
    colour = report["tasks"]["baseColour"]  # 30 real photos: a small model gets some wrong
    cm = np.array(colour["confusion"])
    np.fill_diagonal(cm, 0)
    assert cm.sum() > 0
    counts = [c["count"] for c in colour["top_confusions"]]
    assert len(counts) == min(10, int((cm > 0).sum()))  # up to 10 cells, none left out
    assert counts == sorted(np.ravel(cm), reverse=True)[: len(counts)]
    names = list(colour["per_class"])
    for c in colour["top_confusions"]:
        assert cm[names.index(c["true"]), names.index(c["predicted"])] == c["count"]
        assert c["share_of_errors"] == pytest.approx(c["count"] / cm.sum())


def test_cli_validate_train_evaluate_tag(fashion_frame, tmp_path, cache_dir):
    csv = tmp_path / "styles.csv"
    fashion_frame.drop(columns=["path"]).to_csv(csv, index=False)
    images = FASHION / "images"
    r = runner.invoke(
        app,
        ["validate", "--data", str(csv), "--images", str(images), "--tasks", "gender,articleType"],
    )
    assert r.exit_code == 0, r.output
    assert "articleType" in r.output
    model = tmp_path / "model"
    r = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(csv),
            "--images",
            str(images),
            "--tasks",
            "gender,articleType",
            "--out",
            str(model),
            "--image-size",
            "96",
            "--epochs",
            "5",
            "--head-sets",
            "2",
            "--cache-dir",
            str(cache_dir),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (model / "report.html").is_file() and (model / "metrics.json").is_file()
    assert json.loads((model / "config.json").read_text())["heads"]["head_sets"] == 2
    # the printed next step parses as `catalog build` with these very paths
    words = shlex.split(re.search(r"browse the photos: (.+)", r.output).group(1))
    build = words[words.index("catalog") :]
    expected = [str(model), str(csv), "--images", str(images), "--out", f"{model}-catalog"]
    assert build == ["catalog", "build", *expected]
    import typer

    command = typer.main.get_command(app).commands["catalog"].commands["build"]
    params = command.make_context("build", build[2:]).params
    assert Path(params["model_dir"]) == model and params["paths"] == [csv]
    r = runner.invoke(
        app,
        [
            "evaluate",
            str(model),
            "--data",
            str(csv),
            "--images",
            str(images),
            "--json",
            str(tmp_path / "m.json"),
            "--html",
            str(tmp_path / "r.html"),
        ],
    )
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics["tasks"]) == {"gender", "articleType"}
    assert 0 <= metrics["tasks"]["articleType"]["weighted_f1"] <= 1
    assert "data:image/png;base64" in (tmp_path / "r.html").read_text()
    r = runner.invoke(
        app,
        [
            "tag",
            str(model),
            str(csv),
            "--images",
            str(images),
            "--out",
            str(tmp_path / "t.jsonl"),
            "--top-k",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(lines) == len(fashion_frame)
    assert len(json.loads(lines[0])["articleType_top"]) == 3


def test_cli_errors_are_clear(tmp_path):
    r = runner.invoke(
        app, ["tag", str(tmp_path / "nomodel"), str(tmp_path), "--out", str(tmp_path / "x.parquet")]
    )
    assert r.exit_code == 2 and "not a multitag model directory" in r.output
    r = runner.invoke(app, ["tag", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "x.xlsx")])
    assert r.exit_code == 2 and ".parquet" in r.output


def test_cached_prediction_matches_live(trained_tagger, fashion_frame):
    paths = fashion_frame.path.tolist()[:16]
    live = trained_tagger.predict_proba(paths)
    cached = trained_tagger.predict_proba(paths, use_cache=True)
    for name in live["proba"]:
        np.testing.assert_allclose(cached["proba"][name], live["proba"][name], atol=0.03)
        assert (cached["proba"][name].argmax(1) == live["proba"][name].argmax(1)).mean() >= 0.9
    np.testing.assert_allclose(cached["imagenet"], live["imagenet"], atol=0.03)
