"""Glue between a model directory and an index directory: build, query by image or id."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from multitag.core.locks import writer_lock
from multitag.data.inputs import Inputs
from multitag.embedding.index import VectorIndex
from multitag.embedding.model import has_embedding, load_embedder
from multitag.tagger.batch import as_inputs


def build_index_dir(
    model_dir: str | os.PathLike,
    inputs: Inputs | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    kind: str = "auto",
    exact_max: int = 50_000,
    progress: bool = True,
    **options,
) -> tuple[VectorIndex, dict[int, str]]:
    """Embed every image in ``inputs`` (files, folders, manifests, resolved with ``images``
    and ``options`` as :func:`multitag.tagger.batch.as_inputs` does; a manifest's label columns
    become filters) and save an index to ``out`` (one writer per index folder:
    :func:`multitag.core.locks.writer_lock`).

    Returns ``(index, {row: reason})`` for unreadable images (left out of the index).
    """
    with writer_lock(out, "index", folder=True):
        return _build_index_dir(model_dir, inputs, out, images, kind, exact_max, progress, options)


def _build_index_dir(model_dir, inputs, out, images, kind, exact_max, progress, options):
    frame = as_inputs(inputs, images, **options).frame
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
    inputs: Inputs | Sequence[str | os.PathLike],
    *,
    images: str | os.PathLike | None = None,
    **options,
) -> tuple[VectorIndex, dict[int, str]]:
    """Embed ``inputs`` with the index's model and append them (no rebuild), then save;
    the folder's writer lock is held from load to save, so two adds cannot lose each other's
    items."""
    with writer_lock(index_dir, "index", folder=True):
        index = VectorIndex.load(index_dir)
        frame = as_inputs(inputs, images, **options).frame
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
