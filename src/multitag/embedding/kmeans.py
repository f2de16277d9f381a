"""The project's one k-means: ``multitag cluster``, the catalogue's clusters (which the
explorer shows) and the NMI of :func:`~multitag.embedding.evaluate.retrieval_metrics` all fit
:class:`KMeans`, so the same vectors get the same clusters everywhere.

Why not a single FAISS run: Lloyd iterations from one random start often settle in a poor
local optimum (two seeds in one class, two classes merged in one cluster). Here every restart
is seeded with k-means++ (scikit-learn's ``kmeans_plusplus``), refined with FAISS's Lloyd
iterations (fast on large inputs) and the restart with the lowest objective is kept. Rows that
are all L2-normalised (embeddings, index vectors) get spherical k-means: unit centroids,
assignment by cosine. Above ``max_train`` rows the centroids are fitted on a random sample of
that size and every row is then assigned to its nearest centroid; ``bench/kmeans.md``
measures the time and quality that sample size buys.
"""

from __future__ import annotations

import faiss
import numpy as np
from sklearn.cluster import kmeans_plusplus
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

MAX_TRAIN = 20_000
"""Default sample size the centroids are fitted on (see ``bench/kmeans.md``)."""

_NORM_TOL = 1e-3


def _as_matrix(x) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"k-means needs a 2-D array of rows, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("k-means input has NaN or infinite values: drop or fix those rows")
    return x


def is_normalised(x: np.ndarray) -> bool:
    """True when every row has unit L2 norm (then k-means is spherical)."""
    return bool(len(x)) and bool(np.all(np.abs(np.linalg.norm(x, axis=1) - 1) < _NORM_TOL))


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(cluster of each row, squared Euclidean distance to it)``. With unit centroids and
    unit rows the nearest centroid is also the most cosine-similar one."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dist, assign = index.search(x, 1)
    return assign[:, 0].astype(np.int32), np.maximum(dist[:, 0], 0)


class KMeans:
    """k-means with k-means++ restarts keeping the best objective, FAISS Lloyd iterations and
    spherical centroids for L2-normalised rows.

    Parameters are stored as given and checked in :meth:`fit`. ``spherical``: ``"auto"``
    (spherical when every row has unit norm), True or False. ``max_train``: fit the centroids
    on a random sample of this many rows when there are more (None: always all rows).

    After :meth:`fit`: ``labels_`` (every row's cluster), ``cluster_centers_``, ``inertia_``
    (sum of squared distances of every row to its centroid), ``spherical_``, ``n_train_``
    (rows the centroids were fitted on) and ``restart_inertias_`` (each restart's objective
    on those rows).
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        n_init: int = 10,
        max_iter: int = 25,
        spherical: bool | str = "auto",
        max_train: int | None = MAX_TRAIN,
        random_state: int = 0,
    ):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.spherical = spherical
        self.max_train = max_train
        self.random_state = random_state

    def _check_params(self, n: int) -> None:
        k = self.n_clusters
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
            raise ValueError(
                f"n_clusters={k!r}: use a whole number from 1 to the number of rows ({n})"
            )
        for name in ("n_init", "max_iter"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}={v!r}: use a whole number >= 1")
        if self.spherical not in ("auto", True, False):
            raise ValueError(f"spherical={self.spherical!r}: use 'auto', True or False")
        m = self.max_train
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < k):
            raise ValueError(
                f"max_train={m!r}: use None (all rows) or a whole number >= n_clusters ({k})"
            )

    def fit(self, x) -> KMeans:
        x = _as_matrix(x)
        n, d = x.shape
        self._check_params(n)
        k = int(self.n_clusters)
        spherical = is_normalised(x) if self.spherical == "auto" else bool(self.spherical)
        rng = np.random.default_rng(self.random_state)
        train = x
        if self.max_train is not None and n > self.max_train:
            train = x[np.sort(rng.choice(n, int(self.max_train), replace=False))]
        best, objectives = None, []
        for _ in range(int(self.n_init)):
            seed = int(rng.integers(2**31 - 1))
            # k-means++ is k thin matrix products: threading them only adds overhead
            with threadpool_limits(1, user_api="blas"):
                init, _ = kmeans_plusplus(train, k, random_state=seed)
            if spherical:
                init /= np.maximum(np.linalg.norm(init, axis=1, keepdims=True), 1e-12)
            km = faiss.Kmeans(
                d,
                k,
                niter=int(self.max_iter),
                seed=seed,
                spherical=spherical,
                min_points_per_centroid=1,  # no warning for small clusters
                max_points_per_centroid=len(train),  # no second, hidden subsample
            )
            km.train(train, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
            obj = float(nearest_centroid(train, km.centroids)[1].sum(dtype=np.float64))
            objectives.append(obj)
            if best is None or obj < best[0]:
                best = (obj, km.centroids.copy())
        self.cluster_centers_ = best[1]
        self.labels_, dist = nearest_centroid(x, self.cluster_centers_)
        self.inertia_ = float(dist.sum(dtype=np.float64))
        self.spherical_ = spherical
        self.n_train_ = len(train)
        self.restart_inertias_ = objectives
        return self

    def predict(self, x) -> np.ndarray:
        """Cluster of new rows: their nearest fitted centroid."""
        if not hasattr(self, "cluster_centers_"):
            raise RuntimeError("this KMeans is not fitted yet: call fit() first")
        return nearest_centroid(_as_matrix(x), self.cluster_centers_)[0]

    def fit_predict(self, x) -> np.ndarray:
        return self.fit(x).labels_


def suggest_k(
    x,
    k_min: int = 2,
    k_max: int = 20,
    *,
    sample: int = 2000,
    n_init: int = 3,
    random_state: int = 0,
) -> tuple[int, dict[int, float]]:
    """The k in ``k_min..k_max`` whose k-means clusters have the highest silhouette (cosine for
    L2-normalised rows, else Euclidean), measured on a random sample of ``sample`` rows.

    Returns ``(best k, {k: silhouette})``. Silhouette needs 2 <= k < rows, so the range is
    cut to the sample.
    """
    x = _as_matrix(x)
    if isinstance(k_min, bool) or not isinstance(k_min, (int, np.integer)) or k_min < 2:
        raise ValueError(f"k_min={k_min!r}: silhouette needs at least 2 clusters")
    if isinstance(k_max, bool) or not isinstance(k_max, (int, np.integer)) or k_max < k_min:
        raise ValueError(f"k_max={k_max!r}: use a whole number >= k_min ({k_min})")
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 3:
        raise ValueError(f"sample={sample!r}: use a whole number >= 3")
    rng = np.random.default_rng(random_state)
    if len(x) > sample:
        x = x[np.sort(rng.choice(len(x), sample, replace=False))]
    hi = min(int(k_max), len(x) - 1)
    if hi < k_min:
        raise ValueError(
            f"{len(x)} rows are too few to compare k={k_min}..{k_max} by silhouette: "
            "choose k yourself"
        )
    metric = "cosine" if is_normalised(x) else "euclidean"
    scores = {}
    for k in range(int(k_min), hi + 1):
        labels = KMeans(k, n_init=n_init, random_state=random_state).fit(x).labels_
        if len(np.unique(labels)) < 2:
            continue
        scores[k] = float(silhouette_score(x, labels, metric=metric))
    if not scores:
        raise ValueError("every row is identical: there are no clusters to find")
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores
