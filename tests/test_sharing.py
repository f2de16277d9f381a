"""Sharing strategies and loss balancing on real fashion-products images (64 px)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multitag.data.tasks import encode_all, infer_tasks
from multitag.multitask.balancing import build_balancer
from multitag.multitask.heads import MultiTaskHeads
from multitag.multitask.sharing import UpperPart, build_sharing, tagger_net
from multitag.training.finetune import (
    FineTuneConfig,
    StageData,
    predict_logits,
    task_losses,
    train_sharing,
)
from multitag.vision.extraction import extract_prefix
from tests.conftest import requires_fashion

pytestmark = [pytest.mark.slow, requires_fashion]
TASKS = ["gender", "articleType", "baseColour"]


@pytest.fixture(scope="module")
def setup(fashion_frame):
    from multitag import MultiTaskTagger
    from multitag.tagger.config import FeatureConfig, HeadConfig, LabelConfig

    frame = fashion_frame.groupby("articleType").head(8).reset_index(drop=True)  # 64 images
    tagger = MultiTaskTagger(
        TASKS,
        features=FeatureConfig(image_size=64),
        heads=HeadConfig(head="linear", trunk=0),
        labels=LabelConfig(min_count=2),
    )
    encoder = tagger._build_encoder("auto")
    tasks = infer_tasks(frame, TASKS, min_count=2)
    acts, prefix, errors = extract_prefix(encoder, frame["path"].tolist(), 5, progress=False)
    assert not errors
    return tagger, encoder, frame, tasks, encode_all(frame, tasks), StageData(acts, prefix)


def _heads(encoder, tasks, stage):
    torch.manual_seed(0)
    heads = MultiTaskHeads(encoder.out_dim, tasks, "linear", 512, 0.2, 0.0, 0)
    with torch.no_grad():
        feats, _ = encoder.eval().forward_from(5, stage.activations.float(), stage.prefix)
    heads.fit_scaler(feats.numpy())
    return heads


def test_forward_from_matches_forward(setup):
    _, encoder, frame, *_ = setup
    from multitag.vision.features import iter_batches

    images = next(iter_batches(frame["path"].tolist()[:8], 64, 8))[1]
    with torch.no_grad():
        full, _ = encoder.eval()(images)
        for block in (1, 2, 4, 5, 6):
            again, _ = encoder.forward_from(block, *encoder.forward_until(images, block))
            torch.testing.assert_close(again, full)
            # the sharing modules' upper part continues the same way
            upper = UpperPart(encoder, block)
            pooled, final = upper(encoder.forward_until(images, block)[0])
            acts, prefix = encoder.forward_until(images, block)
            torch.testing.assert_close(encoder.assemble(prefix, pooled, final), full)
    with pytest.raises(ValueError, match="freeze point"):
        encoder.block_index("blocks.7")


def test_prefix_cache_round_trip(setup, tmp_path):
    _, encoder, frame, _, _, stage = setup
    paths = frame["path"].tolist()[:16]
    enc_id = {"backbone": "lite0", "size": 64}
    a1, p1, _ = extract_prefix(
        encoder, paths, 5, cache_dir=tmp_path, encoder_id=enc_id, progress=False
    )
    assert len(list(tmp_path.glob("*/shard-*.feats.npy"))) == 1
    a2, p2, _ = extract_prefix(
        encoder, paths, 5, cache_dir=tmp_path, encoder_id=enc_id, progress=False
    )
    assert len(list(tmp_path.glob("*/shard-*.feats.npy"))) == 1  # served from the cache
    assert a1.dtype == torch.float16 and a1.shape == (16, 192, 2, 2)
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(p1, p2)
    torch.testing.assert_close(a1.float(), stage.activations[:16].float(), atol=0.02, rtol=0.02)


def _train_loss(model, stage, targets, tasks, rows):
    out = predict_logits(model, stage, rows, precision="fp32")
    t = {k: torch.as_tensor(v[rows]) for k, v in targets.items()}
    return float(sum(task_losses(tasks, out, t, 0.0).values()))


@pytest.mark.parametrize(
    "sharing,balancing",
    [("hard", "equal"), ("hard", "pcgrad"), ("soft", "uncertainty"), ("cross_stitch", "dwa")],
)
def test_strategy_trains_and_round_trips(setup, tmp_path, sharing, balancing):
    tagger, encoder, frame, tasks, targets, stage = setup
    import copy

    encoder = copy.deepcopy(encoder)
    heads = _heads(encoder, tasks, stage)
    model = build_sharing(sharing, encoder, 5, heads, [["gender"], ["articleType", "baseColour"]])
    balancer = build_balancer(balancing, [t.name for t in tasks])
    rows = np.arange(len(frame))
    before = _train_loss(model, stage, targets, tasks, rows)
    config = FineTuneConfig(
        epochs=2, batch_size=32, lr=1e-3, head_lr=3e-3, warmup=0.0, augment=False, precision="fp32"
    )
    history = train_sharing(
        model, stage, targets, tasks, rows, rows[:0], config, balancer, progress=False
    )
    after = _train_loss(model, stage, targets, tasks, rows)
    assert len(history.train_loss) == 2
    assert after < 0.9 * before, (before, after)
    if sharing == "cross_stitch":
        stitch = np.array(model.report()["stitch"])
        assert stitch.shape == (1, 2, 2) and not np.allclose(stitch[0, 0, 0], 0.9)
    if balancing == "uncertainty":
        assert balancer.weights()["gender"] != 1.0

    # save / reload through the model directory: identical outputs
    tagger.tasks_ = tasks
    tagger.net_ = tagger_net(encoder, model, tasks).eval()
    tagger.save(tmp_path / "model")
    from multitag import MultiTaskTagger
    from multitag.tagger.persistence import read_config

    config = read_config(tmp_path / "model")
    assert config.get("sharing", {"kind": "hard"})["kind"] == sharing
    loaded = MultiTaskTagger.load(tmp_path / "model")
    paths = frame["path"].tolist()[:8]
    for t in (tagger, loaded):
        t.set_params(runtime__progress=False)
    p1, p2 = tagger.predict_proba(paths)["proba"], loaded.predict_proba(paths)["proba"]
    for name in p1:
        np.testing.assert_array_equal(p1[name], p2[name])
