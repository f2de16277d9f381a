"""Masked per-task losses: a missing label contributes nothing to its task's loss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from multitag.data.tasks import Task

CLASS_WEIGHTINGS = ("none", "sqrt", "balanced")


def class_weights(task: Task, target: np.ndarray, how: str = "sqrt") -> torch.Tensor | None:
    """Per-class loss weights from training label counts.

    ``sqrt``: ``(n_max / n_c) ** 0.5`` normalised so the mean sample weight is 1 (gentle:
    helps rare classes without wrecking the frequent ones); ``balanced``: ``n / (C * n_c)``;
    ``none``: no weights. For multi-label tasks the weights are ``pos_weight`` values for BCE.
    """
    if how not in CLASS_WEIGHTINGS:
        raise ValueError(f"class weighting must be one of {CLASS_WEIGHTINGS}, not {how!r}")
    if how == "none":
        return None
    if task.kind == "multiclass":
        labelled = target[target >= 0]
        counts = np.bincount(labelled, minlength=task.n_classes).astype(np.float64)
    else:
        rows = target[(target >= 0).all(1)]
        counts = rows.sum(0).astype(np.float64)
    counts = np.maximum(counts, 1.0)
    if how == "balanced":
        w = counts.sum() / (len(counts) * counts)
    else:
        w = np.sqrt(counts.max() / counts)
    if task.kind == "multiclass":  # the average *sample* weight is 1: frequent classes keep ~1
        w = w / (w * counts).sum() * counts.sum()
    return torch.tensor(w, dtype=torch.float32)


def task_loss(
    task: Task,
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor | None:
    """Mean loss over the labelled rows of the batch; ``None`` if no row is labelled."""
    if task.kind == "multiclass":
        mask = target >= 0
        if not bool(mask.any()):
            return None
        return F.cross_entropy(
            logits[mask].float(), target[mask], weight=weight, label_smoothing=label_smoothing
        )
    mask = ~(target < 0).all(1)
    if not bool(mask.any()):
        return None
    return F.binary_cross_entropy_with_logits(logits[mask].float(), target[mask], pos_weight=weight)
