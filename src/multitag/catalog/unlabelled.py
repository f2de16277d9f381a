"""Catalogues built from a backbone name, with no trained model and no labels.

Each photo gets its ImageNet top-k tags (:class:`~multitag.catalog.backbone_tagger.BackboneTagger`)
and its features in one encoder pass; topics come from NMF over the sparse top-k ImageNet
matrix (``imagenet``, the write-up's "top-5 label matrix"), over the features (``features``) or,
once a trained tagger is attached, over its tag probabilities (``tags``). Maps are fitted on
the embedding and/or on the topic weights (``maps``); the explorer switches between them.

A trained tagger attached later (``catalog build MODEL_DIR ... --out`` on such a catalogue, or
``catalog add-tagger``) adds its tasks at the global step: rows already tagged by that tagger
keep their probabilities, the others get them from the stored features (same encoder) or from
the tagger's content-keyed feature cache; nothing else is recomputed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from multitag.catalog import topics as topics_mod
from multitag.catalog.backbone_tagger import BackboneTagger, is_backbone_name, tagger_probabilities
from multitag.tagger import outputs
from multitag.vision import backbones

TOP_K = 5  # ImageNet tags per photo: the write-up's top-5
TOPICS_ON = ("auto", "tags", "features", "imagenet")
MAPS = ("embedding", "topics")


@dataclass
class Source:
    """What a build encodes with: a backbone (``backbone``, for catalogues without a trained
    model) and/or a trained tagger (``tagger`` loaded from ``model_dir``)."""

    backbone: BackboneTagger | None
    tagger: object | None
    model_dir: Path | None

    @property
    def chunk_tagger(self):
        """What tags each chunk: the backbone alone (its trained tasks come at the global
        step, so attaching a tagger never rewrites committed parts), else the tagger."""
        return self.backbone if self.backbone is not None else self.tagger

    @property
    def tasks(self) -> list:
        return list(self.tagger.tasks_) if self.tagger is not None else []


def resolve_source(
    model: str | os.PathLike, prior: dict | None, embedder: str | os.PathLike | None = None
) -> Source:
    """The source of a build given ``model`` (a model directory or a backbone name) and the
    existing catalogue's ``catalog.json`` (``prior``, ``None`` for a new one)."""
    from multitag.tagger.estimator import MultiTaskTagger

    old = (prior or {}).get("source")
    backbone_name = is_backbone_name(model)
    if prior is not None and old is None and backbone_name:
        raise ValueError(
            f"this catalogue was built with the model {prior.get('model_dir')}, not from a "
            f"backbone: use that model, or a new --out folder for {model}"
        )
    if not backbone_name and not Path(model).exists():
        names = ", ".join(s.name for s in backbones.registered() if s.has_classifier)
        raise FileNotFoundError(
            f"{model}: neither a model directory nor a backbone name; give a folder made by "
            f"`multitag train`, or a backbone ({names}, or any timm model name)"
        )
    if old is None and not backbone_name:  # a trained model's catalogue, as before
        if embedder is not None:
            raise ValueError(
                "--embedder is for catalogues built from a backbone name; a model directory "
                "brings its own embedding (embedding.json)"
            )
        model_dir = Path(model).resolve()
        return Source(None, MultiTaskTagger.load(model_dir), model_dir)
    if old is None:
        return Source(BackboneTagger(str(model), embedder=embedder), None, None)
    backbone = BackboneTagger.from_source(old)
    if backbone_name and backbones.resolve_name(str(model)) != old["backbone"]:
        raise ValueError(
            f"this catalogue was built from {old['backbone']}, not {model}: use that backbone "
            "(or a trained model to add its tags), or a new --out folder"
        )
    if embedder is not None and str(Path(embedder).resolve()) != old.get("embedder"):
        raise ValueError(
            f"this catalogue's embedding comes from {old.get('embedder') or 'the features'}: "
            "leave --embedder out, or build a new --out folder"
        )
    if not backbone_name:
        model_dir = Path(model).resolve()
    else:
        model_dir = Path(prior["model_dir"]) if prior.get("model_dir") else None
    tagger = MultiTaskTagger.load(model_dir) if model_dir is not None else None
    return Source(backbone, tagger, model_dir)


def check_options(topics_on: str, maps: tuple[str, ...]) -> None:
    if topics_on not in TOPICS_ON:
        raise ValueError(f"topics_on={topics_on!r}: use one of {', '.join(TOPICS_ON)}")
    bad = [m for m in maps if m not in MAPS]
    if bad or not maps:
        raise ValueError(f"maps={','.join(maps)!r}: use one or more of {', '.join(MAPS)}")


