"""Embeddings: metric learning on backbone features, a FAISS vector index, kNN and clusters.

The model names load lazily, so the index, kNN and cluster modules need neither torch nor
pytorch-metric-learning to import.
"""

from __future__ import annotations

__all__ = ["Embedder", "EmbeddingHead", "encode_model_dir", "load_embedder"]


def __getattr__(name: str):
    if name in __all__:
        from multitag.embedding import model

        return getattr(model, name)
    raise AttributeError(f"module 'multitag.embedding' has no attribute {name!r}")
