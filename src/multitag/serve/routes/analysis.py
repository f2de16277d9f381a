"""Uploads and search: tag a photo, find similar items (by photo or id), recommend from a
shopper's photos.

These routes read their own bodies (:func:`multitag.serve.uploads.read_form`) so the upload
limits hold while the bytes arrive; their request schemas are declared for the OpenAPI page.
Decoding and the model run on the bounded worker pool, never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from multitag.serve import schemas
from multitag.serve.deps import get_pool, get_service, get_settings
from multitag.serve.security import require_key
from multitag.serve.service import CatalogService
from multitag.serve.settings import MAX_PHOTOS, ServeSettings
from multitag.serve.uploads import Upload, check_content, parse_fields, read_form
from multitag.serve.workers import Busy, ModelPool

router = APIRouter(
    dependencies=[Depends(require_key)], responses=schemas.errors(400, 401, 413, 415, 422, 503)
)
_FILE = {"type": "string", "format": "binary"}
_K = {"type": "integer", "minimum": 1, "maximum": 200}


class SimilarForm(BaseModel):
    id: str | None = None
    k: int = Field(10, ge=1, le=200)
    tag: str | None = None


class RecommendForm(BaseModel):
    k: int = Field(12, ge=1, le=200)


def _body(properties: dict, required: list[str], urlencoded: bool = False) -> dict:
    def schema(props: dict) -> dict:
        return {"type": "object", "properties": props, "required": required}

    content = {"multipart/form-data": {"schema": schema(properties)}}
    if urlencoded:  # the same fields without the files
        text = {k: v for k, v in properties.items() if v.get("format") != "binary"}
        content["application/x-www-form-urlencoded"] = {"schema": schema(text)}
    return {"requestBody": {"required": bool(required), "content": content}}


@dataclass
class Uploads:
    """What the upload routes share: the catalogue service, the limits and the worker pool."""

    service: CatalogService
    settings: ServeSettings
    pool: ModelPool

    async def read(self, request: Request, max_files: int) -> tuple[dict[str, str], list[Upload]]:
        return await read_form(request, self.settings.upload_bytes, max_files)

    async def analyse(self, uploads: list[Upload]) -> list[dict]:
        """Content checks here, then decoding + the model on the worker pool."""
        for up in uploads:
            check_content(up)
        limits = self.settings.max_pixels, self.settings.max_total_pixels
        try:
            return await self.pool.run(self.service.analyse, uploads, *limits)
        except Busy as err:
            headers = {"Retry-After": str(err.retry_after)}
            raise HTTPException(503, str(err), headers=headers) from None


def get_uploads(
    service: CatalogService = Depends(get_service),
    settings: ServeSettings = Depends(get_settings),
    pool: ModelPool = Depends(get_pool),
) -> Uploads:
    return Uploads(service, settings, pool)


@router.post(
    "/tag",
    response_model=schemas.TagResponse,
    openapi_extra=_body({"file": {**_FILE, "description": "an image"}}, ["file"]),
)
async def tag(request: Request, up: Uploads = Depends(get_uploads)):
    """Tags (top labels per task) and ImageNet tags of one uploaded photo."""
    _, files = await up.read(request, 1)
    files = [f for f in files if f.field == "file"]
    if not files:
        raise HTTPException(422, "send one image in the form field 'file'")
    (a,) = await up.analyse(files)
    return up.service.tag_response(a)


@router.post(
    "/similar",
    response_model=schemas.SimilarResponse,
    openapi_extra=_body(
        {
            "file": {**_FILE, "description": "an image (or give id)"},
            "id": {"type": "string", "description": "a catalogue item id (or upload a file)"},
            "k": {**_K, "default": 10},
            "tag": {"type": "string", "description": "only items with these task:label tags"},
        },
        [],
        urlencoded=True,
    ),
    responses=schemas.errors(404),
)
async def similar(request: Request, up: Uploads = Depends(get_uploads)):
    """The ``k`` catalogue items nearest an uploaded photo or a catalogue item."""
    service = up.service
    fields, files = await up.read(request, 1)
    form = parse_fields(SimilarForm, fields)
    files = [f for f in files if f.field == "file"]
    if bool(files) == (form.id is not None):
        raise HTTPException(422, "give exactly one of: an uploaded file, or an item id")
    keep = service.mask(form.tag, None, None) if form.tag else None
    query_tags, query_xy, exclude = None, None, set()
    if files:
        (a,) = await up.analyse(files)
        query, query_name = a["embedding"], "upload"
        query_tags, query_xy = service.tag_response(a), list(service.place(query))
    else:
        row = service.row_or_404(form.id)
        query, query_name, exclude = service.emb[row], form.id, {row}
    hits = service.search(query, form.k, keep, exclude)
    return {
        "query": query_name,
        "query_tags": query_tags,
        "query_xy": query_xy,
        "items": [{**service.summary(r), "score": round(s, 5)} for r, s in hits],
    }


@router.post(
    "/recommend",
    response_model=schemas.RecommendResponse,
    openapi_extra=_body(
        {
            "files": {
                "type": "array",
                "items": _FILE,
                "minItems": 1,
                "maxItems": MAX_PHOTOS,
                "description": f"1-{MAX_PHOTOS} photos of one shopper's taste",
            },
            "k": {**_K, "default": 12},
        },
        ["files"],
    ),
)
async def recommend(request: Request, up: Uploads = Depends(get_uploads)):
    """Items for a shopper, from 1-10 of their photos, each with the reasons it was chosen."""
    fields, files = await up.read(request, MAX_PHOTOS)
    form = parse_fields(RecommendForm, fields)
    files = [f for f in files if f.field == "files"]
    if not files:
        raise HTTPException(422, f"send 1-{MAX_PHOTOS} images in the form field 'files'")
    photos = await up.analyse(files)
    return up.service.recommend(photos, form.k)
