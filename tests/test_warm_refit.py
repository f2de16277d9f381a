"""Warm refit (``training.refit_epochs``) and the named schedules (``--schedule quick``): the
refit goes on from the fitted weights and scaler instead of starting again."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from typer.testing import CliRunner

from multitag.multitask.heads import AveragedHeadSets
from multitag.tagger.config import SCHEDULES, TrainConfig, from_flat, schedule
from multitag.training.head_sets import fit_head_sets

from .test_head_sets import TASKS, _config, _heads, _problem


def _distance(a, b) -> float:
    """How far apart two head sets' weights are (sum of L2 norms of the differences)."""
    return sum(float((a.state_dict()[k] - v).norm()) for k, v in b.state_dict().items())


def _fitted(seeds, trunk=32):
    """Head sets fitted together on the synthetic problem, and their data."""
    x, targets, rows, val = _problem()
    members = [_heads(x.shape[1], s, 0.1, trunk) for s in seeds]
    fit_head_sets(members, x, targets, TASKS, rows, val, _config(), seeds, progress=False)
    return members, x, targets, np.arange(len(x))


def test_a_warm_start_goes_on_from_the_weights_and_scaler():
    """One short, slow epoch moves the fitted weights little and keeps their scaler; the
    same epoch from scratch ends far from them and with a higher loss on every row."""
    seeds = [0, 1]
    fitted, x, targets, everything = _fitted(seeds)
    short = _config(epochs=1, lr=1e-3)
    warm = [copy.deepcopy(m) for m in fitted]
    warm_h = fit_head_sets(warm, x, targets, TASKS, everything, everything[:0], short, seeds,
                           run_epochs=[1, 1], warm_start=True, progress=False)  # fmt: skip
    cold = [_heads(x.shape[1], s, 0.1) for s in seeds]
    cold_h = fit_head_sets(cold, x, targets, TASKS, everything, everything[:0], short, seeds,
                           run_epochs=[1, 1], progress=False)  # fmt: skip
    for f, w, c, wh, ch in zip(fitted, warm, cold, warm_h, cold_h):
        torch.testing.assert_close(w.mean, f.mean)  # the scaler the weights were trained on
        torch.testing.assert_close(w.scale, f.scale)
        assert 0 < _distance(w, f) < 0.2 * _distance(c, f)
        assert wh.train_loss[0] < 0.8 * ch.train_loss[0]


def test_a_warm_start_refuses_sets_with_different_scalers():
    fitted, x, targets, everything = _fitted([0, 1])
    fitted[1].scale.mul_(2)
    with pytest.raises(ValueError, match="warm_start: head set 1 has another scaler than set 0"):
        fit_head_sets(fitted, x, targets, TASKS, everything, everything[:0], _config(), [0, 1],
                      run_epochs=[1, 1], warm_start=True, progress=False)  # fmt: skip


def test_warm_refit_settings_are_checked_and_scale_the_schedule():
    config = TrainConfig(lr=4e-3, refit_epochs=3, refit_lr_factor=0.25)
    warm = config.warm_refit_config()
    assert config.warm_refit and not TrainConfig().warm_refit
    assert (warm.epochs, warm.lr, warm.batch_size) == (3, 1e-3, config.batch_size)
    bad = {
        "refit_epochs": (0, "training.refit_epochs must be None (refit from scratch) or an int "
                            ">= 1 (epochs of a warm refit), not 0"),
        "refit_lr_factor": (0.0, "training.refit_lr_factor must be a number > 0 (the warm "
                                 "refit's peak lr as a share of lr), not 0.0"),
    }  # fmt: skip
    for name, (value, message) in bad.items():
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            TrainConfig(**{name: value}).validate()
    for value in (True, 2.5, "3"):
        with pytest.raises(ValueError, match=r"^training\.refit_epochs must be None"):
            TrainConfig(refit_epochs=value).validate()
    with pytest.raises(ValueError, match=r"^training\.refit_lr_factor must be a number > 0"):
        TrainConfig(refit_lr_factor="fast").validate()
    with pytest.raises(ValueError, match="the refit runs from scratch"):
        TrainConfig().warm_refit_config()


def test_schedules_are_flat_training_settings():
    assert set(SCHEDULES) == {"thorough", "quick"}
    thorough = from_flat(schedule("thorough"))["training"]
    assert thorough == TrainConfig()  # the defaults, a refit from scratch
    quick = from_flat(schedule("quick"))["training"]
    quick.validate()
    assert quick.warm_refit and quick.batch_size > thorough.batch_size
    assert quick.epochs < thorough.epochs
    schedule("quick")["epochs"] = 99  # a copy
    assert SCHEDULES["quick"]["epochs"] != 99
    with pytest.raises(ValueError, match=r"^schedule must be one of \['quick', 'thorough'\], "
                                         r"not 'fast'$"):  # fmt: skip
        schedule("fast")


