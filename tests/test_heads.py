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
    from multitag.train import one_cycle

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1e-2)
    sched = one_cycle(opt, 1e-2, 10)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] < 1e-3
