"""Read labelled image sets (through :mod:`multitag.data.inputs`) and split them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from multitag.data.inputs import FOLDER_TASK, resolve_inputs
from multitag.data.inputs import read_table as read_table  # re-exported for old callers
from multitag.data.tasks import Task


def read_folder_tree(root: str | os.PathLike) -> pd.DataFrame:
    """``root/<class>/<image>`` -> rows ``id`` (relative path), ``path``, ``label``."""
    root = Path(root)
    try:
        found = resolve_inputs([root], check_files=False).frame if root.is_dir() else None
    except ValueError:
        found = None
    if found is None or FOLDER_TASK not in found.columns:
        raise ValueError(
            f"{root}: no images found in class sub-folders (expected ROOT/<class>/*.jpg)"
        )
    return found


def load_manifest(
    data: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    id_col: str | None = None,
    path_col: str | None = None,
    ext: str = ".jpg",
) -> pd.DataFrame:
    """Rows with string columns ``id`` and ``path`` (plus the label columns).

    ``data`` is a manifest file (CSV, TSV, Parquet, JSON Lines) or a folder-per-class tree,
    read by :func:`multitag.data.inputs.resolve_inputs` (which see for the path column and
    the ids) without checking the files: rows whose image is missing stay in, for
    :func:`multitag.data.validate.validate` and the tagger's fit to report.
    """
    return resolve_inputs(
        [data], images, id_col=id_col, path_col=path_col, ext=ext, check_files=False
    ).frame


def split_indices(
    frame: pd.DataFrame,
    stratify: Task | None,
    val_fraction: float = 0.2,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reproducible stratified train/val split (row indices).

    Within each class of ``stratify`` (missing labels form their own group) rows are ordered
    by id and shuffled with ``seed``, so the split does not depend on the manifest's row
    order. A class with a single row goes to train. Rows with the same ``groups`` key (e.g.
    the photo's content digest, :func:`multitag.tagger.held_out.photo_digests`; ``""`` for none)
    then all go to the side of the group's smallest id, so no photo is on both sides.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), not {val_fraction}")
    n = len(frame)
    if stratify is None:
        strata = np.zeros(n, dtype=np.int64)
    else:
        enc = stratify.encode(frame[stratify.name].astype(str))
        strata = enc if enc.ndim == 1 else enc.argmax(1) * (enc.max(1) > 0) - (enc.max(1) <= 0)
    ids = frame["id"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for g in np.unique(strata):
        rows = np.flatnonzero(strata == g)
        rows = rows[np.argsort(ids[rows], kind="stable")]
        rows = rows[rng.permutation(len(rows))]
        n_val = int(round(val_fraction * len(rows))) if len(rows) > 1 else 0
        val.extend(rows[:n_val].tolist())
    is_val = np.zeros(n, dtype=bool)
    is_val[val] = True
    if groups is not None:
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries for {n} rows")
        is_val = _keep_groups_together(is_val, ids, groups)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _keep_groups_together(is_val: np.ndarray, ids: np.ndarray, groups) -> np.ndarray:
    """``is_val`` with every group of rows (same non-empty key) moved to the side of its row
    with the smallest id."""
    keys = pd.Series(np.asarray(groups, dtype=str))
    rows = pd.DataFrame({"key": keys, "id": ids, "val": is_val})
    rows = rows[rows["key"] != ""]
    first = rows.sort_values(["id"], kind="stable").drop_duplicates("key").set_index("key")
    out = is_val.copy()
    out[rows.index] = first["val"].reindex(rows["key"]).to_numpy()
    return out


def default_stratify(tasks: Sequence[Task]) -> Task | None:
    """The multi-class task with the most classes (rare classes get represented in val)."""
    multiclass = [t for t in tasks if t.kind == "multiclass"]
    return max(multiclass, key=lambda t: t.n_classes) if multiclass else None
