"""Head sets trained together as one batched model (training/head_sets.py), on synthetic
features: without dropout each set follows its separate training step for step; with it,
the sets are as good as separately trained ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multitag.data.tasks import Task
from multitag.multitask.heads import AveragedHeadSets, MultiTaskHeads, probabilities
from multitag.training.head_sets import StackedHeads, can_batch, fit_head_sets
from multitag.training.loop import TrainConfig, fit_heads

TASKS = [
    Task("kind", "multiclass", ["a", "b", "c", "d"]),
    Task("colour", "multiclass", ["red", "green", "blue"]),
    Task("tags", "multilabel", ["x", "y", "z"]),
]


def _problem(n: int = 900, dim: int = 24, seed: int = 0):
    """Labels that depend on a few feature columns, some of them missing (-1)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32) * rng.uniform(0.5, 3, dim).astype(np.float32)
    noisy = x + rng.normal(scale=1.0, size=x.shape).astype(np.float32)
    kind = np.digitize(noisy[:, 0], [-2, 0, 2])
    colour = (noisy[:, 1] > 0).astype(np.int64) + (noisy[:, 2] > 1)
    tags = (noisy[:, 3:6] > 0.5).astype(np.float32)
    kind[rng.random(n) < 0.1] = -1
    tags[rng.random(n) < 0.1] = -1
    targets = {"kind": kind.astype(np.int64), "colour": colour.astype(np.int64), "tags": tags}
    return x, targets, np.arange(0, 700), np.arange(700, n)


def _heads(dim: int, seed: int, dropout: float, trunk: int = 32) -> MultiTaskHeads:
    torch.manual_seed(seed)
    return MultiTaskHeads(dim, TASKS, "linear", dropout=dropout, input_dropout=dropout, trunk=trunk)


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 12, "batch_size": 64, "patience": 3, "precision": "fp32",
                          "lr": 5e-3, **kw})  # fmt: skip


@pytest.mark.parametrize("trunk", [32, 0])
def test_without_dropout_each_set_trains_exactly_as_it_would_alone(trunk):
    x, targets, rows, val = _problem()
    seeds = [3, 4, 5]
    batched = [_heads(x.shape[1], s, 0.0, trunk) for s in seeds]
    histories = fit_head_sets(batched, x, targets, TASKS, rows, val, _config(), seeds,
                              progress=False)  # fmt: skip
    for seed, member, got in zip(seeds, batched, histories):
        alone = _heads(x.shape[1], seed, 0.0, trunk)
        alone.fit_scaler(x[rows])
        want = fit_heads(alone, x, targets, TASKS, rows, val, _config(seed=seed), progress=False)
        assert got.best_epoch == want.best_epoch and got.stopped_early == want.stopped_early
        np.testing.assert_allclose(got.train_loss, want.train_loss, rtol=2e-4)
        np.testing.assert_allclose(got.val_score, want.val_score, atol=1e-6)
        for name, value in alone.state_dict().items():
            torch.testing.assert_close(member.state_dict()[name], value, atol=2e-4, rtol=1e-3)
    # the sets differ (their own seeds and row orders), so averaging them means something
    assert not torch.equal(batched[0].heads["kind"].net[1].weight,
                           batched[1].heads["kind"].net[1].weight)  # fmt: skip


def test_a_refit_runs_each_set_for_its_own_epoch_count():
    x, targets, rows, _ = _problem()
    everything = np.arange(len(x))
    seeds, epochs = [0, 1], [2, 5]
    batched = [_heads(x.shape[1], s, 0.0) for s in seeds]
    histories = fit_head_sets(batched, x, targets, TASKS, everything, everything[:0], _config(),
                              seeds, run_epochs=epochs, progress=False)  # fmt: skip
    for seed, n, member, got in zip(seeds, epochs, batched, histories):
        alone = _heads(x.shape[1], seed, 0.0)
        alone.fit_scaler(x)
        want = fit_heads(alone, x, targets, TASKS, everything, everything[:0],
                         _config(seed=seed), progress=False, run_epochs=n)  # fmt: skip
        assert len(got.train_loss) == n and got.best_epoch == n - 1 and not got.stopped_early
        np.testing.assert_allclose(got.train_loss, want.train_loss, rtol=2e-4)
        for name, value in alone.state_dict().items():
            torch.testing.assert_close(member.state_dict()[name], value, atol=2e-4, rtol=1e-3)
    with pytest.raises(ValueError, match=r"run_epochs: one count in \[1, epochs=12\]"):
        fit_head_sets(batched, x, targets, TASKS, everything, everything[:0], _config(), seeds,
                      run_epochs=[2, 13], progress=False)  # fmt: skip


