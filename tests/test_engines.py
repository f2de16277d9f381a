"""Inference engines: OpenVINO and PyTorch compute the same encoder on real images."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from multitag.vision import engines
from multitag.vision.backbones import create_model
from multitag.vision.extraction import run_encoder
from multitag.vision.features import Encoder, Preprocessing

from .conftest import requires_fashion

needs_openvino = pytest.mark.skipif(not engines.openvino_available(), reason="openvino missing")


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    model = create_model("tf_efficientnet_lite0")
    return Encoder(model, Preprocessing.for_model(model, 96))


def test_resolve_engine_names_the_options(monkeypatch):
    with pytest.raises(ValueError, match="auto, torch, openvino"):
        engines.resolve_engine("tensorrt")
    monkeypatch.setenv("MULTITAG_ENGINE", "torch")
    assert engines.resolve_engine("auto") == "torch"
    monkeypatch.setenv("MULTITAG_ENGINE", "bogus")
    with pytest.raises(ValueError, match="MULTITAG_ENGINE='bogus'"):
        engines.resolve_engine("auto")


def test_openvino_missing_gives_install_hint(monkeypatch):
    monkeypatch.setattr(engines, "openvino_available", lambda: False)
    monkeypatch.delenv("MULTITAG_ENGINE", raising=False)
    assert engines.resolve_engine("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ImportError, match=r"-m pip install .*\[fast\]"):
        engines.resolve_engine("openvino", torch.device("cpu"))


@needs_openvino
@requires_fashion
def test_openvino_matches_torch_on_real_images(encoder, fashion_frame):
    paths = fashion_frame["path"].tolist()[:48] + ["/nonexistent/x.jpg"]
    ov = run_encoder(encoder, paths, engine="openvino", progress=False, batch_size=16)
    pt = run_encoder(encoder, paths, engine="torch", precision="fp32", progress=False)
    assert set(ov.errors) == set(pt.errors) == {48}
    a, b = ov.features[:48], pt.features[:48]
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    assert rel.max() < 0.1, rel.max()  # bf16 rounding, not a different graph
    top1 = ov.imagenet_logits[:48].argmax(1) == pt.imagenet_logits[:48].argmax(1)
    assert top1.mean() >= 0.85
    # deterministic and independent of how images are batched
    again = run_encoder(encoder, paths[:48], engine="openvino", progress=False, batch_size=7)
    np.testing.assert_array_equal(again.features, a)


# The runner plumbing (reconversion, concurrency, streams) is the same for any encoder: these
# tests convert a tiny one in well under a second instead of Lite0 (several seconds each);
# test_equal_encoders_share_one_conversion_across_processes converts the real backbone.


@needs_openvino
def test_runner_is_reconverted_when_weights_change():
    encoder = _TinyEncoder()
    first = engines.runner_for(encoder, "openvino")
    assert engines.runner_for(encoder, "openvino") is first
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    before = first(x)[0]
    with torch.no_grad():
        encoder.conv.weight.mul_(0.5)
    second = engines.runner_for(encoder, "openvino")
    assert second is not first
    assert not torch.equal(second(x)[0], before)


@needs_openvino
def test_concurrent_callers_get_their_own_outputs():
    """API threads share one runner: each must get exactly its own batch's features."""
    from concurrent.futures import ThreadPoolExecutor

    runner = engines.runner_for(_TinyEncoder(logits=True), "openvino")
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (3 + i, 3, 32, 32), dtype=torch.uint8, generator=gen)
               for i in range(8)]  # fmt: skip
    expected = [runner(b)[0] for b in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda b: runner(b)[0], batches * 3))
    for i, g in enumerate(got):
        assert torch.equal(g, expected[i % len(batches)])
    # a stream interleaved with single calls
    streamed = runner.stream((i, b) for i, b in enumerate(batches))
    for i, (meta, out) in enumerate(streamed):
        assert meta == i and torch.equal(runner(batches[-1 - i])[0], expected[-1 - i])
        assert torch.equal(out[0], expected[i])


@needs_openvino
@requires_fashion
def test_warm_up_converts_before_the_first_request(trained_tagger, fashion_frame, monkeypatch):
    monkeypatch.delenv("MULTITAG_ENGINE", raising=False)
    trained_tagger.warm_up()
    runner = engines._RUNNERS[trained_tagger.net_.encoder][1]
    assert isinstance(runner, engines.OpenVINORunner)
    calls = []
    monkeypatch.setattr(engines, "OpenVINORunner", lambda *a, **k: calls.append(a))
    out = trained_tagger.predict_proba(fashion_frame["path"].tolist()[:3])
    assert not calls and not out["errors"]  # served by the warmed-up runner


