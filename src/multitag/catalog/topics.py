"""Topics: NMF over tag probabilities or features, named by their strongest tags.

(The catalogue's k-means clusters are :class:`multitag.embedding.kmeans.KMeans`, the same
k-means as ``multitag cluster``.)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.sparse import issparse
from sklearn.decomposition import NMF, non_negative_factorization
from sklearn.exceptions import ConvergenceWarning


def nonnegative(x: np.ndarray, offset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Shift columns so the matrix is >= 0 (NMF input); returns ``(shifted, offset)``."""
    x = np.asarray(x, np.float32)
    if offset is None:
        offset = np.minimum(x.min(0), 0) if len(x) else np.zeros(x.shape[1], np.float32)
    return np.maximum(x - offset, 0), offset


def fit_topics(x: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """NMF with ``k`` topics: returns ``(W (n, k) item-topic weights, H (k, m) components)``."""
    k = max(1, min(k, x.shape[0], x.shape[1]))  # x may be sparse (the top-k tag matrix)
    model = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        w = model.fit_transform(x)
    return w.astype(np.float32), model.components_.astype(np.float32)


def transform_topics(x: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Topic weights of new rows under fitted ``components`` (H is kept fixed)."""
    if x.shape[0] == 0:
        return np.zeros((0, len(components)), np.float32)
    x = x.astype(np.float64) if issparse(x) else np.asarray(x, np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        w, _, _ = non_negative_factorization(
            x,
            H=np.asarray(components, np.float64),
            n_components=len(components),
            init="custom",
            update_H=False,
            max_iter=400,
        )
    return w.astype(np.float32)


def topic_profiles(w: np.ndarray, tagprobs: np.ndarray) -> np.ndarray:
    """Each topic's tag profile as lift over the catalogue mean (for naming topics of features)."""
    weights = w / np.maximum(w.sum(0, keepdims=True), 1e-12)
    profile = weights.T @ tagprobs
    return profile - tagprobs.mean(0, keepdims=True)


def name_topics(profiles: np.ndarray, tag_columns: Sequence[str], n_top: int = 3) -> list[dict]:
    """Name each topic by its ``n_top`` strongest tags (``task:label``), one task each."""
    topics = []
    for t, row in enumerate(profiles):
        top, seen = [], set()
        for j in np.argsort(-row, kind="stable"):
            task, label = tag_columns[j].split(":", 1)
            if task in seen or label == "other":
                continue
            seen.add(task)
            top.append({"tag": tag_columns[j], "weight": round(float(row[j]), 4)})
            if len(top) == n_top:
                break
        name = " / ".join(d["tag"].split(":", 1)[1] for d in top) or f"topic {t}"
        topics.append({"id": t, "name": name, "top_tags": top})
    return topics
