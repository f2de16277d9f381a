"""The product catalogue: tags, embeddings, topics, a 2-D map, clusters and an index.

Names load lazily, so reading a published catalogue (:mod:`multitag.catalog.store`) needs no torch.
"""

from __future__ import annotations

__all__ = ["Catalog", "build_catalog", "load_catalog", "load_embedding"]


def __getattr__(name: str):
    if name in ("build_catalog", "load_embedding"):
        from multitag.catalog import build

        return getattr(build, name)
    if name in ("Catalog", "load_catalog"):
        from multitag.catalog import store

        return getattr(store, name)
    raise AttributeError(f"module 'multitag.catalog' has no attribute {name!r}")
