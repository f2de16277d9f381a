"""Catalogue-wide views: topics, the map's points, the rows matching tags."""

from __future__ import annotations

import numpy as np
import pandas as pd
from fastapi import APIRouter, Depends, Query

from multitag.serve import schemas
from multitag.serve.deps import get_service
from multitag.serve.security import require_key
from multitag.serve.service import CatalogService

router = APIRouter(dependencies=[Depends(require_key)], responses=schemas.errors(401))


@router.get("/topics", response_model=list[schemas.Topic])
def get_topics(service: CatalogService = Depends(get_service)):
    return [
        {"id": t["id"], "name": t["name"], "size": t.get("size", 0), "top_tags": t["top_tags"]}
        for t in service.catalog.meta["topics"]["topics"]
    ]


@router.get("/map", response_model=schemas.MapData)
def get_map(service: CatalogService = Depends(get_service)):
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
    if "imagenet" in items and service.catalog.meta.get("source"):  # built from a backbone
        top1 = [str(v[0]) if len(v) else "(none)" for v in items["imagenet"]]
        codes, cats = _codes(pd.Series(top1))
        colour["imagenet"] = {"categories": cats, "codes": codes}
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
        "layouts": _layouts(service),
    }


def _layouts(service: CatalogService) -> dict[str, dict[str, list[float]]]:
    """Each map the catalogue holds (``--maps``), the items' own ``x``, ``y`` first."""
    items, names = service.items, service.catalog.meta["layout"].get("maps", ["embedding"])
    out = {
        names[0]: {"x": items["x"].astype(float).tolist(), "y": items["y"].astype(float).tolist()}
    }
    for name in names[1:]:
        if f"x_{name}" in items:
            out[name] = {
                "x": items[f"x_{name}"].astype(float).tolist(),
                "y": items[f"y_{name}"].astype(float).tolist(),
            }
    return out


@router.get("/match", response_model=schemas.Match)
def match(
    tag: str = Query(..., description="task:label, comma-separated"),
    service: CatalogService = Depends(get_service),
):
    rows = np.flatnonzero(service.mask(tag, None, None))
    return {"tag": tag, "total": len(rows), "rows": rows.tolist()}


def _codes(values) -> tuple[list[int], list[str]]:
    cats = values.value_counts().index.tolist()
    lookup = {c: i for i, c in enumerate(cats)}
    return [lookup[v] for v in values], cats