def resolve_topics_on(topics_on: str, source: Source) -> str:
    """``auto`` -> the trained tags when there are any, else the ImageNet tags; a clear error
    for a choice the source cannot give."""
    if topics_on == "auto":
        return "tags" if source.tasks else "imagenet"
    if topics_on == "tags" and not source.tasks:
        raise ValueError(
            "--topics-on tags needs a trained tagger's tags; this catalogue has none: use "
            "imagenet or features (or add a tagger with `multitag catalog add-tagger`)"
        )
    if topics_on == "imagenet" and source.backbone is None:
        raise ValueError(
            "--topics-on imagenet is for catalogues built from a backbone name; use tags or "
            "features with a model directory"
        )
    return topics_on


# ------------------------------------------------------------------------- chunks
def tag_chunk(backbone: BackboneTagger, frame: pd.DataFrame, batch_size: int, labels):
    """One chunk through the backbone: rows (id, path, ImageNet top-k tags and their
    probabilities), arrays (features, ImageNet probabilities, an empty tag matrix), rejects."""
    paths = frame["path"].tolist()
    out = backbone.predict_proba(paths, batch_size=batch_size, return_features=True, use_cache=True)
    ok = np.array([i not in out["errors"] for i in range(len(paths))], dtype=bool)
    rows = pd.DataFrame({"id": frame["id"].to_numpy()[ok], "path": np.asarray(paths)[ok]})
    top = outputs.top_k(out["imagenet"][ok], labels, TOP_K)
    rows["imagenet"] = [[d["label"] for d in t] for t in top]
    rows["imagenet_prob"] = [[d["prob"] for d in t] for t in top]
    rows["tags"] = [[f"imagenet:{d['label']}" for d in t] for t in top]
    arrays = {
        "tagprobs": np.zeros((int(ok.sum()), 0), np.float32),
        "features": out["features"][ok],
        "imagenet": out["imagenet"][ok].astype(np.float16),
    }
    rejects = pd.DataFrame(
        [
            {"id": str(frame["id"].iloc[i]), "path": paths[i], "reason": r}
            for i, r in sorted(out["errors"].items())
        ],
        columns=["id", "path", "reason"],
    )
    return rows, arrays, rejects


# ------------------------------------------------------------------ trained tags
def add_task_tags(
    rows: pd.DataFrame, features: np.ndarray, source: Source, old=None
) -> tuple[pd.DataFrame, np.ndarray]:
    """The attached tagger's tags for every row (``rows`` gains a column and a ``_prob``
    column per task, and ``task:label`` tags beside the ImageNet ones) and the tag
    probability matrix. Rows the previous state ``old`` already tagged with the same tagger
    keep their probabilities."""
    tasks = source.tasks
    if not tasks:
        return rows, np.zeros((len(rows), 0), np.float32)
    columns = [f"{t.name}:{c}" for t in tasks for c in t.classes]
    tagprobs = np.zeros((len(rows), len(columns)), np.float32)
    todo = np.ones(len(rows), bool)
    if (
        old is not None
        and old.meta.get("model_dir") == str(source.model_dir)
        and old.meta.get("tag_columns") == columns
    ):
        row_of = {str(v): i for i, v in enumerate(old.items["id"].astype(str))}
        prev = np.array([row_of.get(str(v), -1) for v in rows["id"]])
        known = prev >= 0
        tagprobs[known] = old.tagprobs[prev[known]]
        todo = ~known
    if todo.any():
        idx = np.flatnonzero(todo)
        proba = tagger_probabilities(
            source.tagger,
            rows["path"].to_numpy()[idx].tolist(),
            features[idx],
            source.backbone.encoder_id(),
            use_cache=True,
        )
        tagprobs[idx] = np.concatenate([proba[t.name] for t in tasks], axis=1)
    rows = rows.copy()
    proba = outputs.split_tasks(tagprobs, tasks)  # tags as everywhere: tagger/outputs.py
    table = outputs.tag_columns(proba, tasks, top=None)
    for task in tasks:
        rows[f"{task.name}_prob"] = table[f"{task.name}_prob"]
        rows[task.name] = table[task.name]
    chosen_tags = outputs.tag_strings(proba, tasks) or [[] for _ in range(len(rows))]
    rows["tags"] = [list(c) + list(t) for c, t in zip(chosen_tags, rows["tags"])]
    return rows, tagprobs