def test_with_dropout_and_bf16_the_ensemble_is_as_good_as_separate_sets():
    x, targets, rows, val = _problem(n=1500)
    rows, val = np.arange(1200), np.arange(1200, 1500)
    seeds = [0, 1, 2]
    config = _config(precision="auto", epochs=15, patience=15)
    batched = [_heads(x.shape[1], s, 0.2) for s in seeds]
    fit_head_sets(batched, x, targets, TASKS, rows, val, config, seeds, progress=False)
    separate = []
    for s in seeds:
        h = _heads(x.shape[1], s, 0.2)
        h.fit_scaler(x[rows])
        fit_heads(h, x, targets, TASKS, rows, val, TrainConfig(**{**config.__dict__, "seed": s}),
                  progress=False)  # fmt: skip
        separate.append(h)

    def accuracy(members) -> dict[str, float]:
        with torch.no_grad():
            logits = AveragedHeadSets(members, TASKS).eval()(torch.as_tensor(x[val]))
        out = {}
        for task in TASKS:
            p = probabilities(task, logits[task.name]).numpy()
            y = targets[task.name][val]
            if task.kind == "multiclass":
                assert p.shape == (len(val), task.n_classes)
                np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
                keep = y >= 0
                out[task.name] = float((p[keep].argmax(1) == y[keep]).mean())
            else:
                keep = ~(y < 0).all(1)
                out[task.name] = float(((p[keep] >= 0.5) == (y[keep] > 0.5)).mean())
        return out

    got, want = accuracy(batched), accuracy(separate)
    for task in TASKS:
        chance = 1 / task.n_classes if task.kind == "multiclass" else 0.5
        assert got[task.name] > chance + 0.2, (task.name, got)
        assert got[task.name] >= want[task.name] - 0.03, (task.name, got, want)


def test_only_linear_heads_are_batched():
    mlp = MultiTaskHeads(8, TASKS, "mlp", hidden=16, trunk=0)
    assert can_batch(_heads(8, 0, 0.2)) and can_batch(_heads(8, 0, 0.2, trunk=0))
    assert not can_batch(mlp)
    with pytest.raises(ValueError, match="only linear task heads"):
        StackedHeads([mlp])
    x, targets, rows, val = _problem(n=100)
    with pytest.raises(ValueError, match="need one seed per head set: 2 sets, 1 seeds"):
        fit_head_sets([_heads(24, 0, 0), _heads(24, 1, 0)], x, targets, TASKS, rows, val,
                      _config(), [0], progress=False)  # fmt: skip


def test_a_tagger_refits_one_head_set_for_exactly_its_epochs(synthetic_tagger, synthetic_rows):
    """``refit_head_set`` (one refitted member, as research scripts and the training benchmark
    drive it) goes through the batched trainer with one set and runs exactly that many epochs."""
    from sklearn.base import clone

    tagger = clone(synthetic_tagger)
    data = tagger.prepare_fit(synthetic_rows)
    x = data.features.features
    heads = tagger.refit_head_set(x, data.targets, data.train_rows, data.val_rows, seed=7, epochs=3)
    again = tagger.refit_head_set(x, data.targets, data.train_rows, data.val_rows, seed=7, epochs=3)
    longer = tagger.refit_head_set(
        x, data.targets, data.train_rows, data.val_rows, seed=7, epochs=5
    )
    probe = torch.from_numpy(x[:16])
    for a, b, c in zip(heads.eval()(probe).values(), again.eval()(probe).values(),
                       longer.eval()(probe).values()):  # fmt: skip
        torch.testing.assert_close(a, b)
        assert not torch.allclose(a, c)


def test_batch_rows_draw_the_same_dropout_as_the_bank_into_reused_buffers():
    """BatchRows gathers a batch (and its input-dropout masks) into buffers kept across steps,
    and draws exactly the masks ``bank(features[idx])`` draws from the same RNG state."""
    from multitag.training.head_sets import BatchRows, MaskBank

    torch.manual_seed(0)
    features = torch.randn(50, 7)
    bank = MaskBank(0.3, 7, torch.float32, size=16)
    rows = BatchRows(features, 2 * 8, bank)
    idx = torch.randint(0, 50, (2, 8))
    torch.manual_seed(1)
    want = bank(features[idx])
    torch.manual_seed(1)
    got = rows.take(idx)
    torch.testing.assert_close(got, want)
    assert got.shape == (2, 8, 7) and got.data_ptr() == rows.buffer.data_ptr()
    last = rows.take(idx[:, :3])  # a smaller last batch reuses the front of the buffer
    assert last.shape == (2, 3, 7) and last.data_ptr() == rows.buffer.data_ptr()
    plain = BatchRows(features, 16, None).take(idx)
    torch.testing.assert_close(plain, features[idx])
    assert (got == 0).any() and not (plain == 0).any()


def test_the_taggers_public_batched_trainer(synthetic_tagger, synthetic_rows):
    """``MultiTaskTagger.fit_head_sets`` trains every head set on cached features (what fit
    does after extraction) and refuses heads the batched trainer cannot train."""
    from sklearn.base import clone

    tagger = clone(synthetic_tagger)
    tagger.set_params(heads__head_sets=2)
    data = tagger.prepare_fit(synthetic_rows)
    x, y = data.features.features, data.targets
    heads = tagger.fit_head_sets(x, y, data.train_rows, data.val_rows)
    assert isinstance(heads, AveragedHeadSets) and tagger.net_.heads is heads
    assert len(tagger.member_histories_) == 2
    rows = np.union1d(data.train_rows, data.val_rows)
    refit = tagger.fit_head_sets(x, y, rows, rows[:0], run_epochs=[2, 3])
    assert refit is not heads and tagger.net_.heads is heads  # a refit leaves the tagger's heads
    tagger.set_params(heads__head="mlp")
    with pytest.raises(ValueError, match="fit_head_sets trains linear heads"):
        tagger.fit_head_sets(x, y, data.train_rows, data.val_rows)
