"""Head building blocks."""

from __future__ import annotations

import pytest
import torch

from multitag.multitask.heads import Dropout


def test_dropout_matches_nn_dropout_statistics():
    torch.manual_seed(0)
    x = torch.ones(400, 500)
    d = Dropout(0.2).train()
    y = d(x)
    zeroed = (y == 0).float().mean().item()
    assert abs(zeroed - 0.2) < 0.01
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.8))
    assert abs(y.mean().item() - 1.0) < 0.01  # expectation kept (inverted dropout)
    assert torch.equal(d.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)


def test_one_cycle_survives_a_one_step_warm_up():
    """10 steps in all (10 epochs of one batch) made OneCycleLR divide by zero."""
    from multitag.training.loop import one_cycle

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1e-2)
    sched = one_cycle(opt, 1e-2, 10)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] < 1e-3


def _toy_problem(n: int = 300, seed: int = 0):
    import numpy as np

    from multitag.data.tasks import Task

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype("float32")
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype("int64")
    task = Task("t", "multiclass", ["a", "b"])
    return x, {"t": y}, [task]


def test_run_epochs_trains_the_first_epochs_of_the_same_schedule_and_keeps_the_last():
    """A refit (``run_epochs``) must follow the schedule whose epochs val chose: the same
    learning rates step by step, so its first k epochs are the full run's first k."""
    import numpy as np

    from multitag.multitask.heads import MultiTaskHeads
    from multitag.training.loop import TrainConfig, fit_heads

    x, targets, tasks = _toy_problem()
    rows, val = np.arange(240), np.arange(240, 300)

    def heads():
        torch.manual_seed(0)
        h = MultiTaskHeads(16, tasks, "linear", trunk=0)
        h.fit_scaler(x[rows])
        return h

    config = TrainConfig(epochs=8, batch_size=64, patience=8)
    full = fit_heads(heads(), x, targets, tasks, rows, val, config, progress=False)
    part_heads = heads()
    part = fit_heads(
        part_heads, x, targets, tasks, rows, rows[:0], config, progress=False, run_epochs=3
    )
    assert len(part.train_loss) == 3 and part.best_epoch == 2
    np.testing.assert_allclose(part.train_loss, full.train_loss[:3], rtol=1e-5)
    # the last epoch is kept even though its training loss need not be the lowest
    again = heads()
    fit_heads(again, x, targets, tasks, rows, val, config, progress=False, run_epochs=3)
    for a, b in zip(part_heads.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"run_epochs must be in \[1, epochs=8\], not 9"):
        fit_heads(heads(), x, targets, tasks, rows, val, config, progress=False, run_epochs=9)
