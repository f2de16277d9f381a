"""The 2-D map: UMAP (default) or t-SNE over the embeddings, and placing new points."""

from __future__ import annotations

import numpy as np

LAYOUTS = ("umap", "tsne")


def fit_layout(
    x: np.ndarray, method: str = "umap", seed: int = 0, n_epochs: int | None = None
) -> np.ndarray:
    """2-D coordinates for ``x`` (rows L2-normalised; cosine geometry), scaled to [-1, 1]."""
    n = len(x)
    if method not in LAYOUTS:
        raise ValueError(f"layout {method!r}: use one of {', '.join(LAYOUTS)}")
    if n < 4:
        xy = np.zeros((n, 2), np.float32)
        xy[:, 0] = np.linspace(-1, 1, n) if n > 1 else 0
        return xy
    if method == "umap":
        import umap

        reducer = umap.UMAP(
            n_neighbors=min(15, n - 1),
            min_dist=0.1,
            metric="cosine",
            random_state=seed,
            n_jobs=1,
            n_epochs=n_epochs,
            init="spectral" if n > 16 else "random",
        )
        xy = reducer.fit_transform(x)
    else:
        from sklearn.manifold import TSNE

        xy = TSNE(
            n_components=2,
            perplexity=float(min(30.0, max(2.0, (n - 1) / 3))),
            metric="cosine",
            init="pca",
            random_state=seed,
        ).fit_transform(x)
    return scale(np.asarray(xy, np.float32))


def scale(xy: np.ndarray) -> np.ndarray:
    """Centre and scale to [-1, 1] (both axes by the same factor)."""
    xy = xy - (xy.max(0) + xy.min(0)) / 2
    return (xy / max(float(np.abs(xy).max()), 1e-12)).astype(np.float32)


def place_new(new: np.ndarray, old: np.ndarray, old_xy: np.ndarray, k: int = 10) -> np.ndarray:
    """Positions of new points: similarity-weighted mean of their ``k`` nearest old points."""
    if len(new) == 0:
        return np.zeros((0, 2), np.float32)
    k = min(k, len(old))
    sims = new @ old.T
    nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    w = np.maximum(np.take_along_axis(sims, nn, 1), 0) + 1e-6
    return ((old_xy[nn] * w[..., None]).sum(1) / w.sum(1, keepdims=True)).astype(np.float32)
