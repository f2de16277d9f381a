"""The product catalogue: tags, embeddings, topics, a 2-D map, clusters and an index."""

from multitag.catalog.build import build_catalog, load_embedding
from multitag.catalog.store import Catalog, load_catalog

__all__ = ["Catalog", "build_catalog", "load_catalog", "load_embedding"]
