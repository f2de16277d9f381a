"""Retrieval metrics of an embedding (Recall@k, MAP@R, NMI) and the trained-vs-raw comparison."""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np
import pandas as pd
from sklearn.metrics import normalized_mutual_info_score

from multitag.embedding.kmeans import KMeans
from multitag.embedding.knn import knn_accuracy
from multitag.embedding.model import Embedder, l2_normalize, same_key
from multitag.training.prepare import fit_rows


def default_split(frame: pd.DataFrame, same: Sequence[str], seed: int = 0):
    """``(train_rows, val_rows)``: the tagger's split (:mod:`multitag.training.prepare`),
    stratified on the ``same`` column with the most classes, copies of a photo (same content
    digest) on one side."""
    split = fit_rows(frame, list(same), columns=("id",)).split(0.2, seed)
    return split.train, split.val


def retrieval_metrics(
    vectors: np.ndarray,
    labels: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
    seed: int = 0,
    nmi: bool = True,
) -> dict[str, float]:
    """Leave-one-out retrieval on ``vectors`` (cosine): ``recall@k`` (a same-label item in the
    top k), ``map@r`` (MAP@R, Musgrave et al. 2020) over queries that have at least one other
    same-label item, and (``nmi``; k-means with k = number of labels, the slow part) ``nmi``
    of the clusters against the labels."""
    x = l2_normalize(np.asarray(vectors, np.float32))
    codes, labels = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    counts = np.bincount(labels)
    r_all = counts[labels] - 1
    kmax = int(min(len(x) - 1, max(max(ks), r_all.max())))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, nn = index.search(x, kmax + 1)
    # drop the query itself wherever it appears
    own = nn == np.arange(len(x))[:, None]
    nn_wo = np.array([row[~m][:kmax] for row, m in zip(nn, own)])
    hit = labels[nn_wo] == labels[:, None]
    q = r_all > 0
    out = {f"recall@{k}": float(hit[q, :k].any(1).mean()) for k in ks}
    aps = []
    for i in np.flatnonzero(q):
        r = r_all[i]
        h = hit[i, :r]
        prec = np.cumsum(h) / np.arange(1, r + 1)
        aps.append(float((prec * h).sum() / r))
    out["map@r"] = float(np.mean(aps))
    if nmi:  # 3 restarts, as before: k = the number of label combinations, often hundreds
        assign = KMeans(len(codes), n_init=3, random_state=seed).fit(x).labels_
        out["nmi"] = float(normalized_mutual_info_score(labels, assign))
    out["queries"] = int(q.sum())
    return out


def evaluate_embedding(
    embedder: Embedder,
    frame: pd.DataFrame,
    same: Sequence[str],
    *,
    knn_columns: Sequence[str] | None = None,
    k: int = 20,
    features=None,
) -> dict:
    """Trained embedding vs raw backbone features on the val split of ``frame``.

    Returns ``{"embedding": metrics, "backbone_features": metrics, "knn": {...}}``; kNN
    accuracy uses the train split as references and the val split as queries.
    ``features``: the raw (pretrained) backbone ``FeatureResult`` of every row, if already
    computed. A fine-tuned embedder embeds with its tuned backbone (from the cached prefix).
    """
    frame = frame.reset_index(drop=True)
    same = list(same)
    train_rows, val_rows = default_split(frame, same)
    paths = frame["path"].tolist()
    res = features if features is not None else embedder.raw_features(paths)
    tuned = embedder.features(paths, prefix_cache=True) if embedder.finetuned_ else res
    ok = res.ok & tuned.ok
    key = same_key(frame, same).to_numpy()
    val = np.array([r for r in val_rows if ok[r] and key[r]], dtype=np.int64)
    train = np.array([r for r in train_rows if ok[r]], dtype=np.int64)
    spaces = {
        "embedding": embedder.transform_features(tuned.features),
        "backbone_features": l2_normalize(res.features),
    }
    out: dict = {}
    knn: dict = {}
    for name, vecs in spaces.items():
        out[name] = retrieval_metrics(vecs[val], key[val])
        for col in knn_columns if knn_columns is not None else same:
            labels = frame[col].fillna("").astype(str).to_numpy()
            acc = knn_accuracy(vecs[train], labels[train], vecs[val], labels[val], k)
            knn.setdefault(col, {})[name] = acc
    out["knn"] = {"k": k, "accuracy": knn}
    out["split"] = {"train": len(train), "val": len(val), "same": same}
    return out
