"""Typed response models of the catalogue API."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Tag(BaseModel):
    label: str
    prob: float


class TagResponse(BaseModel):
    tags: dict[str, list[Tag]] = Field(description="top-k labels per task, best first")
    top: dict[str, str] = Field(description="the chosen label(s) per task ('|'-joined)")
    imagenet: list[Tag]


class ItemSummary(BaseModel):
    id: str
    x: float
    y: float
    topic: int
    cluster: int
    labels: dict[str, str] = Field(description="top label(s) per task")


class ItemDetail(ItemSummary):
    tags: dict[str, list[Tag]]
    imagenet: list[str]
    imagenet_prob: list[float] = Field(
        default_factory=list, description="the ImageNet tags' probabilities (backbone builds)"
    )
    topic_name: str
    topic_weight: float
    thumb: str


class ItemsPage(BaseModel):
    total: int
    page: int
    page_size: int
    items: list[ItemSummary]


class SimilarItem(ItemSummary):
    score: float = Field(description="cosine similarity to the query")


class SimilarResponse(BaseModel):
    query: str = Field(description="the query item id, or 'upload'")
    query_tags: TagResponse | None = None
    query_xy: list[float] | None = Field(None, description="an upload's place on the map")
    items: list[SimilarItem]


class Topic(BaseModel):
    id: int
    name: str
    size: int
    top_tags: list[dict]


class Reason(BaseModel):
    shared_attributes: list[str]
    shared_topics: list[str]


class Recommendation(SimilarItem):
    reason: Reason


class RecommendResponse(BaseModel):
    n_photos: int
    profile_attributes: list[str] = Field(description="attributes common to the shopper's photos")
    items: list[Recommendation]


class Density(BaseModel):
    """Point counts on a grid over ``box`` = [x0, x1, y0, y1]; ``counts[i][j]``: row i of
    y, column j of x."""

    box: list[float]
    counts: list[list[int]]


class MapData(BaseModel):
    """Column-oriented points for the explorer map (all, or a sample for the view box)."""

    ids: list[str]
    x: list[float]
    y: list[float]
    colour_by: dict[str, dict] = Field(
        description="per field: {'categories': [...], 'codes': [...]} (code per point)"
    )
    tags: list[str] = Field(description="every tag (task:label) present, for filtering")
    rows: list[int] = Field(description="catalogue row of each point (as /match returns)")
    total: int = Field(description="points in the view box (and filter), returned or not")
    n_items: int = Field(description="items in the catalogue")
    sampled: bool = Field(description="true when only a sample of the view's points is here")
    density: Density | None = Field(None, description="all the view's points, when sampled")
    layout: str = Field(description="the map x, y, the view box and the density are on")
    layouts: dict[str, dict[str, list[float]]] = Field(
        default_factory=dict,
        description="every map built (--maps), by what it is drawn from: {'x': [...], 'y': "
        "[...]} of the same points; the first is the items' own x, y",
    )


class Match(BaseModel):
    """Map rows (positions in ``/map``'s lists) of the items that have every given tag."""

    tag: str
    total: int
    rows: list[int]


class Error(BaseModel):
    """Every refusal: a plain reason, or FastAPI's list of invalid fields."""

    detail: str | list[dict]


def errors(*codes: int) -> dict:
    """OpenAPI ``responses`` documenting ``codes`` as :class:`Error` bodies."""
    return {code: {"model": Error} for code in codes}
