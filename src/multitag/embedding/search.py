"""Glue between a model directory and an index directory: build, query by image or id."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from multitag.embedding.index import VectorIndex
from multitag.embedding.model import has_embedding, load_embedder
from multitag.locks import writer_lock
from multitag.tagging import resolve_inputs


def _with_attributes(frame: pd.DataFrame, inputs, images) -> pd.DataFrame:
    """Add manifest label columns to ``frame`` (rows from manifests) for ``--where``."""
    from multitag.tagging import is_manifest, load_input_manifest

    extra = []
    for item in inputs:
        p = Path(item)
        if is_manifest(p):
            m = load_input_manifest(p, images)
            extra.append(m.drop(columns=["path"]).astype({"id": str}))
    if not extra:
        return frame
    attrs = pd.concat(extra, ignore_index=True).drop_duplicates("id")
    out = frame.astype({"id": str}).merge(attrs, on="id", how="left")
    label_cols = [c for c in out.columns if c not in ("id", "path")]
    out[label_cols] = out[label_cols].fillna("").astype(str)
    return out


def build_index_dir(
    model_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    kind: str = "auto",
    exact_max: int = 50_000,
    progress: bool = True,
) -> tuple[VectorIndex, dict[int, str]]:
    """Embed every image in ``inputs`` (files, folders, manifests) and save an index to ``out``
    (one writer per index folder: :func:`multitag.locks.writer_lock`).

    Returns ``(index, {row: reason})`` for unreadable images (left out of the index).
    """
    with writer_lock(out, "index", folder=True):
        return _build_index_dir(model_dir, inputs, out, images, kind, exact_max, progress)


def _build_index_dir(model_dir, inputs, out, images, kind, exact_max, progress):
    frame = resolve_inputs(inputs, images)
    if frame.empty:
        raise ValueError(f"no images found in {[str(i) for i in inputs]}")
    frame = _with_attributes(frame, inputs, images)
    embedder = load_embedder(model_dir)
    embedder.progress = progress
    vectors, errors = embedder.embed(frame["path"].tolist())
    ok = [i for i in range(len(frame)) if i not in errors]
    index = VectorIndex(kind, exact_max=exact_max)
    index.meta = {
        "model_dir": str(Path(model_dir).resolve()),
        "vectors": "embedding"
        if has_embedding(model_dir)
        else "raw encoder features (L2-normalised)",
        "same": embedder.same_,
        "skipped": len(errors),
    }
    index.build(vectors[ok], frame.iloc[ok].reset_index(drop=True))
    index.save(out)
    return index, errors


def add_to_index_dir(
    index_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    *,
    images: str | os.PathLike | None = None,
) -> tuple[VectorIndex, dict[int, str]]:
    """Embed ``inputs`` with the index's model and append them (no rebuild), then save;
    the folder's writer lock is held from load to save, so two adds cannot lose each other's
    items."""
    with writer_lock(index_dir, "index", folder=True):
        index = VectorIndex.load(index_dir)
        frame = _with_attributes(resolve_inputs(inputs, images), inputs, images)
        vectors, errors = load_embedder(index.meta["model_dir"]).embed(frame["path"].tolist())
        ok = [i for i in range(len(frame)) if i not in errors]
        index.add(vectors[ok], frame.iloc[ok].reset_index(drop=True))
        index.save(index_dir)
    return index, errors


def similar(
    index_dir: str | os.PathLike | VectorIndex,
    image: str | os.PathLike | None = None,
    *,
    item_id: str | None = None,
    k: int = 10,
    where: Mapping[str, str] | Sequence[str] | None = None,
) -> pd.DataFrame:
    """The ``k`` items most like ``image`` (embedded with the index's model) or an indexed
    ``item_id`` (itself left out), optionally only those matching ``where``."""
    index = index_dir if isinstance(index_dir, VectorIndex) else VectorIndex.load(index_dir)
    if (image is None) == (item_id is None):
        raise ValueError("give either an image path or an item id (--id), not both")
    exclude = None
    if item_id is not None:
        row = index.row_of(item_id)
        query = index.vectors([row])
        exclude = [row]
    else:
        if not Path(image).is_file():
            raise FileNotFoundError(f"image {image} does not exist")
        embedder = load_embedder(index.meta["model_dir"])
        embedder.progress = False
        query, errors = embedder.embed([image])
        if errors:
            raise ValueError(f"{image}: cannot read the image ({errors[0]})")
    scores, rows = index.search(query, k, where=where, exclude_rows=exclude)
    return index.results(scores[0], rows[0])
