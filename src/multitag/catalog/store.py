"""The catalogue folder on disk: atomic save/load of parts, items, arrays and metadata.

Layout of ``CATALOG_DIR``::

    catalog.json        how it was built (model, tasks, embedding source, topics, layout, ...)
                        and which state folder is current: the one commit point
    versions/vNNNNNN/   one published state, never changed after it is published:
      items.parquet     one row per image: id, path, top tags per task, x, y, topic, cluster
      embeddings.npy    (n, d) L2-normalised embeddings, row-aligned with items.parquet
      tagprobs.npy      (n, T) every task's class probabilities (column names in catalog.json)
      features.npy      (n, D) encoder features (for topics over features, incremental updates)
      fit/*.npy         fitted global state: NMF components, k-means centroids
      index.faiss       inner-product index over the embeddings
      rejects.parquet   unreadable inputs with reasons
    parts/part-NNNNN.*  resumable per-chunk results (rows + arrays), written atomically
    thumbs/<row>.jpg    thumbnail cache (named by row number, never by a user-supplied value)
    .multitag.lock      held by the one build writing here (:mod:`multitag.core.locks`)

A build writes a whole new state folder beside the current one, then publishes it by
replacing ``catalog.json`` in one rename, so a reader sees the old state or the new one,
never a mix, and a build killed at any point leaves the last published state loadable. The
previous state is kept for readers that opened it just before; older ones are removed.
Catalogues written before state folders (every file beside ``catalog.json``) still load.
Loading checks that items, arrays and index agree in length and refuses a torn catalogue.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from multitag.core.faults import kill_point
from multitag.core.io import atomic_path, write_json, write_table

FORMAT_VERSION = 1
META = "catalog.json"
ITEMS = "items.parquet"
INDEX = "index.faiss"
REJECTS = "rejects.parquet"
VERSIONS = "versions"
ARRAYS = ("embeddings", "tagprobs", "features")
REBUILD = "rebuild it with `multitag catalog build MODEL_DIR PATH... --out {dir}` (it resumes)"


class CatalogError(ValueError):
    """A catalogue folder that is torn or corrupt: its files disagree or cannot be read."""


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
    """A loaded catalogue: items table, row-aligned arrays, metadata and fitted state.

    ``directory`` is the catalogue folder; ``data_dir`` the published state inside it.
    """

    directory: Path
    meta: dict
    items: pd.DataFrame
    embeddings: np.ndarray
    tagprobs: np.ndarray
    fit: dict[str, np.ndarray] = field(default_factory=dict)
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.data_dir is None:
            self.data_dir = self.directory

    @property
    def tag_columns(self) -> list[str]:
        return self.meta["tag_columns"]

    @property
    def tasks(self) -> list[dict]:
        return self.meta["tasks"]

    @property
    def index_path(self) -> Path:
        return Path(self.data_dir) / INDEX

    def load_index(self):
        """The FAISS index, checked against the items (a clear error when missing or torn)."""
        import faiss

        if not self.index_path.is_file():
            raise CatalogError(
                f"{self.directory}: {INDEX} is missing; " + REBUILD.format(dir=self.directory)
            )
        try:
            index = faiss.read_index(str(self.index_path))
        except RuntimeError:
            raise CatalogError(
                f"{self.directory}: {INDEX} is unreadable (truncated or corrupt); "
                + REBUILD.format(dir=self.directory)
            ) from None
        _check_counts(
            self.directory,
            {ITEMS: len(self.items), INDEX: int(index.ntotal)},
        )
        if index.d != self.embeddings.shape[1]:
            raise CatalogError(
                f"{self.directory}: {INDEX} has {index.d}-d vectors, the embeddings "
                f"{self.embeddings.shape[1]}-d; " + REBUILD.format(dir=self.directory)
            )
        return index

    def row_of(self, item_id: str) -> int | None:
        if not hasattr(self, "_rows"):
            self._rows = {str(v): i for i, v in enumerate(self.items["id"].astype(str))}
        return self._rows.get(str(item_id))


def read_meta(directory: str | os.PathLike) -> dict | None:
    """``catalog.json`` of ``directory`` (``None`` when absent), a clear error when corrupt."""
    path = Path(directory) / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CatalogError(
            f"{path}: not valid JSON (truncated or edited); " + REBUILD.format(dir=directory)
        ) from None
    if not isinstance(meta, dict):
        raise CatalogError(f"{path}: not a catalogue description; " + REBUILD.format(dir=directory))
    return meta


def is_built(directory: str | os.PathLike) -> bool:
    meta = read_meta(directory)
    return bool(meta and meta.get("complete", False))


def data_dir_of(directory: Path, meta: dict) -> Path:
    """The published state folder named by ``meta`` (the folder itself for old catalogues)."""
    state = meta.get("state")
    if not state:
        return directory
    if Path(state).is_absolute() or ".." in Path(state).parts:
        raise CatalogError(f"{directory / META}: bad state folder {state!r}")
    return directory / state


def _check_counts(directory: Path, counts: dict[str, int]) -> None:
    if len(set(counts.values())) > 1:
        found = ", ".join(f"{name} {n}" for name, n in counts.items())
        raise CatalogError(
            f"{directory}: torn catalogue, its parts disagree on the number of items "
            f"({found}); " + REBUILD.format(dir=directory)
        )


def _next_state(directory: Path) -> str:
    versions = Path(directory) / VERSIONS
    numbers = [
        int(p.name[1:])
        for p in versions.glob("v*")
        if p.is_dir() and p.name[1:].isdigit() and len(p.name) == 7
    ]
    return f"{VERSIONS}/v{max(numbers, default=0) + 1:06d}"


def save_catalog(
    directory: Path,
    meta: dict,
    items: pd.DataFrame,
    arrays: dict[str, np.ndarray],
    fit: dict[str, np.ndarray],
    *,
    index=None,
    rejects: pd.DataFrame | None = None,
) -> dict:
    """Write a new state folder, then publish it by replacing ``catalog.json`` (the commit).

    Returns the published ``catalog.json``. Old state folders but the previous are removed.
    """
    import shutil

    directory = Path(directory)
    try:
        previous = (read_meta(directory) or {}).get("state")
    except CatalogError:
        previous = None
    state = _next_state(directory)
    final = directory / state
    staging = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)  # left by a build killed while staging
    staging.mkdir(parents=True)
    for name, array in arrays.items():
        save_array(staging / f"{name}.npy", array)
        kill_point("catalog.publish.arrays")
    for name, array in fit.items():
        save_array(staging / "fit" / f"{name}.npy", array)
    if index is not None:
        import faiss

        with atomic_path(staging / INDEX) as tmp:
            faiss.write_index(index, str(tmp))
    kill_point("catalog.publish.index")
    if rejects is not None:
        write_table(rejects, staging / REJECTS)
    write_table(items, staging / ITEMS)
    _fsync_tree(staging)
    os.replace(staging, final)
    kill_point("catalog.publish.pointer")  # state complete, not yet published
    published = {**meta, "complete": True, "n_items": len(items), "state": state}
    write_json(directory / META, published)
    kill_point("catalog.publish.cleanup")
    _remove_old_states(directory, keep={state, previous})
    return published


def _fsync_tree(folder: Path) -> None:
    """Flush a staged state to disk before the pointer names it (a power cut must not publish
    a state whose files are still in the page cache)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def _remove_old_states(directory: Path, keep: set) -> None:
    """Remove state folders (and staging left by killed builds) other than ``keep``."""
    import shutil

    versions = directory / VERSIONS
    for p in versions.glob("*") if versions.is_dir() else []:
        if f"{VERSIONS}/{p.name}" not in keep:
            shutil.rmtree(p, ignore_errors=True)


