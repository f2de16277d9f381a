"""Catalogue items: paged listing with filters, one item's detail, its thumbnail."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse

from multitag.serve import schemas
from multitag.serve.deps import get_service
from multitag.serve.security import require_key
from multitag.serve.service import CatalogService

router = APIRouter(dependencies=[Depends(require_key)], responses=schemas.errors(401))


@router.get("/items", response_model=schemas.ItemsPage)
def list_items(
    page: int = Query(1, ge=1),
    page_size: int = Query(50, ge=1, le=1000),
    tag: str | None = Query(None, description="task:label, comma-separated (all must hold)"),
    topic: int | None = None,
    cluster: int | None = None,
    service: CatalogService = Depends(get_service),
):
    rows = np.flatnonzero(service.mask(tag, topic, cluster))
    chunk = rows[(page - 1) * page_size : page * page_size]
    return {
        "total": len(rows),
        "page": page,
        "page_size": page_size,
        "items": [service.summary(int(r)) for r in chunk],
    }


@router.get("/items/{item_id}", response_model=schemas.ItemDetail, responses=schemas.errors(404))
def get_item(item_id: str, service: CatalogService = Depends(get_service)):
    return service.detail(service.row_or_404(item_id))


@router.get(
    "/thumbs/{item_id}",
    response_class=FileResponse,
    responses={200: {"content": {"image/jpeg": {}}}, **schemas.errors(404)},
)
def thumb(item_id: str, service: CatalogService = Depends(get_service)):
    """A JPEG thumbnail (cached under the catalogue, named by row, never by the id given)."""
    path = service.thumbnail(service.row_or_404(item_id))
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})
