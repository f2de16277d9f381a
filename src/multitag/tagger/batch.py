"""Batch tagging: image paths in, a table of top-k tags per task (plus ImageNet tags) out."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from multitag.core.faults import kill_point
from multitag.core.io import (
    OutputNotWritten,
    atomic_path,
    check_table_suffix,
    dump_table,
    remove_stale_temps,
    write_table,
)
from multitag.core.locks import writer_lock
from multitag.data import inputs as _inputs
from multitag.data.inputs import Inputs


def as_inputs(
    inputs: Inputs | Sequence[str | os.PathLike],
    images: str | os.PathLike | None = None,
    **options,
) -> Inputs:
    """``inputs`` as resolved by :func:`multitag.data.inputs.resolve_inputs` (with
    ``images`` and its keyword ``options``), unless they already are."""
    if isinstance(inputs, Inputs):
        return inputs
    return _inputs.resolve_inputs(inputs, images, **options)


def resolve_inputs(
    inputs: Sequence[str | os.PathLike], images: str | os.PathLike | None = None, **options
) -> pd.DataFrame:
    """Rows ``id``, ``path`` (+ a manifest's label columns) of ``inputs``: the frame of
    :func:`as_inputs` (kept for older callers; new code wants the skipped inputs too)."""
    return as_inputs(inputs, images, **options).frame


def _top_k(proba: np.ndarray, classes: Sequence[str], k: int) -> list[list[dict]]:
    """Per row, the ``k`` most probable ``{label, prob}`` (vectorised: the ImageNet tags pick
    5 of 1,000 columns for every image)."""
    k = min(k, proba.shape[1])
    if k < proba.shape[1]:
        top = np.argpartition(-proba, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(top, np.argsort(-np.take_along_axis(proba, top, 1), 1), 1)
    else:
        order = np.argsort(-proba, axis=1, kind="stable")
    probs = np.take_along_axis(proba, order, 1).astype(np.float64).round(6).tolist()
    return [
        [{"label": classes[j], "prob": p} for j, p in zip(idx, ps)]
        for idx, ps in zip(order.tolist(), probs)
    ]


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """Human-readable ImageNet-1k class names (shipped with timm, no network)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i).split(",")[0] for i in range(1000))


def tag_frame(
    tagger, frame: pd.DataFrame, *, top_k: int = 3, threshold: float = 0.5, batch_size: int = 64
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tag every row of ``frame`` (``id``, ``path``). Returns ``(tags, rejects)``.

    Each task gives ``<task>`` (top-1 label; multi-label: labels >= ``threshold`` joined by
    ``|``), ``<task>_prob`` and ``<task>_top`` (top-k ``{label, prob}``). ``imagenet_top5``
    holds the backbone's own ImageNet tags where it has a classifier.
    """
    check_at_least("top_k", top_k, 1)
    check_at_least("batch_size", batch_size, 1)
    paths = frame["path"].tolist()
    out = tagger.predict_proba(paths, batch_size=batch_size)
    ok = np.array([i not in out["errors"] for i in range(len(paths))], dtype=bool)
    tags = pd.DataFrame({"id": frame["id"].to_numpy()[ok], "path": np.asarray(paths)[ok]})
    for task in tagger.tasks_:
        p = out["proba"][task.name][ok]
        if task.kind == "multiclass":
            best = p.argmax(1)
            tags[task.name] = [task.classes[j] for j in best]
            tags[f"{task.name}_prob"] = p[np.arange(len(p)), best].round(6)
        else:
            tags[task.name] = [
                "|".join(task.classes[j] for j in np.flatnonzero(row >= threshold)) for row in p
            ]
            tags[f"{task.name}_prob"] = p.max(1).round(6) if p.size else []
        tags[f"{task.name}_top"] = _top_k(p, task.classes, top_k)
    if out["imagenet"] is not None:
        tags["imagenet_top5"] = _top_k(out["imagenet"][ok], imagenet_labels(), 5)
    rejects = pd.DataFrame(
        [
            {"id": frame["id"].iloc[i], "path": paths[i], "reason": r}
            for i, r in sorted(out["errors"].items())
        ],
        columns=["id", "path", "reason"],
    )
    return tags, rejects


def check_at_least(name: str, value: int, low: int) -> None:
    """A ValueError naming ``name`` unless ``value >= low`` (a negative batch size would tag
    every row alike, a negative top-k silently drops a label)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r}: must be an integer >= {low}")


def rejects_path(out: str | os.PathLike) -> Path:
    """``tags.parquet`` -> ``tags.rejects.csv``."""
    out = Path(out)
    return out.with_name(out.stem + ".rejects.csv")


def tag_to_file(
    tagger,
    inputs: Inputs | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    top_k: int = 3,
    images: str | os.PathLike | None = None,
    batch_size: int = 64,
    **options,
) -> tuple[Path, Path | None, int, int]:
    """Tag ``inputs`` (paths resolved with ``images`` and ``options``, see :func:`as_inputs`)
    and write the table atomically to ``out``, plus a rejects CSV (``id, path, reason``) of
    the inputs skipped and the images that could not be read, if any.

    One writer per ``out`` (:func:`multitag.core.locks.writer_lock`). The rejects file is written
    (or, with no rejects, a stale one removed) before the table replaces the old one, and the
    table's rename is the commit: a write that fails (disk full) raises
    :class:`~multitag.core.io.OutputNotWritten` and leaves the previous ``out`` as it was.
    Returns ``(out, rejects_file or None, n_tagged, n_rejected)``.
    """
    check_table_suffix(out)
    with writer_lock(out, "tag", folder=False):
        for stale in (out, rejects_path(out)):
            remove_stale_temps(Path(stale).parent, Path(stale).name)
        found = as_inputs(inputs, images, **options)
        tags, rejects = tag_frame(tagger, found.frame, top_k=top_k, batch_size=batch_size)
        skipped = found.skipped_frame()[["id", "path", "reason"]]
        rejects = pd.concat([skipped, rejects], ignore_index=True) if len(skipped) else rejects
        rej = rejects_path(out) if len(rejects) else None
        try:
            with atomic_path(out) as tmp:
                dump_table(tags, tmp, Path(out).suffix.lower())
                if rej is not None:
                    write_table(rejects, rej)
                else:  # not one left by an earlier run over other inputs
                    rejects_path(out).unlink(missing_ok=True)
                kill_point("tag.publish")
        except OSError as err:
            raise OutputNotWritten(
                f"{out}: could not be written ({err.strerror or type(err).__name__}); the "
                f"previous {Path(out).name}, if any, is kept: free space or pick another --out"
            ) from None
    return Path(out), rej, len(tags), len(rejects)


def top1_frame(tagger, paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """``predict`` helper: id/path + top-1 label per task (unreadable rows dropped)."""
    frame = pd.DataFrame({"id": [Path(p).stem for p in paths], "path": [str(p) for p in paths]})
    tags, _ = tag_frame(tagger, frame, top_k=1)
    return tags[["id", "path"] + [t.name for t in tagger.tasks_]]
