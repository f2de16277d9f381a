"""kNN classification: an attribute predicted by a similarity-weighted vote of neighbours."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from multitag.embedding.index import VectorIndex


def vote(
    labels: np.ndarray, scores: np.ndarray, temperature: float | None = 0.05
) -> tuple[list[str | None], np.ndarray]:
    """Per row: the label with the largest summed weight, and its share (confidence).

    ``labels`` (nq, k) object array (None = no neighbour / unlabelled), ``scores`` (nq, k)
    cosine similarities. Weight of a neighbour: ``exp(score / temperature)`` (closer
    neighbours count more), or the clipped similarity itself when ``temperature`` is None.
    """
    preds: list[str | None] = []
    conf = np.zeros(len(labels), np.float32)
    for i, (row, s) in enumerate(zip(labels, scores)):
        weights: dict[str, float] = {}
        for lab, w in zip(row, s):
            if lab is None or lab == "" or not np.isfinite(w):
                continue
            w = math.exp((w - 1.0) / temperature) if temperature else max(float(w), 0.0)
            weights[lab] = weights.get(lab, 0.0) + w + 1e-9
        if not weights:
            preds.append(None)
            continue
        best = max(weights, key=weights.get)
        preds.append(best)
        conf[i] = weights[best] / sum(weights.values())
    return preds, conf


def knn_classify(
    index: VectorIndex,
    queries: np.ndarray,
    column: str,
    k: int = 20,
    *,
    exclude_rows: Sequence[int] | None = None,
    temperature: float | None = 0.05,
) -> pd.DataFrame:
    """Predict ``column`` for each query from its ``k`` nearest indexed items.

    Returns a frame with ``prediction`` and ``confidence`` (the winner's vote share).
    """
    if column not in index.items_.columns:
        raise ValueError(f"the index has no column {column!r}; it has {list(index.items_.columns)}")
    scores, rows = index.search(queries, k, exclude_rows=exclude_rows)
    values = index.items_[column].astype(str).to_numpy()
    labels = np.where(rows >= 0, values[np.maximum(rows, 0)], None).astype(object)
    preds, conf = vote(labels, scores, temperature)
    return pd.DataFrame({"prediction": preds, "confidence": conf})


def knn_accuracy(
    ref_vectors: np.ndarray,
    ref_labels: Sequence[str],
    query_vectors: np.ndarray,
    query_labels: Sequence[str],
    k: int = 20,
    temperature: float | None = 0.05,
) -> float:
    """Accuracy of a ``k``-NN vote of reference labels (exact search); blank labels skipped."""
    ref_labels = np.asarray(ref_labels, dtype=object)
    keep = np.array([bool(str(v).strip()) for v in ref_labels])
    index = VectorIndex("exact").build(
        ref_vectors[keep], pd.DataFrame({"label": ref_labels[keep].astype(str)})
    )
    query_labels = np.asarray(query_labels, dtype=object)
    has = np.array([bool(str(v).strip()) for v in query_labels])
    pred = knn_classify(index, query_vectors[has], "label", k, temperature=temperature)
    pred = pred["prediction"].to_numpy()
    return float(np.mean(pred == query_labels[has].astype(str)))