def refresh_rows(items: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``items`` with every per-photo column taken from ``rows`` (by id): an incremental build
    keeps old items' places, topics and clusters, but their tags follow the tagger (the
    columns of a tagger it replaced are dropped)."""
    by_id = rows.set_index(rows["id"].astype(str))
    keys = items["id"].astype(str)
    placed = {"x", "y", "topic", "topic_weight", "cluster"}
    stale = [  # a replaced tagger's task columns
        c for c in items.columns
        if c not in rows.columns and c not in placed and not c.startswith(("x_", "y_"))
    ]  # fmt: skip
    items = items.drop(columns=stale)
    for col in rows.columns:
        if col not in ("id", "path"):
            items[col] = by_id[col].reindex(keys).to_numpy()
    return items


# ------------------------------------------------------------------ topics, maps
def topk_matrix(imagenet: np.ndarray, k: int = TOP_K) -> sparse.csr_matrix:
    """The sparse top-``k`` matrix: each row keeps its ``k`` largest ImageNet probabilities."""
    imagenet = np.asarray(imagenet, np.float32)
    n = len(imagenet)
    if n == 0:
        return sparse.csr_matrix((0, imagenet.shape[1] if imagenet.ndim == 2 else 1000))
    top = np.argpartition(-imagenet, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(imagenet, top, 1)
    return sparse.csr_matrix(
        (values.ravel(), top.ravel(), np.arange(0, n * k + 1, k)), shape=imagenet.shape
    )


def topic_input(on: str, tagprobs, features, imagenet=None, offset=None):
    """The NMF input for ``on`` and the feature offset (``features`` only)."""
    if on == "tags":
        return tagprobs, None
    if on == "imagenet":
        return topk_matrix(imagenet), None
    return topics_mod.nonnegative(features, offset)


def name_topics(on: str, w, h, tagprobs, columns, imagenet=None) -> tuple[list[dict], np.ndarray]:
    """Topic names and the profiles they come from: ImageNet labels for ``imagenet`` topics
    (and for ``features`` topics of a catalogue without trained tags), else the trained tags."""
    from multitag.tagger.batch import imagenet_labels

    if on == "tags":
        return topics_mod.name_topics(h, columns), h
    if on == "imagenet":
        profiles = h
    elif not columns and imagenet is not None:
        profiles = topics_mod.topic_profiles(w, np.asarray(imagenet, np.float32))
    else:
        return topics_mod.name_topics(topics_mod.topic_profiles(w, tagprobs), columns), None
    labels = imagenet_labels()
    topic_list = []
    for t, row in enumerate(profiles):
        order = np.argsort(-row, kind="stable")[:3]
        top = [
            {"tag": f"imagenet:{labels[j]}", "weight": round(float(row[j]), 4)}
            for j in order
            if row[j] > 0
        ]
        name = " / ".join(d["tag"].split(":", 1)[1] for d in top) or f"topic {t}"
        topic_list.append({"id": t, "name": name, "top_tags": top})
    return topic_list, (profiles if on == "imagenet" else None)


def map_vectors(name: str, embeddings: np.ndarray, topic_weights: np.ndarray) -> np.ndarray:
    """Unit rows the map ``name`` is drawn from: the embedding, or the topic weights."""
    if name == "embedding":
        return np.asarray(embeddings, np.float32)
    w = np.asarray(topic_weights, np.float32) + 1e-6  # a row with no topic has no direction
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def extra_maps(items, maps, vectors_of, fit_map, old=None):
    """``x_<map>``/``y_<map>`` columns for every map after the first: ``fit_map(vectors)``
    over all items (the build fits it on its ``--fit-sample`` and places the other rows in
    chunks), or, extending the ``old`` catalogue (whose items come first), new rows placed
    among the old ones. ``vectors_of(map name)``: the items' vectors for that map."""
    from multitag.catalog import layout as layout_mod

    items = items.copy()
    new = np.arange(len(items)) >= (len(old.items) if old is not None else 0)
    for name in maps[1:]:
        vectors = vectors_of(name)
        if old is None or f"x_{name}" not in old.items:
            xy = fit_map(vectors)
        else:
            old_xy = old.items[[f"x_{name}", f"y_{name}"]].to_numpy(np.float32)
            xy = np.concatenate([old_xy, layout_mod.place_new(vectors[new], vectors[~new], old_xy)])
        items[f"x_{name}"], items[f"y_{name}"] = xy[:, 0].round(5), xy[:, 1].round(5)
    return items
