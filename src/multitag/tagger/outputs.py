"""Probabilities to tags: the one place that decides which labels a photo gets.

``tag``, the catalogue and the service all turn per-task probabilities into tags here, so a
photo gets the same tags whichever way it is tagged: a multi-class task gives its most
probable class; a multi-label task gives every class at or above ``threshold``. Tasks may be
:class:`~multitag.data.tasks.Task` objects or the catalogue's ``{name, kind, classes}`` dicts.
Numpy only: reading outputs needs no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

THRESHOLD = 0.5  # a multi-label class is on at or above this probability
DECIMALS = 6  # probabilities in tag tables


def _spec(task: Any) -> tuple[str, str, Sequence[str]]:
    if isinstance(task, Mapping):
        return task["name"], task["kind"], task["classes"]
    return task.name, task.kind, task.classes


def top_k(proba: np.ndarray, classes: Sequence[str], k: int, decimals: int = DECIMALS):
    """Per row of ``proba`` (n x classes), the ``k`` most probable ``{label, prob}``, most
    probable first (vectorised: ImageNet tags pick 5 of 1,000 columns for every photo)."""
    proba = np.atleast_2d(proba)
    k = min(k, proba.shape[1])
    if k < proba.shape[1]:
        top = np.argpartition(-proba, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(top, np.argsort(-np.take_along_axis(proba, top, 1), 1), 1)
    else:
        order = np.argsort(-proba, axis=1, kind="stable")
    probs = np.take_along_axis(proba, order, 1).astype(np.float64).round(decimals).tolist()
    return [
        [{"label": classes[j], "prob": p} for j, p in zip(idx, ps)]
        for idx, ps in zip(order.tolist(), probs)
    ]


def chosen(proba: np.ndarray, kind: str, threshold: float = THRESHOLD) -> list[list[int]]:
    """Per row, the class indices a photo is tagged with."""
    proba = np.atleast_2d(proba)
    if kind == "multiclass":
        return [[int(j)] for j in proba.argmax(1)] if len(proba) else []
    return [np.flatnonzero(row >= threshold).tolist() for row in proba]


def confidence(proba: np.ndarray, kind: str) -> np.ndarray:
    """Per row, the probability shown beside the tag: the chosen class's (multi-class) or the
    highest class's (multi-label)."""
    proba = np.atleast_2d(proba)
    if not proba.size:
        return np.zeros(len(proba))
    if kind == "multiclass":
        return proba[np.arange(len(proba)), proba.argmax(1)].round(DECIMALS)
    return proba.max(1).round(DECIMALS)


def tag_columns(
    proba: Mapping[str, np.ndarray],
    tasks: Sequence[Any],
    *,
    top: int | None = 3,
    threshold: float = THRESHOLD,
) -> dict[str, list]:
    """Columns of a tag table: ``<task>`` (the chosen labels joined by ``|``), ``<task>_prob``
    and, unless ``top`` is None, ``<task>_top`` (the ``top`` most probable ``{label, prob}``)."""
    columns: dict[str, list] = {}
    for task in tasks:
        name, kind, classes = _spec(task)
        p = proba[name]
        columns[name] = ["|".join(classes[j] for j in c) for c in chosen(p, kind, threshold)]
        columns[f"{name}_prob"] = list(confidence(p, kind))
        if top is not None:
            columns[f"{name}_top"] = top_k(p, classes, top)
    return columns


def tag_strings(
    proba: Mapping[str, np.ndarray], tasks: Sequence[Any], threshold: float = THRESHOLD
) -> list[list[str]]:
    """Per row, its tags as ``task:label`` strings (what the catalogue filters on)."""
    rows: list[list[str]] | None = None
    for task in tasks:
        name, kind, classes = _spec(task)
        picks = chosen(proba[name], kind, threshold)
        rows = rows if rows is not None else [[] for _ in picks]
        for row, c in zip(rows, picks):
            row.extend(f"{name}:{classes[j]}" for j in c)
    return rows or []


def split_tasks(tagprobs: np.ndarray, tasks: Sequence[Any]) -> dict[str, np.ndarray]:
    """The catalogue's concatenated per-task probabilities (rows x all classes), per task."""
    tagprobs = np.atleast_2d(tagprobs)
    out, start = {}, 0
    for task in tasks:
        name, _, classes = _spec(task)
        out[name] = tagprobs[:, start : start + len(classes)]
        start += len(classes)
    return out
