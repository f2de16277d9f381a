"""The catalogue API and the explorer page: ``create_app(catalog_dir, model_dir=None, ...)``.

Uploads are checked before any model work: size (413), image type by content (415), decodable
(422 with the reason). Files are only ever served from the catalogue's own item paths (by row,
never by a user-supplied path) and from the package's static folder.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import threading
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles

from multitag.catalog import layout as layout_mod
from multitag.catalog import topics as topics_mod
from multitag.catalog.build import load_embedding
from multitag.catalog.store import Catalog, load_catalog
from multitag.serve import schemas

STATIC = Path(__file__).parent / "static"
MAX_PHOTOS = 10
THUMB_SIZE = 160
_MAGIC = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)


def plotly_js() -> Path:
    """The ``plotly.min.js`` bundled inside the installed ``plotly`` Python package."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        from multitag.next_step import install_extra

        raise FileNotFoundError(f"{path} missing: reinstall plotly ({install_extra('serve')})")
    return path


def _is_image_bytes(data: bytes) -> bool:
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


class CatalogService:
    """Catalogue + optional model; the logic behind the routes."""

    def __init__(self, catalog: Catalog, model_dir: str | os.PathLike | None) -> None:
        self.catalog = catalog
        self.items = catalog.items.reset_index(drop=True)
        self.ids = self.items["id"].astype(str).tolist()
        self.index = catalog.load_index()  # counts checked: a torn catalogue is refused
        self.emb = np.ascontiguousarray(catalog.embeddings, np.float32)
        self.task_names = [t["name"] for t in catalog.tasks]
        self.topic_names = {t["id"]: t["name"] for t in catalog.meta["topics"]["topics"]}
        self.row_tags = [set(map(str, t)) for t in self.items["tags"]]
        self.tagger = self.embed = None
        self.lock = threading.Lock()
        if model_dir is not None:
            from multitag.tagger import MultiTaskTagger

            self.tagger = MultiTaskTagger.load(model_dir)
            self.tagger.progress = False
            self.tagger.workers = 0
            self.tagger.warm_up()  # engine conversion at start-up, not in the first request
            self.embed, _ = load_embedding(model_dir)

    # ------------------------------------------------------------------ items
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

    def task_tags(self, probs: np.ndarray, k: int = 3) -> dict[str, list[dict]]:
        out, start = {}, 0
        for task in self.catalog.tasks:
            p = probs[start : start + len(task["classes"])]
            start += len(task["classes"])
            order = np.argsort(-p, kind="stable")[:k]
            out[task["name"]] = [
                {"label": task["classes"][j], "prob": round(float(p[j]), 4)} for j in order
            ]
        return out

    def detail(self, row: int) -> dict:
        r = self.items.iloc[row]
        return {
            **self.summary(row),
            "tags": self.task_tags(self.catalog.tagprobs[row]),
            "imagenet": [str(v) for v in r["imagenet"]],
            "topic_name": self.topic_names.get(int(r["topic"]), ""),
            "topic_weight": float(r["topic_weight"]),
            "thumb": f"/thumbs/{self.ids[row]}",
        }

    def mask(self, tag: str | None, topic: int | None, cluster: int | None) -> np.ndarray:
        keep = np.ones(len(self.ids), bool)
        for t in _split_tags(tag):
            keep &= np.array([t in s for s in self.row_tags])
        if topic is not None:
            keep &= self.items["topic"].to_numpy() == topic
        if cluster is not None:
            keep &= self.items["cluster"].to_numpy() == cluster
        return keep

    def search(
        self,
        query: np.ndarray,
        k: int,
        keep: np.ndarray | None = None,
        exclude: set[int] = frozenset(),
    ) -> list[tuple[int, float]]:
        q = np.ascontiguousarray(query.reshape(1, -1), np.float32)
        if keep is None or keep.all():
            scores, rows = self.index.search(q, min(len(self.ids), k + len(exclude)))
            hits = [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0]
        else:
            rows = np.flatnonzero(keep)
            sims = self.emb[rows] @ q[0]
            top = np.argsort(-sims, kind="stable")[: k + len(exclude)]
            hits = [(int(rows[j]), float(sims[j])) for j in top]
        return [(r, s) for r, s in hits if r not in exclude][:k]

    # ---------------------------------------------------------------- uploads
    def analyse(self, data: bytes, name: str) -> dict:
        """One upload -> tag probabilities (flattened), embedding, ImageNet probabilities."""
        if self.tagger is None:
            raise HTTPException(503, "no model loaded: start the server with --model MODEL_DIR")
        suffix = Path(name or "upload").suffix.lower()
        suffix = (
            suffix
            if suffix in (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
            else ".img"
        )
        with tempfile.TemporaryDirectory(prefix="multitag-upload-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            with self.lock:
                out = self.tagger.predict_proba([path], return_features=True)
        if out["errors"]:
            raise HTTPException(422, f"unreadable image {name!r}: {out['errors'][0]}")
        probs = np.concatenate([out["proba"][t][0] for t in self.task_names])
        return {
            "tagprobs": probs.astype(np.float32),
            "embedding": self.embed(out["features"])[0],
            "features": out["features"][0],
            "imagenet": None if out["imagenet"] is None else out["imagenet"][0],
        }

    def tag_response(self, a: dict) -> dict:
        tags = self.task_tags(a["tagprobs"])
        top = {}
        for task in self.catalog.tasks:
            if task["kind"] == "multiclass":
                top[task["name"]] = tags[task["name"]][0]["label"]
            else:
                top[task["name"]] = "|".join(
                    d["label"] for d in tags[task["name"]] if d["prob"] >= 0.5
                )
        imagenet = []
        if a["imagenet"] is not None:
            from multitag.tagging import imagenet_labels

            names = imagenet_labels()
            imagenet = [
                {"label": names[j], "prob": round(float(a["imagenet"][j]), 4)}
                for j in np.argsort(-a["imagenet"])[:5]
            ]
        return {"tags": tags, "top": top, "imagenet": imagenet}

    def topic_of(self, a: dict) -> int:
        meta, fit = self.catalog.meta["topics"], self.catalog.fit
        x = a["tagprobs"] if meta["on"] == "tags" else a["features"]
        if meta["on"] != "tags":
            x, _ = topics_mod.nonnegative(x[None], fit.get("nmf_offset"))
        w = topics_mod.transform_topics(np.atleast_2d(x), fit["nmf_components"])
        return int(w[0].argmax())

    def place(self, embedding: np.ndarray) -> tuple[float, float]:
        xy = layout_mod.place_new(
            embedding[None], self.emb, self.items[["x", "y"]].to_numpy(np.float32)
        )
        return float(xy[0, 0]), float(xy[0, 1])


def _split_tags(tag: str | None) -> list[str]:
    return [t.strip() for t in (tag or "").split(",") if t.strip()]


def create_app(
    catalog_dir: str | os.PathLike,
    model_dir: str | os.PathLike | None = None,
    api_key: str | None = None,
    max_upload_mb: float = 10,
):
    """The FastAPI app serving one catalogue (and, with ``model_dir``, tagging uploads)."""
    service = CatalogService(load_catalog(catalog_dir), model_dir)
    limit = int(max_upload_mb * 1024 * 1024)
    header = APIKeyHeader(name="X-API-Key", auto_error=False)

    def check_key(request: Request, key: str | None = Depends(header)) -> None:
        if api_key is None:
            return
        given = key or request.query_params.get("api_key") or ""
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send it in the X-API-Key header")

    app = FastAPI(
        title="multitag catalogue",
        description="Tags, topics, map and visual search over a product catalogue.",
        version="1",
    )
    auth = [Depends(check_key)]

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit * MAX_PHOTOS + 65536:
            return JSONResponse(
                {"detail": f"request too large (limit {max_upload_mb} MB per image)"},
                status_code=413,
            )
        return await call_next(request)

    async def read_upload(file: UploadFile) -> bytes:
        data = await file.read(limit + 1)
        name = file.filename or "upload"
        if len(data) > limit:
            raise HTTPException(413, f"{name}: larger than the {max_upload_mb} MB upload limit")
        if not data:
            raise HTTPException(415, f"{name}: empty file, not an image")
        if not _is_image_bytes(data):
            raise HTTPException(
                415,
                f"{name}: not an image (content type {file.content_type!r}); "
                "send a JPEG, PNG, GIF, BMP, TIFF or WebP file",
            )
        from multitag.data.images import ImageDecodeError, load_image

        try:
            load_image(data, name=name)
        except ImageDecodeError as err:
            raise HTTPException(422, f"{name}: unreadable image: {err.reason}") from err
        return data

    def row_or_404(item_id: str) -> int:
        row = service.catalog.row_of(item_id)
        if row is None:
            raise HTTPException(404, f"no item with id {item_id!r} in this catalogue")
        return row

    # ------------------------------------------------------------------ pages
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly_bundle() -> FileResponse:
        return FileResponse(plotly_js(), media_type="text/javascript")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -------------------------------------------------------------------- API
    @app.get("/items", response_model=schemas.ItemsPage, dependencies=auth)
    def list_items(
        page: int = Query(1, ge=1),
        page_size: int = Query(50, ge=1, le=1000),
        tag: str | None = Query(None, description="task:label, comma-separated (all must hold)"),
        topic: int | None = None,
        cluster: int | None = None,
    ):
        rows = np.flatnonzero(service.mask(tag, topic, cluster))
        chunk = rows[(page - 1) * page_size : page * page_size]
        return {
            "total": len(rows),
            "page": page,
            "page_size": page_size,
            "items": [service.summary(int(r)) for r in chunk],
        }

    @app.get("/items/{item_id}", response_model=schemas.ItemDetail, dependencies=auth)
    def get_item(item_id: str):
        return service.detail(row_or_404(item_id))

    @app.get("/topics", response_model=list[schemas.Topic], dependencies=auth)
    def get_topics():
        return [
            {"id": t["id"], "name": t["name"], "size": t.get("size", 0), "top_tags": t["top_tags"]}
            for t in service.catalog.meta["topics"]["topics"]
        ]

    @app.get("/map", response_model=schemas.MapData, dependencies=auth)
    def get_map():
        items = service.items
        colour = {}
        for name in service.task_names:
            codes, cats = _codes(items[name].astype(str).replace("", "(none)"))
            colour[name] = {"categories": cats, "codes": codes}
        topic_codes = items["topic"].astype(int)
        colour["topic"] = {
            "categories": [
                f"{i}: {service.topic_names.get(i, '')}" for i in range(int(topic_codes.max()) + 1)
            ],
            "codes": topic_codes.tolist(),
        }
        clusters = items["cluster"].astype(int)
        colour["cluster"] = {
            "categories": [f"cluster {i}" for i in range(int(clusters.max()) + 1)],
            "codes": clusters.tolist(),
        }
        tags = sorted(set().union(*service.row_tags)) if service.row_tags else []
        return {
            "ids": service.ids,
            "x": items["x"].astype(float).tolist(),
            "y": items["y"].astype(float).tolist(),
            "colour_by": colour,
            "tags": tags,
        }

    @app.get("/match", response_model=schemas.Match, dependencies=auth)
    def match(tag: str = Query(..., description="task:label, comma-separated")):
        rows = np.flatnonzero(service.mask(tag, None, None))
        return {"tag": tag, "total": len(rows), "rows": rows.tolist()}

    @app.get(
        "/thumbs/{item_id}",
        dependencies=auth,
        response_class=FileResponse,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    def thumb(item_id: str):
        row = row_or_404(item_id)
        cache = service.catalog.directory / "thumbs" / f"{row}.jpg"
        if not cache.is_file():
            source = Path(str(service.items["path"].iloc[row]))
            if not source.is_file():
                raise HTTPException(404, f"the image of item {item_id!r} is gone: {source}")
            _make_thumb(source, cache)
        return FileResponse(
            cache, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"}
        )

    @app.post("/tag", response_model=schemas.TagResponse, dependencies=auth)
    async def tag(file: UploadFile = File(..., description="an image")):
        data = await read_upload(file)
        return service.tag_response(service.analyse(data, file.filename or "upload"))

    @app.post("/similar", response_model=schemas.SimilarResponse, dependencies=auth)
    async def similar(
        file: UploadFile | None = File(None, description="an image (or give id)"),
        id: str | None = Form(None, description="a catalogue item id (or upload a file)"),
        k: int = Form(10, ge=1, le=200),
        tag: str | None = Form(None, description="only items with these task:label tags"),
    ):
        if (file is None) == (id is None):
            raise HTTPException(422, "give exactly one of: an uploaded file, or an item id")
        keep = service.mask(tag, None, None) if tag else None
        query_tags, query_xy, exclude = None, None, set()
        if file is not None:
            a = service.analyse(await read_upload(file), file.filename or "upload")
            query, query_name = a["embedding"], "upload"
            query_tags, query_xy = service.tag_response(a), list(service.place(query))
        else:
            row = row_or_404(id)
            query, query_name, exclude = service.emb[row], id, {row}
        hits = service.search(query, k, keep, exclude)
        return {
            "query": query_name,
            "query_tags": query_tags,
            "query_xy": query_xy,
            "items": [{**service.summary(r), "score": round(s, 5)} for r, s in hits],
        }

    @app.post("/recommend", response_model=schemas.RecommendResponse, dependencies=auth)
    async def recommend(
        files: list[UploadFile] = File(..., description="1-10 photos of one shopper's taste"),
        k: int = Form(12, ge=1, le=200),
    ):
        if len(files) > MAX_PHOTOS:
            raise HTTPException(422, f"at most {MAX_PHOTOS} photos per request")
        photos = [service.analyse(await read_upload(f), f.filename or "upload") for f in files]
        embs = np.stack([p["embedding"] for p in photos])
        profile = embs.mean(0)
        profile /= max(float(np.linalg.norm(profile)), 1e-12)
        photo_tags = [set(_chosen(service, p["tagprobs"])) for p in photos]
        counts: dict[str, int] = {}
        for s in photo_tags:
            for t in s:
                counts[t] = counts.get(t, 0) + 1
        common = sorted(t for t, c in counts.items() if c * 2 >= len(photos))
        topics = {service.topic_of(p) for p in photos}
        # near-duplicates of an input photo are not recommendations
        dup = {r for e in embs for r, s in service.search(e, 5) if s >= 0.97}
        hits = service.search(profile, k, None, dup)
        items = []
        for r, s in hits:
            shared = sorted(service.row_tags[r] & set(counts))
            topic = int(service.items["topic"].iloc[r])
            items.append(
                {
                    **service.summary(r),
                    "score": round(s, 5),
                    "reason": {
                        "shared_attributes": shared,
                        "shared_topics": [service.topic_names.get(topic, str(topic))]
                        if topic in topics
                        else [],
                    },
                }
            )
        return {"n_photos": len(photos), "profile_attributes": common, "items": items}

    return app


def _chosen(service: CatalogService, probs: np.ndarray) -> list[str]:
    out = []
    for name, top in service.tag_response({"tagprobs": probs, "imagenet": None})["top"].items():
        out.extend(f"{name}:{label}" for label in top.split("|") if label)
    return out


def _codes(values) -> tuple[list[int], list[str]]:
    cats = values.value_counts().index.tolist()
    lookup = {c: i for i, c in enumerate(cats)}
    return [lookup[v] for v in values], cats


def _make_thumb(source: Path, cache: Path) -> None:
    from multitag.data.images import load_image
    from multitag.io import atomic_path

    img = load_image(source)
    img.thumbnail((THUMB_SIZE, THUMB_SIZE))
    with atomic_path(cache) as tmp:
        img.save(tmp, format="JPEG", quality=85)
