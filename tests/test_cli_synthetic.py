"""The main commands end to end on generated photos (fast tier, no real data): validate, train,
evaluate, tag, export, index + similar, embed train + evaluate, all through the CLI."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from multitag.cli.main import app
from tests.synthetic import synthetic_frame

runner = CliRunner()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-synthetic")
    frame = synthetic_frame(root / "images", n=96, seed=1)
    csv = root / "styles.csv"
    frame.assign(path=[f"{i}.jpg" for i in frame["id"]]).to_csv(csv, index=False)
    return root, csv, root / "images"


def _ok(args: list) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_main_commands_end_to_end(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("MULTITAG_ENGINE", "torch")  # no OpenVINO conversion for a few photos
    root, csv, images = photos
    data = ["--data", csv, "--images", images]
    assert "articleType" in _ok(["validate", *data, "--tasks", "articleType,baseColour"])
    model = tmp_path / "model"
    _ok(
        [
            "train",
            *data,
            "--tasks",
            "articleType,baseColour",
            "--out",
            model,
            "--image-size",
            "64",
            "--epochs",
            "4",
            "--cache-dir",
            tmp_path / "cache",
        ]
    )
    assert (model / "report.html").is_file()

    _ok(["evaluate", model, *data, "--json", tmp_path / "m.json", "--html", tmp_path / "r.html"])
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics["tasks"]) == {"articleType", "baseColour"}
    assert metrics["tasks"]["articleType"]["accuracy"] > 0.5  # shapes are easy to tell apart

    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not a photo")
    _ok(["tag", model, images, "--out", tmp_path / "t.csv", "--top-k", "2"])
    tags = pd.read_csv(tmp_path / "t.csv")
    assert len(tags) == 96 and set(tags["articleType"]) <= {
        "Tshirts",
        "Trousers",
        "Shoes",
        "Watches",
    }
    rejects = pd.read_csv(tmp_path / "t.rejects.csv")
    assert rejects["path"].str.endswith("broken.jpg").tolist() == [True]
    (images / "broken.jpg").unlink()

    _ok(["export", model, "--onnx", tmp_path / "tagger.onnx"])
    sidecar = json.loads((tmp_path / "tagger.json").read_text())
    assert "articleType" in json.dumps(sidecar)

    _ok(["index", "build", model, csv, "--images", images, "--out", tmp_path / "index"])
    out = _ok(["similar", tmp_path / "index", "--id", "1000", "-k", "3", "--json"])
    hits = json.loads(out[out.index("[") :])
    assert len(hits) == 3 and hits[0]["id"] != "1000"

    emb = tmp_path / "embedder"
    _ok(
        [
            "embed",
            "train",
            *data,
            "--same",
            "articleType,baseColour",
            "--out",
            emb,
            "--image-size",
            "64",
            "--epochs",
            "3",
            "--dim",
            "32",
        ]
    )
    _ok(
        [
            "embed",
            "evaluate",
            emb,
            *data,
            "--same",
            "articleType,baseColour",
            "--json",
            tmp_path / "e.json",
        ]
    )
    assert json.loads((tmp_path / "e.json").read_text())
