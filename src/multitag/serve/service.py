"""The catalogue behind the API: lookups, filters, search, upload analysis, thumbnails.

Upload analysis (:meth:`CatalogService.analyse`) is synchronous and meant for the worker pool
(:mod:`multitag.serve.workers`): it checks the pixel budget from the headers, decodes, then runs
the model.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi import HTTPException

from multitag.catalog import layout as layout_mod
from multitag.catalog import topics as topics_mod
from multitag.catalog.build import load_embedding
from multitag.catalog.columns import ItemColumns
from multitag.catalog.store import ITEMS, Catalog
from multitag.embedding import compressed
from multitag.serve.uploads import Upload, check_budget
from multitag.tagger import outputs

THUMB_SIZE = 160
_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


class CatalogService:
    """Catalogue + optional model; the logic behind the routes."""

    def __init__(self, catalog: Catalog, model_dir: str | os.PathLike | None) -> None:
        self.catalog = catalog
        self.items = catalog.items.reset_index(drop=True)
        self.ids = self.items["id"].astype(str).tolist()
        self.index = catalog.load_index()  # refused clearly when missing, unreadable or torn
        self.emb = np.ascontiguousarray(catalog.embeddings, np.float32)
        index_meta = catalog.meta.get("index") or {}
        # a compressed index's candidates are re-ranked exactly with the embeddings
        self.k_factor = index_meta.get("k_factor") if index_meta.get("kind") == "ivfpq" else None
        self.task_names = [t["name"] for t in catalog.tasks]
        self.topic_names = {t["id"]: t["name"] for t in catalog.meta["topics"]["topics"]}
        # filters and map views run on columns (the tag lists read with pyarrow)
        # (one per map built: --maps; the first one is the items' x, y)
        self.maps = list(catalog.meta["layout"].get("maps", ["embedding"]))
        self.columns = ItemColumns.from_parquet(
            self.items, catalog.data_dir / ITEMS, maps=self.maps
        )
        self.tagger = self.embed = None
        self.lock = threading.Lock()  # one forward pass at a time: the tagger is not reentrant
        source = catalog.meta.get("source")
        if source:  # built from a backbone: it tags uploads (plus an attached tagger's tasks)
            from multitag.catalog.backbone_tagger import BackboneTagger

            trained = None
            if model_dir is not None:
                from multitag.tagger.estimator import MultiTaskTagger

                trained = MultiTaskTagger.load(model_dir)
            self.tagger = BackboneTagger.from_source(
                source, tagger=trained, progress=False, workers=0
            )
            self.tagger.warm_up()
            self.embed = self.tagger.embed
        elif model_dir is not None:
            from multitag.tagger.estimator import MultiTaskTagger

            self.tagger = MultiTaskTagger.load(model_dir)
            self.tagger.set_params(runtime__progress=False, runtime__workers=0)
            self.tagger.warm_up()  # engine conversion at start-up, not in the first request
            self.embed, _ = load_embedding(model_dir)

    # ------------------------------------------------------------------ items
    def row_or_404(self, item_id: str) -> int:
        row = self.catalog.row_of(item_id)
        if row is None:
            raise HTTPException(404, f"no item with id {item_id!r} in this catalogue")
        return row

    def summary(self, row: int) -> dict:
        r = self.items.iloc[row]
        return {
            "id": self.ids[row],
            "x": float(r["x"]),
            "y": float(r["y"]),
            "topic": int(r["topic"]),
            "cluster": int(r["cluster"]),
            "labels": {t: str(r[t]) for t in self.task_names},
        }

    @functools.cached_property
    def colour_fields(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """Per map colour field (each task, topic, the top ImageNet tag of a catalogue built
        from a backbone, cluster): ``(categories, code per row)``, computed once (vectorised:
        the map asks for them on every view)."""

        def by_count(values: pd.Series) -> tuple[list[str], np.ndarray]:
            cats = values.value_counts().index.tolist()  # most common first
            return cats, pd.Categorical(values, categories=cats).codes.astype(np.int64)

        out = {}
        for name in self.task_names:
            out[name] = by_count(self.items[name].astype(str).replace("", "(none)"))
        topics = self.columns.topic
        out["topic"] = (
            [f"{i}: {self.topic_names.get(i, '')}" for i in range(int(topics.max(initial=0)) + 1)],
            topics,
        )
        if "imagenet" in self.items and self.catalog.meta.get("source"):  # from a backbone
            top1 = self.items["imagenet"].str[0].fillna("(none)").astype(str)
            out["imagenet"] = by_count(top1)
        clusters = self.columns.cluster
        out["cluster"] = (
            [f"cluster {i}" for i in range(int(clusters.max(initial=0)) + 1)],
            clusters,
        )
        return out

    def task_tags(self, probs: np.ndarray, k: int = 3) -> dict[str, list[dict]]:
        """The ``k`` most probable labels of each task, from one row of catalogue tagprobs."""
        per_task = outputs.split_tasks(probs, self.catalog.tasks)
        return {
            name: outputs.top_k(p, task["classes"], k, decimals=4)[0]
            for (name, p), task in zip(per_task.items(), self.catalog.tasks)
        }

    def detail(self, row: int) -> dict:
        r = self.items.iloc[row]
        return {
            **self.summary(row),
            "tags": self.task_tags(self.catalog.tagprobs[row]),
            "imagenet": [str(v) for v in r["imagenet"]],
            "imagenet_prob": [float(v) for v in r.get("imagenet_prob", [])],
            "topic_name": self.topic_names.get(int(r["topic"]), ""),
            "topic_weight": float(r["topic_weight"]),
            "thumb": f"/thumbs/{self.ids[row]}",
        }

    def mask(self, tag: str | None, topic: int | None, cluster: int | None) -> np.ndarray:
        return self.columns.mask(split_tags(tag), topic, cluster)

    def search(
        self,
        query: np.ndarray,
        k: int,
        keep: np.ndarray | None = None,
        exclude: set[int] = frozenset(),
    ) -> list[tuple[int, float]]:
        q = np.ascontiguousarray(query.reshape(1, -1), np.float32)
        if keep is None or keep.all():
            kk = min(len(self.ids), k + len(exclude))
            if self.k_factor:
                scores, rows = compressed.search(self.index, self.emb, q, kk, self.k_factor)
            else:
                scores, rows = self.index.search(q, kk)
            hits = [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0]
        else:
            rows = np.flatnonzero(keep)
            sims = self.emb[rows] @ q[0]
            top = np.argsort(-sims, kind="stable")[: k + len(exclude)]
            hits = [(int(rows[j]), float(sims[j])) for j in top]
        return [(r, s) for r, s in hits if r not in exclude][:k]

    # --------------------------------------------------------------- thumbnails
    def thumbnail(self, row: int) -> Path:
        """The cached thumbnail of ``row``, made on first use; ``404`` with a plain reason when
        the source image is gone or unreadable (never its path: that is the server's business)."""
        from multitag.core.io import atomic_path
        from multitag.data.images import ImageDecodeError, load_image

        cache = self.catalog.directory / "thumbs" / f"{row}.jpg"
        if cache.is_file():
            return cache
        source = Path(str(self.items["path"].iloc[row]))
        if not source.is_file():
            raise HTTPException(
                404, f"the image of item {self.ids[row]!r} is no longer on the server"
            )
        try:
            img = load_image(source, target_size=THUMB_SIZE)
        except ImageDecodeError as err:
            raise HTTPException(
                404, f"the image of item {self.ids[row]!r} cannot be read: {err.reason}"
            ) from None
        img.thumbnail((THUMB_SIZE, THUMB_SIZE))
        with atomic_path(cache) as tmp:
            img.save(tmp, format="JPEG", quality=85)
        return cache

    # ---------------------------------------------------------------- uploads
    def analyse(self, uploads: list[Upload], max_pixels: int, max_total_pixels: int) -> list[dict]:
        """Uploads -> per photo: tag probabilities (flattened), embedding, features, ImageNet
        probabilities. Blocking: run it on the worker pool."""
        from multitag.data.images import ImageDecodeError, load_image

        check_budget(uploads, max_pixels, max_total_pixels)
        for up in uploads:
            try:
                load_image(up.data, name=up.name, max_pixels=max_pixels, target_size=THUMB_SIZE)
            except ImageDecodeError as err:
                raise HTTPException(422, f"{up.name}: unreadable image: {err.reason}") from None
        if self.tagger is None:
            raise HTTPException(503, "no model loaded: start the server with --model MODEL_DIR")
        return [self._analyse_one(up) for up in uploads]

    def _analyse_one(self, up: Upload) -> dict:
        suffix = Path(up.name).suffix.lower()
        with tempfile.TemporaryDirectory(prefix="multitag-upload-") as tmp:
            path = Path(tmp) / f"upload{suffix if suffix in _SUFFIXES else '.img'}"
            path.write_bytes(up.data)
            with self.lock:
                out = self.tagger.predict_proba([path], return_features=True)
        if out["errors"]:  # the temporary path is the server's business, not the client's
            reason = str(out["errors"][0]).replace(str(path), up.name)
            raise HTTPException(422, f"unreadable image {up.name!r}: {reason}")
        probs = np.concatenate(
            [out["proba"][t][0] for t in self.task_names] or [np.zeros(0, np.float32)]
        )
        return {
            "tagprobs": probs.astype(np.float32),
            "embedding": self.embed(out["features"])[0],
            "features": out["features"][0],
            "imagenet": None if out["imagenet"] is None else out["imagenet"][0],
        }

    def tag_response(self, a: dict) -> dict:
        tags = self.task_tags(a["tagprobs"])
        columns = outputs.tag_columns(
            outputs.split_tasks(a["tagprobs"], self.catalog.tasks), self.catalog.tasks, top=None
        )
        top = {task["name"]: columns[task["name"]][0] for task in self.catalog.tasks}
        imagenet = []
        if a["imagenet"] is not None:
            from multitag.tagger.batch import imagenet_labels

            imagenet = outputs.top_k(a["imagenet"], imagenet_labels(), 5, decimals=4)[0]
        return {"tags": tags, "top": top, "imagenet": imagenet}

    def topic_of(self, a: dict) -> int:
        from multitag.catalog.unlabelled import topic_input

        meta, fit = self.catalog.meta["topics"], self.catalog.fit
        imagenet = None if a["imagenet"] is None else a["imagenet"][None]
        x, _ = topic_input(
            meta["on"], a["tagprobs"][None], a["features"][None], imagenet, fit.get("nmf_offset")
        )
        w = topics_mod.transform_topics(x, fit["nmf_components"])
        return int(w[0].argmax())

    def place(self, embedding: np.ndarray) -> tuple[float, float]:
        xy = layout_mod.place_new(
            embedding[None], self.emb, self.items[["x", "y"]].to_numpy(np.float32)
        )
        return float(xy[0, 0]), float(xy[0, 1])

    def chosen(self, probs: np.ndarray) -> list[str]:
        """The ``task:label`` tags an upload gets (:mod:`multitag.tagger.outputs`)."""
        per_task = outputs.split_tasks(probs, self.catalog.tasks)
        return (outputs.tag_strings(per_task, self.catalog.tasks) or [[]])[0]  # no tasks: none

    def imagenet_tags(self, a: dict) -> list[str]:
        """An upload's ``imagenet:label`` tags, in a catalogue whose items carry them (built
        from a backbone): its top-k ImageNet classes."""
        if not self.catalog.meta.get("source") or a.get("imagenet") is None:
            return []
        from multitag.catalog.unlabelled import TOP_K
        from multitag.tagger.batch import imagenet_labels

        return [
            f"imagenet:{d['label']}"
            for d in outputs.top_k(a["imagenet"], imagenet_labels(), TOP_K)[0]
        ]

    def recommend(self, photos: list[dict], k: int) -> dict:
        """Items near the mean embedding of a shopper's photos, each with its reasons."""
        embs = np.stack([p["embedding"] for p in photos])
        profile = embs.mean(0)
        profile /= max(float(np.linalg.norm(profile)), 1e-12)
        counts: dict[str, int] = {}
        for p in photos:
            for t in set(self.chosen(p["tagprobs"])) | set(self.imagenet_tags(p)):
                counts[t] = counts.get(t, 0) + 1
        common = sorted(t for t, c in counts.items() if c * 2 >= len(photos))
        topics = {self.topic_of(p) for p in photos}
        # near-duplicates of an input photo are not recommendations
        dup = {r for e in embs for r, s in self.search(e, 5) if s >= 0.97}
        items = []
        for r, s in self.search(profile, k, None, dup):
            topic = int(self.items["topic"].iloc[r])
            shared_topics = [self.topic_names.get(topic, str(topic))] if topic in topics else []
            items.append(
                {
                    **self.summary(r),
                    "score": round(s, 5),
                    "reason": {
                        "shared_attributes": sorted(set(self.columns.tags_of(r)) & set(counts)),
                        "shared_topics": shared_topics,
                    },
                }
            )
        return {"n_photos": len(photos), "profile_attributes": common, "items": items}


def split_tags(tag: str | None) -> list[str]:
    return [t.strip() for t in (tag or "").split(",") if t.strip()]
