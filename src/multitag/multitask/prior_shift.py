"""Prior shift: move each multi-class head's decisions between frequent and rare classes.

A head trained with cross-entropy on an imbalanced catalogue learns the class prior with the
classes: in a close call the frequent class wins, and rare classes lose recall. Weighted F1
(the score the catalogue's targets use) need not be highest at that trade-off. The shift adds
``-tau * log(prior)`` to a task's logits (logit adjustment, Menon et al. 2021; ``tau > 0``
favours rare classes, ``tau < 0`` frequent ones), one ``tau`` per task, chosen on the
validation split.

``tau`` is kept only where it helps on rows it was not chosen on: the validation rows are cut
into 2 folds, ``tau`` chosen on one is scored on the other, over 3 fold draws. If that
cross-fitted gain is not positive, the task keeps ``tau = 0``. What it gains on
fashion-products, per task: research/LOG.md, "Shifting decisions between frequent and rare
classes (prior shift)" (``research/class_bias.py``), and BENCHMARKS.md, "Study targets:
ensembles of backbones".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from multitag.data.tasks import Task

TAUS = tuple(float(t) for t in np.round(np.arange(-1.0, 1.01, 0.1), 2))


def log_prior(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Log class frequencies of the labelled entries of ``labels`` (add-one smoothing)."""
    counts = np.bincount(labels[labels >= 0], minlength=n_classes) + 1.0
    return np.log(counts / counts.sum())


def _score(y: np.ndarray, scores: np.ndarray, rows: np.ndarray) -> float:
    keep = rows & (y >= 0)
    return f1_score(y[keep], scores[keep].argmax(1), average="weighted")


def _best_tau(log_p, y, prior, rows) -> float:
    return max(TAUS, key=lambda tau: _score(y, log_p - tau * prior, rows))


def choose_tau(
    proba: np.ndarray, labels: np.ndarray, prior: np.ndarray, *, draws: int = 3, seed: int = 0
) -> tuple[float, float]:
    """``(tau, cross-fitted gain)`` for one task's validation probabilities and labels.

    ``tau`` is 0 unless the 2-fold cross-fitted gain in weighted F1 (mean over ``draws``) is
    positive; then it is the best ``tau`` on all of ``proba``'s rows.
    """
    if proba.ndim != 2 or len(proba) != len(labels) or proba.shape[1] != len(prior):
        raise ValueError(
            f"proba {proba.shape}, labels {labels.shape} and prior {prior.shape} do not match"
        )
    labelled = labels >= 0
    if labelled.sum() < 20:  # too few rows to cross-fit a choice
        return 0.0, 0.0
    log_p = np.log(np.clip(proba, 1e-12, None))
    every = np.ones(len(labels), bool)
    base = _score(labels, log_p, every)
    gains = []
    for draw in range(draws):
        fold = np.random.default_rng(seed + draw).permutation(len(labels)) % 2
        shifted = np.zeros_like(log_p)
        for f in (0, 1):
            tau = _best_tau(log_p, labels, prior, fold != f)
            shifted[fold == f] = (log_p - tau * prior)[fold == f]
        gains.append(_score(labels, shifted, every) - base)
    gain = float(np.mean(gains))
    if gain <= 0:
        return 0.0, gain
    return _best_tau(log_p, labels, prior, every), gain


def choose_shifts(
    tasks: Sequence[Task],
    proba: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    prior_labels: Mapping[str, np.ndarray],
    *,
    seed: int = 0,
) -> dict[str, dict]:
    """:func:`choose_tau` for every multi-class task: ``{task: {"tau", "cross_fitted_gain",
    "bias"}}``, ``bias`` being ``-tau * log prior`` (an array; ``None`` where ``tau`` is 0).

    ``proba`` and ``labels`` are the held-out rows the choice is made on; ``prior_labels``
    are the labels the prior is counted on (the training rows, or the held-out ones).
    """
    out = {}
    for t in tasks:
        if t.kind != "multiclass":
            continue
        prior = log_prior(prior_labels[t.name], t.n_classes)
        tau, gain = choose_tau(proba[t.name], labels[t.name], prior, seed=seed)
        out[t.name] = {
            "tau": tau,
            "cross_fitted_gain": round(gain, 5),
            "bias": -tau * prior if tau else None,
        }
    return out


class PriorShiftedHeads(nn.Module):
    """Wraps a heads module (``features -> {task: logits}``): adds a fixed bias per task."""

    def __init__(self, base: nn.Module, bias: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        super().__init__()
        self.base = base
        self.task_names = list(bias)
        for i, name in enumerate(self.task_names):  # task names may not be valid buffer names
            self.register_buffer(f"bias_{i}", torch.as_tensor(bias[name], dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        out = dict(self.base(features))
        for i, name in enumerate(self.task_names):
            out[name] = out[name].float() + getattr(self, f"bias_{i}")
        return out
