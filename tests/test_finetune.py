"""Fine-tuning above a freeze point: augmentation, checkpoints/resume, tagger wiring."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from multitag.data.tasks import encode_all, infer_tasks
from multitag.multitask.heads import MultiTaskHeads
from multitag.multitask.sharing import HardSharing
from multitag.training.finetune import FineTuneConfig, StageData, augment_images, train_sharing
from multitag.vision.extraction import extract_prefix
from tests.conftest import requires_fashion

TASKS = ["gender", "articleType"]


def test_augment_keeps_white_and_colour():
    gen = torch.Generator().manual_seed(0)
    white = torch.full((4, 3, 32, 32), 255, dtype=torch.uint8)
    blank = augment_images(white, gen).flatten(1)
    # shifted/scaled borders come in white: a blank photo stays uniform (only brightness moves)
    assert bool((blank.amax(1) == blank.amin(1)).all()) and int(blank.min()) >= 225
    red = white.clone()
    red[:, 1:, 8:24, 8:24] = 0  # a red square on white
    out = augment_images(red, gen).float()
    fg = out[:, 0] > out[:, 1] + 100
    assert fg.sum() > 4 * 150  # the red object survives: no hue change, small geometry jitter
    assert out.shape == red.shape


@pytest.mark.slow
@requires_fashion
def test_resume_equals_straight_run(fashion_frame, tmp_path):
    from multitag import MultiTaskTagger
    from multitag.tagger.config import FeatureConfig

    frame = fashion_frame.groupby("articleType").head(8).reset_index(drop=True)
    encoder = MultiTaskTagger(TASKS, features=FeatureConfig(image_size=64))._build_encoder("auto")
    tasks = infer_tasks(frame, TASKS, min_count=2)
    targets = encode_all(frame, tasks)
    acts, prefix, _ = extract_prefix(encoder, frame["path"].tolist(), 5, progress=False)
    stage = StageData(acts, prefix)
    torch.manual_seed(0)
    heads = MultiTaskHeads(encoder.out_dim, tasks, "linear", 512, 0.2, 0.0, 0)
    rows, val = np.arange(48), np.arange(48, 64)
    config = FineTuneConfig(epochs=2, batch_size=16, patience=5)

    def fresh():
        return HardSharing(copy.deepcopy(encoder), 5, copy.deepcopy(heads))

    def run(model, folder, **kwargs):
        return train_sharing(
            model, stage, targets, tasks, rows, val, config,
            checkpoint_dir=tmp_path / folder, progress=False, **kwargs,
        )  # fmt: skip

    straight = fresh()
    run(straight, "a")
    h1 = run(fresh(), "b", stop_after=1)  # killed after one epoch
    assert len(h1.train_loss) == 1 and (tmp_path / "b" / "epoch-0.safetensors").is_file()
    resumed = fresh()  # a new process: only the checkpoint folder survives
    h2 = run(resumed, "b")
    assert len(h2.train_loss) == 2
    a, b = straight.state_dict(), resumed.state_dict()
    changed = False
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
        changed |= not torch.equal(a[k], fresh().state_dict()[k])
    assert changed  # training did move the weights


@pytest.mark.slow
@requires_fashion
def test_tagger_fine_tunes_and_reloads(fashion_frame, tmp_path):
    from multitag import MultiTaskTagger
    from multitag.tagger.config import (
        FeatureConfig,
        HeadConfig,
        LabelConfig,
        RuntimeConfig,
        TrainConfig,
    )

    frame = fashion_frame.groupby("articleType").head(10).reset_index(drop=True)
    tagger = MultiTaskTagger(
        TASKS,
        features=FeatureConfig(image_size=64),
        heads=HeadConfig(head_sets=2),  # the second set is fitted on the fine-tuned features
        labels=LabelConfig(min_count=2),
        training=TrainConfig(freeze="blocks.5", finetune_epochs=3, epochs=2),
        runtime=RuntimeConfig(cache_dir=tmp_path / "cache", progress=False),
    )
    tagger.fit(frame)
    assert len(tagger.finetune_history_.train_loss) == 3  # finetune_epochs, not min(epochs, 5)
    first, second = tagger.net_.heads.members
    assert not torch.allclose(first.mean, second.mean)  # scaled on frozen vs tuned features
    pretrained = tagger._build_encoder("auto").model.state_dict()
    tuned = tagger.net_.encoder.model.state_dict()
    assert not torch.equal(
        tuned["blocks.6.0.conv_pw.weight"], pretrained["blocks.6.0.conv_pw.weight"]
    )
    assert torch.equal(tuned["blocks.2.0.conv_pw.weight"], pretrained["blocks.2.0.conv_pw.weight"])
    # the validation features were refreshed from the fine-tuned encoder
    val_paths = tagger.val_paths_[:4]
    direct = tagger.predict_proba(val_paths, return_features=True)["features"]
    np.testing.assert_allclose(tagger.val_features_[:4], direct, rtol=0.05, atol=0.05)
    tagger.save(tmp_path / "model")
    loaded = MultiTaskTagger.load(tmp_path / "model")
    loaded.set_params(runtime__progress=False)
    paths = frame["path"].tolist()[:8]
    p1, p2 = tagger.predict_proba(paths)["proba"], loaded.predict_proba(paths)["proba"]
    for name in p1:
        np.testing.assert_array_equal(p1[name], p2[name])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"finetune_epochs": 0}, r"training\.finetune_epochs must be >= 1"),
        ({"finetune_lr": 0.0}, r"training\.finetune_lr must be > 0"),
    ],
)
def test_tagger_refuses_bad_fine_tuning_settings(fashion_frame, params, message):
    from multitag import MultiTaskTagger
    from multitag.tagger.config import TrainConfig

    with pytest.raises(ValueError, match=message):
        MultiTaskTagger(TASKS, training=TrainConfig(freeze="blocks.5", **params)).fit(fashion_frame)