@pytest.mark.parametrize("head_sets", [1, 2])
def test_a_tagger_refits_warm_from_its_fitted_heads(synthetic_tagger, synthetic_rows, head_sets):
    """``refit_epochs``: the refit trains copies of the fitted head sets on train + val for
    that many epochs; ``refit_`` says so and ``config.json`` keeps it."""
    tagger = clone(synthetic_tagger)
    tagger.set_params(heads__head_sets=head_sets, training__refit=True,
                      training__refit_epochs=2, training__refit_lr_factor=0.5)  # fmt: skip
    data = tagger.prepare_fit(synthetic_rows)
    x, y, tr, va = data.features.features, data.targets, data.train_rows, data.val_rows
    fitted = tagger.fit_head_sets(x, y, tr, va)
    before = copy.deepcopy(fitted)
    rows = tagger.refit_heads(x, y, tr, va)
    new = tagger.net_.heads
    assert new is not fitted and len(rows) == len(tr) + len(va)
    for a, b in zip(fitted.state_dict().values(), before.state_dict().values()):
        torch.testing.assert_close(a, b)  # the fitted heads are left as they were
    assert isinstance(new, AveragedHeadSets) == (head_sets == 2)
    lr = tagger.settings("training").lr * 0.5
    assert tagger.refit_ == {"epochs": [2] * head_sets, "rows_before": len(tr),
                             "rows_after": len(rows), "val_rows": len(va), "warm": True,
                             "lr": lr}  # fmt: skip
    # warm: nearer the fitted weights than a refit from scratch gets
    scratch = clone(tagger).set_params(training__refit_epochs=None)
    scratch.tasks_, scratch.net_ = tagger.tasks_, copy.deepcopy(tagger.net_)
    scratch.net_.heads, scratch.member_histories_ = fitted, tagger.member_histories_
    scratch.refit_heads(x, y, tr, va)
    assert _distance(new, fitted) < _distance(scratch.net_.heads, fitted)


def test_the_unbatched_trainer_refits_warm_too(synthetic_tagger, synthetic_rows):
    """mlp heads (trained one set at a time by ``fit_heads``) go the same warm way."""
    tagger = clone(synthetic_tagger)
    tagger.set_params(heads__head="mlp", heads__head_sets=2, training__epochs=3,
                      training__refit=True, training__refit_epochs=1)  # fmt: skip
    tagger.fit(synthetic_rows)
    assert tagger.refit_["warm"] and tagger.refit_["epochs"] == [1, 1]
    assert tagger.split_["val_ids"] == []


def test_warm_refit_round_trips_through_config_json(synthetic_tagger, synthetic_rows, tmp_path):
    from multitag import MultiTaskTagger

    tagger = clone(synthetic_tagger)
    tagger.set_params(training__epochs=3, training__refit=True, training__refit_epochs=1,
                      training__refit_lr_factor=0.5)  # fmt: skip
    tagger.fit(synthetic_rows)
    config = json.loads((tagger.save(tmp_path / "m") / "config.json").read_text())
    assert config["params"]["refit_epochs"] == 1 and config["params"]["refit_lr_factor"] == 0.5
    assert config["training"]["refit"] == tagger.refit_ and tagger.refit_["warm"]
    loaded = MultiTaskTagger.load(tmp_path / "m")
    training = loaded.settings("training")
    assert (training.refit_epochs, training.refit_lr_factor) == (1, 0.5)
    assert loaded.refit_ == tagger.refit_
    assert loaded.get_params()["training__refit_epochs"] == 1


def test_the_schedule_option_reaches_the_tagger(monkeypatch, tmp_path):
    """``train --schedule quick`` trains with the quick settings (``--epochs`` still wins);
    ``demo --schedule`` hands it to the demo; a bad name is one line naming the option."""
    from multitag import MultiTaskTagger
    from multitag.cli import demo
    from multitag.cli.main import app

    seen = {}

    def fake_fit(self, frame, **kw):
        seen["training"] = self.settings("training")
        raise ValueError("stop here")

    monkeypatch.setattr(MultiTaskTagger, "fit", fake_fit)
    csv = tmp_path / "styles.csv"
    csv.write_text("id,gender\n1,Men\n2,Women\n")
    for name in ("1", "2"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.jpg")
    args = ["train", "--data", str(csv), "--images", str(tmp_path), "--tasks", "gender",
            "--out", str(tmp_path / "m")]  # fmt: skip
    r = CliRunner().invoke(app, [*args, "--schedule", "quick"])
    assert "stop here" in r.output, r.output
    want = from_flat(schedule("quick"))["training"]
    assert seen["training"].batch_size == want.batch_size
    got = seen["training"]
    assert (got.refit_epochs, got.epochs) == (want.refit_epochs, want.epochs)
    CliRunner().invoke(app, [*args, "--schedule", "quick", "--epochs", "7"])
    assert seen["training"].epochs == 7 and seen["training"].lr == want.lr
    r = CliRunner().invoke(app, [*args, "--schedule", "fast"])
    assert r.exit_code == 2
    assert "--schedule must be one of ['quick', 'thorough'], not 'fast'" in r.output

    monkeypatch.setattr(demo, "run_demo", lambda *a, **kw: seen.update(demo=kw))
    r = CliRunner().invoke(app, ["demo", "--schedule", "thorough"])
    assert r.exit_code == 0, r.output
    assert seen["demo"]["schedule"] == "thorough"
    r = CliRunner().invoke(app, ["demo"])  # the command's default is the demo's own
    assert seen["demo"]["schedule"] == demo.DEMO_SCHEDULE == "quick"
    quick = demo.demo_tagger(schedule_name="quick").settings("training")
    assert quick == TrainConfig(**{**want.get_params(), "refit": True})
    assert demo.demo_embedder("quick") == demo.DEMO_EMBEDDERS["quick"]
    with pytest.raises(ValueError, match="^schedule must be one of"):
        demo.demo_embedder("fast")
