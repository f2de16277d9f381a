"""ONNX export: ONNX Runtime on real images reproduces the PyTorch tagger."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from multitag.cli.main import app
from multitag.vision.features import iter_batches

from .conftest import requires_fashion

pytestmark = [pytest.mark.slow, requires_fashion]


def test_onnx_export_matches_pytorch(trained_tagger, fashion_frame, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model_dir = tmp_path / "m"
    trained_tagger.save(model_dir)
    out = tmp_path / "tagger.onnx"
    result = CliRunner().invoke(app, ["export", str(model_dir), "--onnx", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert [t["name"] for t in meta["tasks"]] == [t.name for t in trained_tagger.tasks_]
    size = meta["input"]["shape"][2]
    # the sidecar documents the steps before the graph: framing, then the level of detail
    prep = trained_tagger.net_.encoder.preprocessing
    assert meta["input"]["detail"]["framed"] == prep.detail.framed
    assert meta["input"]["detail"]["photo"] == prep.detail.photo
    assert meta["input"]["detail"]["floor"] == prep.detail.floor
    assert "match_detail" in meta["input"]["detail"]["apply"]

    paths = fashion_frame["path"].tolist()[:24]
    ((_, images, errs),) = list(iter_batches(paths, size, batch_size=32, workers=0))
    assert not errs
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = dict(zip(meta["outputs"], session.run(None, {"images": images.numpy()})))
    net = trained_tagger.net_.float().eval()
    with torch.inference_mode():
        probs, imagenet, features = net(images)
    np.testing.assert_allclose(got["features"], features.numpy(), rtol=1e-3, atol=1e-3)
    for task in meta["tasks"]:
        want = probs[task["name"]].numpy()
        np.testing.assert_allclose(got[task["output"]], want, atol=1e-4)
        assert len(task["classes"]) == want.shape[1]
    np.testing.assert_allclose(got["imagenet_logits"], imagenet.numpy(), rtol=1e-3, atol=1e-3)
    # a batch of one (dynamic batch axis)
    one = session.run(None, {"images": images[:1].numpy()})
    np.testing.assert_allclose(one[0], got[meta["outputs"][0]][:1], atol=1e-5)


def test_export_refuses_a_wrong_suffix(trained_tagger, tmp_path):
    from multitag.tagger.export import export_onnx

    with pytest.raises(ValueError, match="must end in .onnx"):
        export_onnx(trained_tagger, tmp_path / "model.bin")
