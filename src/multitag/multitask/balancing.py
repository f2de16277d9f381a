"""Loss balancing between tasks: how per-task losses become one update.

One interface: ``backward(losses, shared_params, extra)`` turns ``{task: loss}`` into
gradients (and returns the total for logging); ``end_epoch(mean_losses)`` lets epoch-level
schemes update; ``weights()`` reports the current effective task weights. State that must
survive a resume lives in parameters/buffers, so ``state_dict`` covers it.

* ``equal`` / ``fixed``: constant weights.
* ``uncertainty``: homoscedastic uncertainty weighting (Kendall, Gal & Cipolla 2018):
  ``sum_t exp(-s_t) L_t + s_t / 2`` with learned ``s_t = log sigma_t^2``.
* ``dwa``: dynamic weight average (Liu et al. 2019): ``w_t = T softmax(r_t / temp)`` with
  ``r_t`` the ratio of the task's last two epoch losses.
* ``pcgrad``: gradient surgery (Yu et al. 2020): on the shared parameters, each task's
  gradient loses its component along any other task gradient it conflicts with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

BALANCERS = ("equal", "fixed", "uncertainty", "dwa", "pcgrad")


class Balancer(nn.Module):
    """Fixed weights (1.0 for tasks not named): the base every scheme builds on."""

    kind = "fixed"

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.tasks = list(tasks)
        w = [float((weights or {}).get(t, 1.0)) for t in self.tasks]
        self.register_buffer("fixed", torch.tensor(w))

    def task_weights(self) -> torch.Tensor:
        return self.fixed

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        w = self.task_weights()
        return sum(w[i] * losses[t] for i, t in enumerate(self.tasks) if t in losses)

    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        shared_params: Sequence[nn.Parameter] = (),
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        total = self.combine(losses)
        if extra is not None:
            total = total + extra
        total.backward()
        return total.detach()

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Called with each task's mean training loss after every epoch."""

    def weights(self) -> dict[str, float]:
        with torch.no_grad():
            return {t: float(w) for t, w in zip(self.tasks, self.task_weights())}


class UncertaintyWeighting(Balancer):
    kind = "uncertainty"

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self.log_var = nn.Parameter(torch.zeros(len(self.tasks)))

    def task_weights(self) -> torch.Tensor:
        return torch.exp(-self.log_var)

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        terms = [
            torch.exp(-self.log_var[i]) * losses[t] + 0.5 * self.log_var[i]
            for i, t in enumerate(self.tasks)
            if t in losses
        ]
        return sum(terms)


class DynamicWeightAverage(Balancer):
    kind = "dwa"

    def __init__(self, tasks: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        self.temperature = temperature
        self.register_buffer("history", torch.zeros(2, len(self.tasks)))  # [prev, last]
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("current", torch.ones(len(self.tasks)))

    def task_weights(self) -> torch.Tensor:
        return self.current

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        last = torch.tensor([float(mean_losses.get(t, 0.0)) for t in self.tasks])
        self.history[0] = self.history[1]
        self.history[1] = last
        self.seen += 1
        if int(self.seen) >= 2:
            ratio = self.history[1] / self.history[0].clamp_min(1e-8)
            self.current = len(self.tasks) * torch.softmax(ratio / self.temperature, 0)


class PCGrad(Balancer):
    kind = "pcgrad"

    def backward(self, losses, shared_params=(), extra=None) -> torch.Tensor:
        shared = [p for p in shared_params if p.requires_grad]
        names = [t for t in self.tasks if t in losses]
        total = self.combine(losses)
        if extra is not None:
            total = total + extra
        if not shared or len(names) < 2:
            total.backward()
            return total.detach()
        w = self.task_weights()
        grads = []
        for t in names:
            g = torch.autograd.grad(
                w[self.tasks.index(t)] * losses[t], shared, retain_graph=True, allow_unused=True
            )
            grads.append(
                torch.cat(
                    [
                        (x if x is not None else torch.zeros_like(p)).flatten()
                        for x, p in zip(g, shared)
                    ]
                )
            )
        projected = []
        for i, g in enumerate(grads):
            g = g.clone()
            for j in torch.randperm(len(grads)).tolist():
                if j == i:
                    continue
                dot = torch.dot(g, grads[j])
                if dot < 0:
                    g -= dot / grads[j].pow(2).sum().clamp_min(1e-12) * grads[j]
            projected.append(g)
        merged = torch.stack(projected).sum(0)
        extra_grads: Sequence[torch.Tensor | None] = [None] * len(shared)
        if extra is not None and extra.requires_grad:
            extra_grads = torch.autograd.grad(extra, shared, retain_graph=True, allow_unused=True)
        total.backward()  # task-specific parameters (heads); shared grads are replaced below
        offset = 0
        for p, eg in zip(shared, extra_grads):
            n = p.numel()
            g = merged[offset : offset + n].view_as(p).to(p.dtype)
            p.grad = g + eg if eg is not None else g.clone()
            offset += n
        return total.detach()


def build_balancer(kind: str, tasks: Sequence[str], **kwargs) -> Balancer:
    """``equal``, ``fixed`` (``weights={task: w}``), ``uncertainty``, ``dwa`` or ``pcgrad``."""
    if kind in ("equal", "fixed"):
        return Balancer(tasks, kwargs.get("weights") if kind == "fixed" else None)
    if kind == "uncertainty":
        return UncertaintyWeighting(tasks)
    if kind == "dwa":
        return DynamicWeightAverage(tasks, kwargs.get("temperature", 2.0))
    if kind == "pcgrad":
        return PCGrad(tasks)
    raise ValueError(f"balancing must be one of {BALANCERS}, not {kind!r}")
