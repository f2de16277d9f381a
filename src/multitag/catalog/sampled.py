"""Fitting the catalogue's topics and map on a sample, then applying them to every row in
chunks, so the fit's cost and memory stop growing with the catalogue.

Below ``FIT_SAMPLE`` rows nothing changes (everything is fitted on every row). Above it,
NMF components and the 2-D map are fitted on a seeded random sample; every row then gets
its topic weights from the fixed components (NMF transform) and every row outside the
sample its map position from its nearest sample points (the same kNN placement incremental
builds use), ``CHUNK`` rows at a time. k-means already fits on a sample
(:data:`multitag.embedding.kmeans.MAX_TRAIN`) and assigns every row.
"""

from __future__ import annotations

import faiss
import numpy as np

from multitag.catalog import layout as layout_mod
from multitag.catalog import topics as topics_mod
from multitag.core.progress import bar

FIT_SAMPLE = 1_000_000
"""Default number of rows topics and map are fitted on (more rows: a random sample)."""
CHUNK = 50_000


def fit_rows(n: int, size: int | None, seed: int = 0) -> np.ndarray | None:
    """Sorted rows to fit on: ``None`` (all of them) when ``n <= size`` or ``size`` is None."""
    if size is not None and (isinstance(size, bool) or int(size) < 1):
        raise ValueError(f"fit_sample={size!r}: use a whole number >= 1, or None for every row")
    if size is None or n <= size:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, int(size), replace=False))


def transform_topics(x: np.ndarray, components: np.ndarray, progress: bool = False) -> np.ndarray:
    """Topic weights of every row of ``x`` (dense, or the sparse top-k ImageNet matrix) under
    fixed ``components``, in chunks."""
    n = x.shape[0]
    out = np.zeros((n, len(components)), np.float32)
    with bar("catalogue: topics", n, enabled=progress) as pbar:
        for s in range(0, n, CHUNK):
            out[s : s + CHUNK] = topics_mod.transform_topics(x[s : s + CHUNK], components)
            pbar.advance(min(CHUNK, n - s))
    return out


def fit_layout(
    x: np.ndarray,
    method: str,
    seed: int = 0,
    n_epochs: int | None = None,
    size: int | None = FIT_SAMPLE,
    progress: bool = False,
    *,
    sample: np.ndarray | None = None,
) -> np.ndarray:
    """A 2-D map of every row of ``x`` (unit rows): fitted on all of them up to ``size``,
    else on a random sample of ``size`` (or the given ``sample`` rows) and the other rows
    placed among its points (:func:`place`). Every map a catalogue draws goes through here."""
    if sample is None:
        sample = fit_rows(len(x), size, seed)
    if sample is None:
        return layout_mod.fit_layout(x, method, seed, n_epochs)
    xy_fit = layout_mod.fit_layout(x[sample], method, seed, n_epochs)
    return place(x, sample, xy_fit, progress=progress)


def place(
    x: np.ndarray,
    sample_rows: np.ndarray,
    sample_xy: np.ndarray,
    k: int = 10,
    progress: bool = False,
) -> np.ndarray:
    """Map positions of every row of ``x`` (unit rows): the fitted ``sample_xy`` for the
    sample's rows, the similarity-weighted mean of the ``k`` most similar sample points for
    the others (found with a FAISS inner-product search, in chunks)."""
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x[sample_rows], np.float32))
    k = min(k, len(sample_rows))
    xy = np.zeros((len(x), 2), np.float32)
    with bar("catalogue: map", len(x), enabled=progress) as pbar:
        for s in range(0, len(x), CHUNK):
            sims, nn = index.search(np.ascontiguousarray(x[s : s + CHUNK], np.float32), k)
            w = np.maximum(sims, 0) + 1e-6
            xy[s : s + CHUNK] = (sample_xy[nn] * w[..., None]).sum(1) / w.sum(1, keepdims=True)
            pbar.advance(min(CHUNK, len(x) - s))
    xy[sample_rows] = sample_xy
    return xy