@needs_openvino
def test_stream_splits_large_batches_across_requests(monkeypatch):
    """A batch bigger than ``request_batch`` is spread over several requests and put back
    together in order, with the same outputs as one call; ``None`` batches pass through."""
    runner = engines.runner_for(_TinyEncoder(logits=True), "openvino")
    monkeypatch.setattr(runner, "request_batch", 2)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
               for n in (5, 1, 4)]  # fmt: skip
    stream = [("a", batches[0]), ("gap", None), ("b", batches[1]), ("c", batches[2])]
    got = list(runner.stream(stream))
    assert [m for m, _ in got] == ["a", "gap", "b", "c"]
    assert got[1][1] is None
    for (_, out), batch in zip([got[0], got[2], got[3]], batches):
        want = runner(batch)
        assert out[0].shape[0] == len(batch)
        assert torch.equal(out[0], want[0]) and torch.equal(out[1], want[1])


@needs_openvino
@requires_fashion
def test_prefix_activations_from_openvino_match_torch(encoder, fashion_frame, tmp_path):
    """The frozen prefix that fine-tuning trains on comes from the inference engine: the same
    maps as PyTorch's (up to rounding), cached under a key of their own per engine."""
    from multitag.vision.extraction import encoder_cache_id, extract_prefix

    paths = fashion_frame["path"].tolist()[:24]
    key = encoder_cache_id(encoder, "tf_efficientnet_lite0", "package", "fp32")
    out = {
        engine: extract_prefix(
            encoder,
            paths,
            4,
            cache_dir=tmp_path,
            encoder_id=key,
            engine=engine,
            precision="fp32",
            progress=False,
        )  # fmt: skip
        for engine in ("openvino", "torch")
    }
    (ov_maps, ov_prefix, _), (pt_maps, pt_prefix, _) = out["openvino"], out["torch"]
    assert ov_maps.shape == pt_maps.shape and ov_maps.shape[1:] == (112, 6, 6)
    torch.testing.assert_close(ov_maps.float(), pt_maps.float(), atol=2e-2, rtol=1e-2)
    colour = encoder.colour_dim  # the prefix ends with the colour features
    torch.testing.assert_close(ov_prefix[:, :-colour], pt_prefix[:, :-colour], atol=1e-3, rtol=1e-3)
    # hard histogram bins: a pixel on a bin edge may land on either side after rounding
    torch.testing.assert_close(ov_prefix[:, -colour:], pt_prefix[:, -colour:], atol=1e-2, rtol=0)
    assert len(list(tmp_path.iterdir())) == 2  # one cache entry per engine


def _lite0(size: int = 96) -> Encoder:
    model = create_model("tf_efficientnet_lite0")
    return Encoder(model, Preprocessing.for_model(model, size))