def load_catalog(directory: str | os.PathLike) -> Catalog:
    """Load the published state of a catalogue written by ``multitag catalog build``;
    a :class:`CatalogError` when its files disagree (a torn write) or cannot be read."""
    directory = Path(directory)
    meta = read_meta(directory)
    if not (meta and meta.get("complete", False)):
        raise FileNotFoundError(
            f"{directory}: no finished catalogue here (no complete {META}); "
            "run `multitag catalog build MODEL_DIR PATH... --out` first (it resumes)"
        )
    data = data_dir_of(directory, meta)
    try:
        items = pd.read_parquet(data / ITEMS)
        embeddings = load_array(data / "embeddings.npy")
        tagprobs = load_array(data / "tagprobs.npy")
        fit = {p.stem: load_array(p) for p in sorted((data / "fit").glob("*.npy"))}
    except FileNotFoundError as err:
        raise CatalogError(
            f"{directory}: {Path(err.filename or '?').name} is missing; "
            + REBUILD.format(dir=directory)
        ) from None
    except (OSError, ValueError) as err:  # truncated parquet / npy
        raise CatalogError(
            f"{directory}: a catalogue file is unreadable ({type(err).__name__}); "
            + REBUILD.format(dir=directory)
        ) from None
    _check_counts(
        directory,
        {
            f"{META} n_items": int(meta.get("n_items", len(items))),
            ITEMS: len(items),
            "embeddings.npy": len(embeddings),
            "tagprobs.npy": len(tagprobs),
        },
    )
    return Catalog(
        directory=directory,
        meta=meta,
        items=items,
        embeddings=embeddings,
        tagprobs=tagprobs,
        fit=fit,
        data_dir=data,
    )
