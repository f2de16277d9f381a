"""Read labelled image sets: a CSV/Parquet manifest or a folder-per-class tree; split them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from multitag.data.images import IMAGE_EXTENSIONS
from multitag.data.tasks import Task

FOLDER_TASK = "label"


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV or Parquet table with every column as string; blanks stay ``""`` (missing)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
        return frame.astype("string").fillna("").astype(object)
    if suffix in (".csv", ".tsv", ".txt"):
        sep = "\t" if suffix == ".tsv" else ","
        try:
            return pd.read_csv(
                path, dtype=str, keep_default_na=False, sep=sep, on_bad_lines="error"
            )
        except pd.errors.ParserError as err:
            raise ValueError(f"{path}: malformed CSV ({err}); fix or remove that row") from err
    raise ValueError(f"{path}: unsupported manifest type {suffix!r}; use .csv, .tsv or .parquet")


def read_folder_tree(root: str | os.PathLike) -> pd.DataFrame:
    """``root/<class>/<image>`` -> rows ``id`` (relative path), ``path``, ``label``."""
    root = Path(root)
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(class_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."):
                rows.append((str(f.relative_to(root)), str(f), class_dir.name))
    if not rows:
        raise ValueError(
            f"{root}: no images found in class sub-folders (expected ROOT/<class>/*.jpg)"
        )
    return pd.DataFrame(rows, columns=["id", "path", FOLDER_TASK])


def load_manifest(
    data: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    id_col: str = "id",
    path_col: str | None = None,
    ext: str = ".jpg",
) -> pd.DataFrame:
    """Rows with string columns ``id`` and ``path`` (plus the label columns).

    ``data`` is a manifest file or a folder-per-class tree. Image paths come from ``path_col``
    (relative paths are taken from ``images``, else from the manifest's folder) or are
    ``images/<id><ext>``.
    """
    data = Path(data)
    if data.is_dir():
        return read_folder_tree(data)
    frame = read_table(data)
    base = Path(images) if images is not None else data.parent
    if path_col is not None:
        if path_col not in frame.columns:
            raise ValueError(f"path column {path_col!r} not in {data.name}: {list(frame.columns)}")
        paths = [p if os.path.isabs(p) else str(base / p) for p in frame[path_col]]
        ids = frame[id_col] if id_col in frame.columns else frame[path_col]
    else:
        if id_col not in frame.columns:
            raise ValueError(
                f"id column {id_col!r} not in {data.name} (columns: {list(frame.columns)}); "
                "name it with --id-col or give a --path-col"
            )
        if images is None:
            raise ValueError("--images DIR is required when the manifest has no path column")
        ids = frame[id_col]
        paths = [str(base / f"{i}{ext}") for i in ids]
    frame = frame.copy()
    frame["id"] = [str(i) for i in ids]
    frame["path"] = paths
    return frame


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
    the photo's content digest, :func:`multitag.held_out.photo_digests`; ``""`` for none)
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
