"""Catalogue-wide views: topics, the map's points (a sample per view on millions), the rows
matching tags."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query

from multitag.serve import schemas
from multitag.serve.deps import get_service, get_settings
from multitag.serve.security import require_key
from multitag.serve.service import CatalogService
from multitag.serve.settings import ServeSettings

router = APIRouter(dependencies=[Depends(require_key)], responses=schemas.errors(401))


@router.get("/topics", response_model=list[schemas.Topic])
def get_topics(service: CatalogService = Depends(get_service)):
    return [
        {"id": t["id"], "name": t["name"], "size": t.get("size", 0), "top_tags": t["top_tags"]}
        for t in service.catalog.meta["topics"]["topics"]
    ]


@router.get("/map", response_model=schemas.MapData, responses=schemas.errors(404))
def get_map(
    x0: float | None = Query(None, description="view box: left edge (left out: open)"),
    x1: float | None = None,
    y0: float | None = None,
    y1: float | None = None,
    limit: int | None = Query(
        None, ge=1, le=200_000, description="most points to return (default: --map-points)"
    ),
    tag: str | None = Query(None, description="only items with these task:label tags"),
    bins: int = Query(64, ge=4, le=256, description="density grid size when sampled"),
    layout: str | None = Query(
        None, description="which map (one of `layouts`; default the first): x, y and the box"
    ),
    service: CatalogService = Depends(get_service),
    settings: ServeSettings = Depends(get_settings),
):
    """The map's points: every item when they fit in ``limit``, else for the view box (on the
    map ``layout``) a fixed random sample of ``limit`` and a density grid of all (zooming in
    reveals more). A missing edge of the box is open (``x0`` alone: every point right of it);
    an empty box has no points. ``rows`` are catalogue rows (as ``/match`` returns);
    ``layouts`` has the same points on every map the catalogue holds."""
    edges, inf = (x0, x1, y0, y1), float("inf")
    box = None
    if any(v is not None for v in edges):
        box = tuple(o if v is None else v for v, o in zip(edges, (-inf, inf, -inf, inf)))
    layout = layout or service.maps[0]
    if layout not in service.columns.maps:
        raise HTTPException(  # a named resource that is not there, like an unknown item id
            404, f"no map {layout!r}: this catalogue has {', '.join(service.columns.maps)}"
        )
    keep = service.mask(tag, None, None) if tag else None
    view = service.columns.view(box, limit or settings.map_points, keep, bins, layout)
    rows = view["rows"]
    density = view["density"]
    if density is not None:
        density = {"box": density["box"], "counts": density["counts"].tolist()}
    layouts = {
        name: {"x": x[rows].astype(float).tolist(), "y": y[rows].astype(float).tolist()}
        for name, (x, y) in service.columns.maps.items()
    }
    return {
        "ids": [service.ids[r] for r in rows],
        "x": layouts[layout]["x"],
        "y": layouts[layout]["y"],
        "colour_by": {
            name: {"categories": cats, "codes": codes[rows].tolist()}
            for name, (cats, codes) in service.colour_fields.items()
        },
        "tags": sorted(service.columns.tag_names),
        "rows": rows.tolist(),
        "total": view["total"],
        "n_items": len(service.ids),
        "sampled": view["total"] > len(rows),
        "density": density,
        "layout": layout,
        "layouts": layouts,
    }


@router.get("/match", response_model=schemas.Match)
def match(
    tag: str = Query(..., description="task:label, comma-separated"),
    service: CatalogService = Depends(get_service),
):
    rows = np.flatnonzero(service.mask(tag, None, None))
    return {"tag": tag, "total": len(rows), "rows": rows.tolist()}
