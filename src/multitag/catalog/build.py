"""``build_catalog``: one backbone pass per image (tags + ImageNet tags + features), in
resumable chunks, then the global steps (embedding, topics, 2-D map, clusters, index).

A finished catalogue grows incrementally: only new ids are tagged, and they are placed with
the fitted state (NMF transform, kNN-averaged map position, nearest k-means centroid).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from multitag.catalog import layout as layout_mod
from multitag.catalog import sampled, store
from multitag.catalog import topics as topics_mod
from multitag.catalog import unlabelled as unl
from multitag.core.faults import kill_point
from multitag.core.io import remove_stale_temps
from multitag.core.locks import writer_lock
from multitag.core.progress import bar
from multitag.data.inputs import Inputs
from multitag.embedding.kmeans import KMeans, nearest_centroid
from multitag.tagger import outputs
from multitag.tagger.config import set_runtime
from multitag.vision.extraction import remote_encoder

log = logging.getLogger(__name__)
ChunkHook = Callable[[int, int, int], None]
"""``on_chunk(part_number, n_done, n_total)``, called after each chunk is committed."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def load_embedding(model_dir: str | os.PathLike) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """Features -> embedding: the model dir's trained embedder if there is one, else the
    L2-normalised encoder features. Returns ``(function, source)``."""
    if (Path(model_dir) / "embedding.json").is_file():
        try:
            from multitag.embedding import load_embedder  # type: ignore[attr-defined]
        except ImportError:
            load_embedder = None
        if load_embedder is not None:
            embedder = load_embedder(model_dir)
            return (lambda f: l2_normalise(embedder.transform_features(f))), "embedder"
    return l2_normalise, "features"


def build_index(embeddings: np.ndarray):
    """The FAISS index ``multitag index build`` makes (:class:`VectorIndex`, ``auto``: exact
    up to its ``exact_max`` items, IVF beyond, compressed IVF-PQ from its ``compress_min``,
    whose candidates the server re-ranks with the catalogue's embeddings) ->
    ``(faiss index, description)``."""
    from multitag.embedding.index import VectorIndex

    vi = VectorIndex("auto").build(np.ascontiguousarray(embeddings, np.float32))
    return vi.index_, {k: v for k, v in vi.meta.items() if k != "build_seconds"}


def tag_columns(tasks) -> list[str]:
    return [f"{t.name}:{c}" for t in tasks for c in t.classes]


def _tag_chunk(tagger, frame: pd.DataFrame, batch_size: int, labels: Sequence[str]):
    """Tag one chunk: rows (top tags per task), arrays (tag probabilities, features), rejects."""
    paths = frame["path"].tolist()
    out = tagger.predict_proba(paths, batch_size=batch_size, return_features=True, use_cache=True)
    ok = np.array([i not in out["errors"] for i in range(len(paths))], dtype=bool)
    rows = pd.DataFrame({"id": frame["id"].to_numpy()[ok], "path": np.asarray(paths)[ok]})
    proba = {name: p[ok] for name, p in out["proba"].items()}
    columns = outputs.tag_columns(proba, tagger.tasks_, top=None)
    for task in tagger.tasks_:
        rows[f"{task.name}_prob"] = columns[f"{task.name}_prob"]
        rows[task.name] = columns[task.name]
    rows["tags"] = outputs.tag_strings(proba, tagger.tasks_) or [[] for _ in range(len(rows))]
    imagenet = out["imagenet"]
    rows["imagenet"] = (
        [[d["label"] for d in top] for top in outputs.top_k(imagenet[ok], labels, 5)]
        if imagenet is not None
        else [[] for _ in range(len(rows))]
    )
    tagprobs = np.concatenate([out["proba"][t.name][ok] for t in tagger.tasks_], axis=1)
    arrays = {"tagprobs": tagprobs.astype(np.float32), "features": out["features"][ok]}
    rejects = pd.DataFrame(
        [
            {"id": str(frame["id"].iloc[i]), "path": paths[i], "reason": r}
            for i, r in sorted(out["errors"].items())
        ],
        columns=["id", "path", "reason"],
    )
    return rows, arrays, rejects


def _inputs(inputs, images, options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows to catalogue (one per id: later duplicates are skipped, and reported) and the
    skipped inputs (``id, path, reason``)."""
    from multitag.tagger.batch import as_inputs

    found = as_inputs(inputs, images, **options).unique_ids()
    frame = found.frame[["id", "path"]]
    paths = [str(Path(p).absolute()) for p in frame["path"]]  # serve from any working dir
    skipped = found.skipped_frame()[["id", "path", "reason"]]
    return frame.assign(id=frame["id"].astype(str), path=paths), skipped


def _one_writer(build):
    """Run ``build`` holding the writer lock of its ``out`` folder, after removing the temp
    files a killed build left there (only a lock holder may: others' are not stale)."""

    @functools.wraps(build)
    def locked(model_dir, inputs, out, **kwargs):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with writer_lock(out, "catalogue build", folder=True):
            for folder in (out, out / "parts"):
                remove_stale_temps(folder)
            return build(model_dir, inputs, out, **kwargs)

    return locked


@_one_writer
def build_catalog(
    model_dir: str | os.PathLike,
    inputs: Inputs | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    n_topics: int = 12,
    topics_on: str = "auto",
    layout: str = "umap",
    maps: Sequence[str] | None = None,
    embedder: str | os.PathLike | None = None,
    n_clusters: int = 20,
    chunk_size: int = 2048,
    batch_size: int = 64,
    refit_overview: bool = False,
    seed: int = 0,
    umap_epochs: int | None = None,
    fit_sample: int | None = sampled.FIT_SAMPLE,
    progress: bool = True,
    on_chunk: ChunkHook | None = None,
    **options,
) -> dict:
    """Build (or resume, or extend) the catalogue in ``out``; returns its ``catalog.json``.

    ``model_dir`` is a trained model directory, or a backbone name for a catalogue without
    one (:mod:`multitag.catalog.unlabelled`: ImageNet tags, ``embedder``'s embedding if
    given); a model directory given for such a catalogue adds its tags. ``topics_on``:
    ``auto``, ``tags``, ``features`` or ``imagenet``; ``maps``: what the 2-D maps are drawn
    from (``embedding``, ``topics``), the first one being the items' ``x``, ``y``.

    Images go through the model in chunks of ``chunk_size``; each finished chunk is committed
    to ``out/parts`` so a killed build resumes where it stopped. If ``out`` already holds a
    finished catalogue, only new ids are tagged and placed with the fitted state, unless
    ``refit_overview`` asks to fit topics, map and clusters again over every item (not to be
    confused with a tagger's ``training.refit``). ``inputs`` are resolved
    with ``images`` and ``options`` (:func:`multitag.tagger.batch.as_inputs`); the inputs skipped
    there, and every id after its first, are listed in ``rejects.parquet`` with the images
    that could not be read. Topics and map are fitted on a random ``fit_sample`` rows when
    there are more (:mod:`multitag.catalog.sampled`; None: on every row).
    """
    from multitag.tagger.batch import check_at_least, imagenet_labels

    for name, value in (
        ("n_topics", n_topics),
        ("n_clusters", n_clusters),
        ("chunk_size", chunk_size),
        ("batch_size", batch_size),
    ):
        check_at_least(name, value, 1)
    unl.check_options(topics_on, tuple(maps or ("embedding",)))
    if layout not in layout_mod.LAYOUTS:
        raise ValueError(f"layout={layout!r}: use one of {', '.join(layout_mod.LAYOUTS)}")
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame, skipped = _inputs(inputs, images, options)
    built = store.is_built(out)
    prior = store.read_meta(out) if built else None
    source = unl.resolve_source(model_dir, prior, embedder)
    model_dir = source.model_dir
    if maps is None:
        maps = ("embedding", "topics") if source.backbone is not None else ("embedding",)
    maps = tuple(maps)
    if built:
        try:
            old = store.load_catalog(out)
        except store.CatalogError as err:  # torn by a pre-state-folder build: redo it
            log.warning("%s\nbuilding it again from its committed parts", err)
            built = False
        else:
            if (
                source.backbone is None
                and Path(old.meta["model_dir"]) != model_dir
                and not refit_overview
            ):
                raise ValueError(
                    f"{out} was built with {old.meta['model_dir']}, not {model_dir}: use "
                    "that model, or a new --out folder"
                )
        if not refit_overview:  # keep how it was built
            n_topics, topics_on = prior["topics"]["k"], prior["topics"]["on"]
            layout, n_clusters = prior["layout"]["method"], prior["clusters"]["k"]
            maps = tuple(prior["layout"].get("maps", ["embedding"]))
    topics_on = unl.resolve_topics_on(topics_on, source)
    done = store.done_ids(out)
    pending = frame[~frame["id"].isin(done)].reset_index(drop=True)
    tagger = source.chunk_tagger
    tag_chunk = _tag_chunk if source.backbone is None else unl.tag_chunk
    if remote_encoder() is not None and len(pending) and hasattr(tagger, "cache_features"):
        # --engine ray: one encoder pass over every pending photo (one pool of actors), the
        # features into the cache; the chunks below then run the heads on cached features
        set_runtime(tagger, progress=progress)
        options = {"batch_size": batch_size} if source.backbone is not None else {}
        tagger.cache_features(pending["path"].tolist(), **options)
    set_runtime(tagger, progress=False)  # one bar over all chunks below, not one per chunk
    labels = imagenet_labels()
    numbers = store.finished_parts(out)
    next_part = numbers[-1] + 1 if numbers else 0
    n_chunks = -(-len(pending) // chunk_size)
    tag_seconds = 0.0
    with bar("catalogue: tagging", len(pending), enabled=progress and len(pending) > 0) as pbar:
        for c in range(n_chunks):
            chunk = pending.iloc[c * chunk_size : (c + 1) * chunk_size]
            t0 = time.perf_counter()
            rows, arrays, rejects = tag_chunk(tagger, chunk, batch_size, labels)
            tag_seconds += time.perf_counter() - t0
            store.write_part(out, next_part, rows, arrays, rejects)
            next_part += 1
            kill_point("catalog.part")
            pbar.advance(len(chunk))
            if on_chunk is not None:
                on_chunk(next_part - 1, min((c + 1) * chunk_size, len(pending)), len(pending))

    rows, arrays, rejects = store.read_parts(out)
    if len(skipped):
        rejects = pd.concat([rejects, skipped], ignore_index=True)
    if rows.empty:
        first = rejects.iloc[0] if len(rejects) else None
        raise ValueError(
            f"no readable images among {len(frame)} input(s)"
            + (f"; e.g. {first['path']}: {first['reason']}" if first is not None else "")
        )
    features, imagenet = arrays["features"], arrays.get("imagenet")
    if source.backbone is None:
        embed, embedding_source = load_embedding(model_dir)
        tagprobs = arrays["tagprobs"]
    else:
        embed = source.backbone.embed
        embedding_source = "embedder" if source.backbone.embedder else "features"
        rows, tagprobs = unl.add_task_tags(rows, features, source, old if built else None)
    embeddings = embed(features)
    columns = tag_columns(source.tasks)
    topic_x = (topics_on, tagprobs, features, imagenet)
    if built and not refit_overview:
        items, fit, topic_list = _extend(old, rows, embeddings, topic_x, maps)
        if source.backbone is not None:  # tags follow an attached tagger
            items = unl.refresh_rows(items, rows)
    else:
        items, fit, topic_list = _fit_all(
            rows,
            embeddings,
            topic_x,
            columns,
            n_topics,
            layout,
            maps,
            n_clusters,
            seed,
            umap_epochs,
            fit_sample,
            progress,
        )
    order = items["id"].map({v: i for i, v in enumerate(rows["id"])}).to_numpy()
    items = unl.extra_maps(
        items,
        maps,
        lambda name: unl.map_vectors(name, embeddings[order], fit["topic_weights"]),
        # every map after the first is fitted on the sample too, and applied in chunks
        lambda vectors: sampled.fit_layout(
            vectors, layout, seed, umap_epochs, fit_sample, progress
        ),
        old if built and not refit_overview else None,
    )
    index, index_meta = build_index(embeddings[order])
    meta = {
        "format_version": store.FORMAT_VERSION,
        "kind": "multitag-catalog",
        "model_dir": str(model_dir) if model_dir is not None else None,
        "source": source.backbone.source() if source.backbone is not None else None,
        "tasks": [{"name": t.name, "kind": t.kind, "classes": t.classes} for t in source.tasks],
        "tag_columns": columns,
        "embedding": {"source": embedding_source, "dim": int(embeddings.shape[1])},
        "topics": {"k": n_topics, "on": topics_on, "method": "nmf", "topics": topic_list},
        "fit_sample": fit_sample,
        "layout": {
            "method": layout,
            "seed": seed,
            "n_epochs": umap_epochs,
            "maps": list(maps),
            "new_points": "knn-average of the 10 nearest existing items",
        },
        "clusters": {
            "k": int(len(fit["centroids"])),
            "method": "kmeans",
            "new_points": "nearest centroid",
        },
        "index": index_meta,
        "chunk_size": chunk_size,
        "n_rejects": len(rejects),
        "created": old.meta.get("created") if built else time.strftime("%Y-%m-%dT%H:%M:%S"),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "last_build": {
            "new_items": len(pending),
            "seconds": round(time.perf_counter() - started, 2),
            "tag_seconds": round(tag_seconds, 2),
            "refit_overview": bool(refit_overview or not built),
        },
    }
    saved = {
        "embeddings": embeddings[order],
        "tagprobs": tagprobs[order],
        "features": features[order],
    }
    if imagenet is not None:
        saved["imagenet"] = imagenet[order]
    return store.save_catalog(
        out,
        meta,
        items,
        saved,
        fit,
        index=index,
        rejects=rejects,
    )


def _fit_all(
    rows,
    embeddings,
    topic_x,
    columns,
    n_topics,
    layout,
    maps,
    n_clusters,
    seed,
    umap_epochs,
    fit_sample=None,
    progress=False,
):
    """Fit topics, the first map, and clusters (``topic_x``: the topic input's ``(on,
    tagprobs, features, imagenet)``); topics and map on a ``fit_sample`` of the rows when
    there are more, applied to every row in chunks (:mod:`multitag.catalog.sampled`)."""
    on, tagprobs, features, imagenet = topic_x
    x, offset = unl.topic_input(on, tagprobs, features, imagenet)
    sample = sampled.fit_rows(x.shape[0], fit_sample, seed)
    if sample is None:  # every row
        w, h = topics_mod.fit_topics(x, n_topics, seed)
    else:  # fitted on the sample, applied to every row in chunks
        _, h = topics_mod.fit_topics(x[sample], n_topics, seed)
        w = sampled.transform_topics(x, h, progress)
    topic_list, profiles = unl.name_topics(on, w, h, tagprobs, columns, imagenet)
    xy = sampled.fit_layout(
        unl.map_vectors(maps[0], embeddings, w),
        layout,
        seed,
        umap_epochs,
        fit_sample,
        progress,
        sample=sample,
    )
    km = KMeans(max(1, min(n_clusters, len(embeddings))), random_state=seed).fit(embeddings)
    labels, centroids = km.labels_, km.cluster_centers_
    items = _place(rows, w, xy, labels)
    for t in topic_list:
        t["size"] = int((items["topic"] == t["id"]).sum())
    fit = {"nmf_components": h, "centroids": centroids, "topic_weights": w}
    if offset is not None:
        fit["nmf_offset"] = offset
    if profiles is not None:
        fit["nmf_profiles"] = profiles
    return items, fit, topic_list


def _place(rows: pd.DataFrame, w: np.ndarray, xy: np.ndarray, clusters: np.ndarray):
    items = rows.copy()
    total = np.maximum(w.sum(1), 1e-12)
    items["x"], items["y"] = xy[:, 0].round(5), xy[:, 1].round(5)
    # typed even when empty: an incremental rerun with nothing new must not turn int32 into
    # int64 when its empty rows are concatenated to the old ones
    items["topic"] = w.argmax(1).astype(np.int32) if w.size else np.zeros(len(items), np.int32)
    items["topic_weight"] = (
        (w.max(1) / total).round(4) if w.size else np.zeros(len(items), total.dtype)
    )
    items["cluster"] = clusters.astype(np.int32)
    return items


def _extend(old: store.Catalog, rows, embeddings, topic_x, maps):
    """Place rows not yet in ``old`` with its fitted state; old rows keep their values."""
    on, tagprobs, features, imagenet = topic_x
    known = set(old.items["id"].astype(str))
    new = ~rows["id"].astype(str).isin(known).to_numpy()
    fit = dict(old.fit)
    x, _ = unl.topic_input(
        old.meta["topics"]["on"],
        tagprobs[new],
        features[new],
        None if imagenet is None else imagenet[new],
        fit.get("nmf_offset"),
    )
    w = topics_mod.transform_topics(x, fit["nmf_components"])
    old_w = fit.get("topic_weights")
    if old_w is None:  # a catalogue from before topic weights were kept
        x_old, _ = unl.topic_input(
            on, tagprobs[~new], features[~new],
            None if imagenet is None else imagenet[~new], fit.get("nmf_offset"),
        )  # fmt: skip
        old_w = topics_mod.transform_topics(x_old, fit["nmf_components"])
    old_vectors = unl.map_vectors(maps[0], old.embeddings, old_w)
    xy = layout_mod.place_new(
        unl.map_vectors(maps[0], embeddings[new], w),
        old_vectors,
        old.items[["x", "y"]].to_numpy(np.float32),
    )
    clusters = nearest_centroid(embeddings[new], fit["centroids"])[0]
    added = _place(rows[new].reset_index(drop=True), w, xy, clusters)
    items = pd.concat([old.items, added], ignore_index=True)
    fit["topic_weights"] = np.concatenate([old_w, w]).astype(np.float32)
    topic_list = old.meta["topics"]["topics"]
    for t in topic_list:
        t["size"] = int((items["topic"] == t["id"]).sum())
    return items, fit, topic_list


def add_tagger(catalog_dir: str | os.PathLike, model_dir: str | os.PathLike, **kwargs) -> dict:
    """Add a trained tagger's tags to a catalogue built from a backbone name, keeping
    everything else it has; returns the new ``catalog.json``. ``kwargs`` go to
    :func:`~multitag.catalog.build.build_catalog` (e.g. ``progress``)."""
    meta = store.read_meta(catalog_dir)
    if not (meta and meta.get("complete")):
        raise FileNotFoundError(
            f"{catalog_dir}: no finished catalogue here; build one first with "
            "`multitag catalog build BACKBONE PHOTOS... --out`"
        )
    if not meta.get("source"):
        raise ValueError(
            f"{catalog_dir} was built with the model {meta.get('model_dir')}; add-tagger is for "
            "catalogues built from a backbone name (build a new one with your model instead)"
        )
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir}: not a model directory (no config.json); train one with `multitag train`"
        )
    nothing_new = Inputs(pd.DataFrame({"id": pd.Series([], dtype=str), "path": []}))
    return build_catalog(model_dir, nothing_new, catalog_dir, **kwargs)
