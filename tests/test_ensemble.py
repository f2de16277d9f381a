"""Head ensembles: members from different seeds on real images, averaged probabilities."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from multitag import MultiTaskTagger
from multitag.data.derive import keyword_tags
from multitag.multitask.heads import AveragedHeadSets
from multitag.tagger.config import (
    FeatureConfig,
    HeadConfig,
    LabelConfig,
    RuntimeConfig,
    TrainConfig,
    from_flat,
)

from .conftest import requires_fashion

pytestmark = [pytest.mark.slow, requires_fashion]
TASKS = ["gender", "articleType", "baseColour", "pattern"]


@pytest.fixture(scope="module")
def frame(fashion_frame):
    out = fashion_frame.copy()
    out["pattern"] = keyword_tags(out["productDisplayName"])  # a multi-label task
    return out


@pytest.fixture(scope="module")
def ensemble_tagger(frame, cache_dir):
    tagger = MultiTaskTagger(
        TASKS,
        features=FeatureConfig(image_size=96),
        heads=HeadConfig(head_sets=3),
        labels=LabelConfig(multilabel=["pattern"], min_count=3),
        training=TrainConfig(epochs=8),
        runtime=RuntimeConfig(cache_dir=cache_dir, progress=False),
    )
    return tagger.fit(frame)


def _member_proba(member, features: np.ndarray, tasks) -> dict[str, np.ndarray]:
    with torch.no_grad():
        logits = member.eval()(torch.as_tensor(features))
    return {
        t.name: (logits[t.name].softmax(-1) if t.kind == "multiclass" else logits[t.name].sigmoid())
        .float()
        .numpy()
        for t in tasks
    }


def test_ensemble_averages_members_from_different_seeds(ensemble_tagger):
    t = ensemble_tagger
    heads = t.net_.heads
    assert isinstance(heads, AveragedHeadSets) and len(heads.members) == 3
    curves = [tuple(h.val_score) for h in t.member_histories_]
    assert len(curves) == 3 and len(set(curves)) == 3  # three trainings, not one reused
    first = [p for p in heads.members[0].parameters()]
    second = [p for p in heads.members[1].parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(first, second))  # seeds differ
    members = [_member_proba(m, t.val_features_, t.tasks_) for m in heads.members]
    got = t.predict_proba_features(t.val_features_)
    for task in t.tasks_:
        want = np.mean([m[task.name] for m in members], axis=0)
        np.testing.assert_allclose(got[task.name], want, atol=1e-5)
        assert not np.allclose(got[task.name], members[0][task.name], atol=1e-4)
    assert t.tasks_[-1].kind == "multilabel"
    np.testing.assert_allclose(got["articleType"].sum(1), 1.0, atol=1e-5)


def test_ensemble_save_reload_and_onnx(ensemble_tagger, frame, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from multitag.tagger.export import export_onnx
    from multitag.vision.features import iter_batches

    model_dir = ensemble_tagger.save(tmp_path / "m")
    assert json.loads((model_dir / "config.json").read_text())["heads"]["head_sets"] == 3
    loaded = MultiTaskTagger.load(model_dir)
    assert loaded.get_params()["heads__head_sets"] == 3
    paths = frame["path"].tolist()[:16]
    a = ensemble_tagger.predict_proba(paths)["proba"]
    b = loaded.predict_proba(paths)["proba"]
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    onnx = export_onnx(loaded, tmp_path / "m.onnx")
    meta = json.loads(onnx.with_suffix(".json").read_text())
    ((_, images, _),) = list(iter_batches(paths, 96, batch_size=32, workers=0))
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    got = dict(zip(meta["outputs"], session.run(None, {"images": images.numpy()})))
    with torch.inference_mode():
        probs, _, _ = loaded.net_.float().eval()(images)
    for task in meta["tasks"]:
        np.testing.assert_allclose(got[task["output"]], probs[task["name"]].numpy(), atol=1e-4)


@pytest.mark.parametrize("bad", [0, 2.5, True, "3"])
def test_bad_number_of_head_sets_is_refused(fashion_frame, bad):
    with pytest.raises(ValueError, match=r"heads\.head_sets: the number of head sets"):
        MultiTaskTagger(["gender"], heads=HeadConfig(head_sets=bad)).fit(fashion_frame)


def test_same_seed_gives_the_same_model_whatever_used_the_rng_before(frame, cache_dir):
    settings = dict(multilabel=["pattern"], image_size=96, epochs=3, head_sets=2, min_count=3,
                    cache_dir=cache_dir, progress=False)  # fmt: skip
    first = MultiTaskTagger(TASKS, **from_flat(settings)).fit(frame)
    torch.rand(1000)  # other code drew from the global RNG in between
    second = MultiTaskTagger(TASKS, **from_flat(settings)).fit(frame)
    a = first.predict_proba_features(first.val_features_)
    b = second.predict_proba_features(second.val_features_)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
