"""The catalogue folder on disk: atomic save/load of parts, items, arrays and metadata.

Layout of ``CATALOG_DIR``::

    catalog.json        how it was built (model, tasks, embedding source, topics, layout, ...)
    items.parquet       one row per image: id, path, top tags per task, x, y, topic, cluster
    embeddings.npy      (n, d) L2-normalised embeddings, row-aligned with items.parquet
    tagprobs.npy        (n, T) every task's class probabilities (column names in catalog.json)
    features.npy        (n, D) encoder features (for topics over features, incremental updates)
    fit/*.npy           fitted global state: NMF components, k-means centroids
    index.faiss         inner-product index over the embeddings
    parts/part-NNNNN.*  resumable per-chunk results (rows + arrays), written atomically
    thumbs/<row>.jpg    thumbnail cache (named by row number, never by a user-supplied value)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from multitag.io import atomic_path, write_json, write_table

FORMAT_VERSION = 1
META = "catalog.json"
ITEMS = "items.parquet"
ARRAYS = ("embeddings", "tagprobs", "features")


def save_array(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` atomically (the file appears complete or not at all)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array))


def load_array(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


# ----------------------------------------------------------------------------- parts
def part_stem(directory: Path, number: int) -> Path:
    return Path(directory) / "parts" / f"part-{number:05d}"


def write_part(
    directory: Path,
    number: int,
    rows: pd.DataFrame,
    arrays: dict[str, np.ndarray],
    rejects: pd.DataFrame,
) -> None:
    """Write one chunk's results; the ``.done.json`` marker is written last (commit point)."""
    stem = part_stem(directory, number)
    write_table(rows, stem.with_suffix(".parquet"))
    write_table(rejects, stem.with_name(stem.name + ".rejects.parquet"))
    with atomic_path(stem.with_suffix(".npz")) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    write_json(
        stem.with_name(stem.name + ".done.json"),
        {
            "rows": len(rows),
            "rejects": len(rejects),
            "ids": rows["id"].tolist() + rejects["id"].tolist(),
        },
    )


def finished_parts(directory: Path) -> list[int]:
    """Numbers of the parts whose commit marker exists, in order."""
    parts = Path(directory) / "parts"
    if not parts.is_dir():
        return []
    return sorted(int(p.name[5:10]) for p in parts.glob("part-*.done.json"))


def done_ids(directory: Path) -> set[str]:
    """Ids already processed (tagged or rejected) in finished parts."""
    out: set[str] = set()
    for n in finished_parts(directory):
        marker = part_stem(directory, n).with_name(f"part-{n:05d}.done.json")
        out.update(str(i) for i in json.loads(marker.read_text())["ids"])
    return out


def read_parts(directory: Path, numbers: list[int] | None = None):
    """Concatenate finished parts: ``(rows, {array name: array}, rejects)``."""
    numbers = finished_parts(directory) if numbers is None else numbers
    rows, rejects, arrays = [], [], {}
    for n in numbers:
        stem = part_stem(directory, n)
        rows.append(pd.read_parquet(stem.with_suffix(".parquet")))
        rejects.append(pd.read_parquet(stem.with_name(stem.name + ".rejects.parquet")))
        with np.load(stem.with_suffix(".npz"), allow_pickle=False) as npz:
            for k in npz.files:
                arrays.setdefault(k, []).append(npz[k])
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    rej = (
        pd.concat(rejects, ignore_index=True)
        if rejects
        else pd.DataFrame(columns=["id", "path", "reason"])
    )
    return frame, {k: np.concatenate(v) for k, v in arrays.items()}, rej


# ---------------------------------------------------------------------------- catalog
@dataclass
class Catalog:
    """A loaded catalogue: items table, row-aligned arrays, metadata and fitted state."""

    directory: Path
    meta: dict
    items: pd.DataFrame
    embeddings: np.ndarray
    tagprobs: np.ndarray
    fit: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def tag_columns(self) -> list[str]:
        return self.meta["tag_columns"]

    @property
    def tasks(self) -> list[dict]:
        return self.meta["tasks"]

    def row_of(self, item_id: str) -> int | None:
        if not hasattr(self, "_rows"):
            self._rows = {str(v): i for i, v in enumerate(self.items["id"].astype(str))}
        return self._rows.get(str(item_id))


def is_built(directory: str | os.PathLike) -> bool:
    meta = Path(directory) / META
    return meta.is_file() and json.loads(meta.read_text()).get("complete", False)


def save_catalog(
    directory: Path,
    meta: dict,
    items: pd.DataFrame,
    arrays: dict[str, np.ndarray],
    fit: dict[str, np.ndarray],
) -> None:
    """Write the global results; ``catalog.json`` (with ``complete: true``) goes last."""
    directory = Path(directory)
    for name, array in arrays.items():
        save_array(directory / f"{name}.npy", array)
    for name, array in fit.items():
        save_array(directory / "fit" / f"{name}.npy", array)
    write_table(items, directory / ITEMS)
    write_json(directory / META, {**meta, "complete": True, "n_items": len(items)})


def load_catalog(directory: str | os.PathLike) -> Catalog:
    """Load a catalogue written by ``multitag catalog build``."""
    directory = Path(directory)
    if not is_built(directory):
        raise FileNotFoundError(
            f"{directory}: no finished catalogue here (no complete {META}); "
            "run `multitag catalog build MODEL_DIR PATH... --out` first (it resumes)"
        )
    meta = json.loads((directory / META).read_text())
    fit = {p.stem: load_array(p) for p in sorted((directory / "fit").glob("*.npy"))}
    return Catalog(
        directory=directory,
        meta=meta,
        items=pd.read_parquet(directory / ITEMS),
        embeddings=load_array(directory / "embeddings.npy"),
        tagprobs=load_array(directory / "tagprobs.npy"),
        fit=fit,
    )