@needs_openvino
def test_equal_encoders_share_one_conversion_across_processes(monkeypatch, tmp_path):
    """A reloaded model is a new object with the same weights: it must not be traced again,
    in this process (shared runner) or the next one (IR cached on disk), and its outputs
    are bit for bit those of the first conversion."""
    from multitag.vision import engine_cache

    monkeypatch.setenv("MULTITAG_CACHE", str(tmp_path))
    monkeypatch.setattr(engines, "_BY_CONTENT", type(engines._BY_CONTENT)())
    first_encoder = _lite0()
    first = engines.runner_for(first_encoder, "openvino", "fp32")
    saved = list((tmp_path / "openvino").iterdir())
    assert len(saved) == 1 and (saved[0] / "model.bin").stat().st_size > 10e6  # fp32 weights

    def no_trace(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(engines, "convert", no_trace)
    assert engines.runner_for(_lite0(), "openvino", "fp32") is first  # same process
    engines._BY_CONTENT.clear()  # as in a new process: only the disk cache is left
    again = engines.runner_for(_lite0(), "openvino", "fp32")
    assert again is not first
    x = torch.randint(0, 256, (3, 3, 96, 96), dtype=torch.uint8)
    for a, b in zip(first(x), again(x)):
        assert torch.equal(a, b)

    # what the graph depends on is in the key: weights, input size, attributes
    other = _lite0()
    key = engine_cache.content_key(other, 96, True)
    assert key == saved[0].name
    assert engine_cache.content_key(other, 128, True) != key
    assert engine_cache.content_key(other, 96, False) != key
    with torch.no_grad():
        other.model.conv_head.weight[0, 0] += 1e-3
    assert engine_cache.content_key(other, 96, True) != key
    other.grid_stages = []
    changed = engine_cache.content_key(other, 96, True)
    assert changed not in (key, None)
    other.hook = lambda x: x  # an object identity cannot be keyed: no sharing, no disk
    assert engine_cache.content_key(other, 96, True) is None


@needs_openvino
def test_engine_cache_survives_damage_and_can_be_turned_off(monkeypatch, tmp_path):
    from multitag.vision import engine_cache

    monkeypatch.setenv("MULTITAG_CACHE", str(tmp_path))
    damaged = tmp_path / "openvino" / "abc"
    damaged.mkdir(parents=True)
    (damaged / "model.xml").write_text("<net truncated")
    with pytest.warns(UserWarning, match="unreadable cached OpenVINO model"):
        assert engine_cache.load("abc") is None
    assert not damaged.exists()  # the next conversion writes a good one
    assert engine_cache.load("never-written") is None

    for i in range(engine_cache.KEEP + 3):  # only the most recently used are kept
        d = tmp_path / "openvino" / f"m{i:02d}"
        d.mkdir()
        os.utime(d, (1000 + i, 1000 + i))
    engine_cache._prune(tmp_path / "openvino")
    left = sorted(p.name for p in (tmp_path / "openvino").iterdir())
    assert left == [f"m{i:02d}" for i in range(3, engine_cache.KEEP + 3)]

    monkeypatch.setenv("MULTITAG_OPENVINO_CACHE", "0")  # off: converted, but nothing written
    assert not engine_cache.enabled()
    before = set((tmp_path / "openvino").iterdir())
    runner = engines.runner_for(_TinyEncoder(), "openvino", "fp32")
    assert runner(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))[0].shape == (2, 4)
    assert set((tmp_path / "openvino").iterdir()) == before


class _TinyEncoder(torch.nn.Module):
    """An encoder that converts in well under a second (for runner and cache plumbing
    tests); ``logits``: with a classifier output, as Lite0's ImageNet logits."""

    preprocessing = Preprocessing(image_size=32)

    def __init__(self, logits: bool = False) -> None:
        super().__init__()
        self.with_imagenet = logits
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.classifier = torch.nn.Linear(4, 5) if logits else None

    def forward(self, images: torch.Tensor):
        features = self.conv(images.float()).mean((2, 3))
        return features, None if self.classifier is None else self.classifier(features)


@needs_openvino
@requires_fashion
def test_a_new_process_reuses_the_conversion_and_matches_bit_for_bit(
    trained_tagger, fashion_frame, tmp_path, monkeypatch
):
    """What a CLI run or an API worker does: load a saved model in a fresh process. It must
    read this process's converted IR from the disk cache instead of tracing again, and tag
    exactly as this process does."""
    import subprocess
    import sys

    from multitag.bench.core import start_up_seconds

    monkeypatch.delenv("MULTITAG_ENGINE", raising=False)
    monkeypatch.setenv("MULTITAG_CACHE", str(tmp_path / "cache"))  # inherited by the child
    monkeypatch.setattr(engines, "_BY_CONTENT", type(engines._BY_CONTENT)())
    monkeypatch.setattr(engines, "_RUNNERS", type(engines._RUNNERS)())  # convert here, now
    paths = fashion_frame["path"].tolist()[:5]
    trained_tagger.save(tmp_path / "model")
    here = trained_tagger.predict_proba(paths)["proba"]
    code = f"""
import numpy as np
import multitag.vision.engines as engines
from multitag.tagger.estimator import MultiTaskTagger

def no_trace(*a, **k):
    raise SystemExit("converted again in the new process")

engines.convert = no_trace
out = MultiTaskTagger.load({str(tmp_path / "model")!r}).predict_proba({paths!r})["proba"]
np.savez({str(tmp_path / "there.npz")!r}, **out)
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    there = np.load(tmp_path / "there.npz")
    for task, p in here.items():
        np.testing.assert_array_equal(there[task], p)
    assert start_up_seconds(tmp_path / "model", conversion_cache=True) > 0  # bench helper
