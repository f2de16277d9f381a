"""Inference precision: --precision int8|bf16|fp32, the NNCF int8 encoder and its cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from multitag.cli.main import app
from multitag.vision import engine_cache, engines, quantize
from multitag.vision.backbones import create_model
from multitag.vision.extraction import encoder_cache_id
from multitag.vision.features import Encoder, Preprocessing
from multitag.vision.quantize import Calibration

from .conftest import requires_fashion

needs_int8 = pytest.mark.skipif(
    not (engines.openvino_available() and quantize.nncf_available()),
    reason="openvino or nncf missing",
)


@pytest.fixture()
def no_override(monkeypatch):
    """A clean MULTITAG_PRECISION, restored after the test (the CLI option sets it)."""
    monkeypatch.setenv("MULTITAG_PRECISION", "")


@pytest.fixture(scope="module")
def small_encoder() -> Encoder:
    model = create_model("tf_efficientnet_lite0")
    return Encoder(model, Preprocessing.for_model(model, 64))


def test_bad_precision_names_the_options(no_override, monkeypatch):
    with pytest.raises(ValueError, match="auto, int8, bf16, fp32, not 'int4'"):
        engines.inference_precision("int4")
    monkeypatch.setenv("MULTITAG_PRECISION", "fp16")
    with pytest.raises(ValueError, match=r"MULTITAG_PRECISION \(--precision\).*'fp16'"):
        engines.inference_precision("bf16")


def test_override_beats_the_models_precision(no_override, monkeypatch):
    cpu = torch.device("cpu")
    assert engines.inference_precision("fp32", "torch", cpu) == "fp32"
    monkeypatch.setenv("MULTITAG_PRECISION", "bf16")
    assert engines.inference_precision("fp32", "torch", cpu) == "bf16"


def test_int8_needs_the_openvino_engine(no_override):
    with pytest.raises(ValueError, match="int8' runs on the openvino engine"):
        engines.inference_precision("int8", "torch", torch.device("cpu"))


@pytest.mark.parametrize("command", ["tag", "evaluate", "train"])
def test_cli_bad_precision_is_one_line(no_override, tmp_path, command):
    args = {
        "tag": ["tag", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "t.csv")],
        "evaluate": ["evaluate", str(tmp_path), "--data", str(tmp_path), "--json", "m.json"],
        "train": ["train", "--data", str(tmp_path), "--out", str(tmp_path / "m")],
    }[command]
    result = CliRunner().invoke(app, [*args, "--precision", "int4"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "--precision 'int4'" in lines[0] and "int8" in lines[0] and "Traceback" not in lines[0]


def test_catalog_build_and_serve_take_precision(no_override):
    for args in (["catalog", "build", "--help"], ["serve", "--help"]):
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        assert "--precision" in result.output


def test_feature_cache_keys_keep_int8_apart(no_override, small_encoder, monkeypatch):
    if not engines.openvino_available():
        pytest.skip("openvino missing")
    small_encoder.calibration = Calibration(("a.jpg",), ("00" * 16,))
    bf16 = encoder_cache_id(small_encoder, "tf_efficientnet_lite0", "auto", "bf16", "openvino")
    int8 = encoder_cache_id(small_encoder, "tf_efficientnet_lite0", "auto", "int8", "openvino")
    assert bf16["precision"] == "bf16" and int8["precision"] == "int8"
    assert "calibration" not in bf16 and int8["calibration"] == small_encoder.calibration.digest
    # another calibration set: other int8 features
    small_encoder.calibration = Calibration(("b.jpg",), ("11" * 16,))
    other = encoder_cache_id(small_encoder, "tf_efficientnet_lite0", "auto", "int8", "openvino")
    assert other != int8
    # --precision int8 (the override) reaches the cache key of a model saved with auto
    monkeypatch.setenv("MULTITAG_PRECISION", "int8")
    assert (
        encoder_cache_id(small_encoder, "tf_efficientnet_lite0", "auto", "auto", "openvino")
        == other
    )


def test_int8_without_calibration_says_what_to_do(no_override, small_encoder):
    if not engines.openvino_available():
        pytest.skip("openvino missing")
    small_encoder.calibration = None
    with pytest.raises(ValueError, match="needs calibration photos.*retrain"):
        engines.runner_for(small_encoder, "openvino", "int8")


def test_calibration_sample_and_check(tmp_path):
    from tests.conftest import make_image

    paths = [make_image(tmp_path / f"{i}.png", colour=(i * 20, 0, 0)) for i in range(6)]
    cal = Calibration.sample(paths + [tmp_path / "missing.png"], n=4, seed=0)
    assert len(cal.paths) == 4 and str(tmp_path / "missing.png") not in cal.paths
    assert Calibration.sample(paths + [tmp_path / "missing.png"], n=4, seed=0) == cal  # seeded
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    cal.check()
    Path(cal.paths[1]).write_bytes(Path(cal.paths[0]).read_bytes() + b"x")
    with pytest.raises(ValueError, match="has changed since the model was trained"):
        cal.check()


_BUILD_AGAIN = """
import json, sys
from multitag.vision import quantize
from multitag.tagger.estimator import MultiTaskTagger
t = MultiTaskTagger.load(sys.argv[1])
t.set_params(runtime__progress=False)
p = t.predict_proba(json.loads(sys.argv[2]))
print("CALIBRATIONS", quantize.CALIBRATIONS)
"""


@pytest.mark.slow
@needs_int8
@requires_fashion
def test_int8_tagger_is_calibrated_once_and_tags_like_bf16(
    trained_tagger, fashion_frame, tmp_path, no_override, monkeypatch
):
    monkeypatch.setenv("MULTITAG_CACHE", str(tmp_path / "cache"))  # a cold engine cache
    model_dir = tmp_path / "model"
    trained_tagger.save(model_dir)
    saved = json.loads((model_dir / "config.json").read_text())["calibration"]
    train_ids = {str(i) for i in trained_tagger.split_["train_ids"]}
    train_paths = set(fashion_frame[fashion_frame["id"].astype(str).isin(train_ids)]["path"])
    assert saved["paths"] and {Path(p).name for p in saved["paths"]} <= {
        Path(p).name for p in train_paths
    }  # training photos only
    val_paths = trained_tagger.val_paths_[:48]

    tagger = trained_tagger.__class__.load(model_dir)
    tagger.set_params(runtime__progress=False)
    before = quantize.CALIBRATIONS
    tagger.set_params(training__precision="bf16")
    bf16 = tagger.predict_proba(val_paths)["proba"]
    tagger.set_params(training__precision="int8")
    int8 = tagger.predict_proba(val_paths)["proba"]
    assert before + 1 == quantize.CALIBRATIONS
    key = engine_cache.int8_key(
        engine_cache.content_key(tagger.net_.encoder, 96, True),
        tagger.net_.encoder.calibration.digest,
        f"{quantize.nncf_version()}+{quantize.SCHEME}",
    )
    cached = Path(os.environ["MULTITAG_CACHE"]) / "openvino" / key / "model.bin"
    assert cached.is_file()
    mtime = cached.stat().st_mtime_ns
    for task, p in bf16.items():  # loose: int8 rounding, not another model
        assert np.abs(int8[task] - p).mean() < 0.05, task
        assert (int8[task].argmax(1) == p.argmax(1)).mean() >= 0.85, task

    # a new process (what a second `multitag tag --precision int8` is) reuses the int8 model
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "MULTITAG_PRECISION": "int8"}
    done = subprocess.run(
        [sys.executable, "-c", _BUILD_AGAIN, str(model_dir), json.dumps(val_paths[:8])],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "CALIBRATIONS 0" in done.stdout, done.stdout + done.stderr
    assert cached.stat().st_mtime_ns == mtime
