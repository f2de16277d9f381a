"""The compressed similar-items index for large catalogues (FAISS IVF-PQ).

Above a size threshold a flat or IVF-flat index holds every float of every vector (1 KB per
256-d item: 10 GB at 10 M). Here, as the FAISS wiki recommends for millions of vectors, the
vectors are projected to a compact space (a PCA to at most ``MAX_DIM`` dims when they are
wider, then an OPQ rotation), assigned to ``nlist`` inverted lists (about ``4 * sqrt(N)``)
and stored as product-quantised codes of ``m`` bytes. Everything is trained on a sample; the
rest arrives in chunks (never all in memory), each chunk filling a clone of the trained empty
index (on a thread pool when ``workers > 1``: faiss releases the GIL) that is merged into the
result in input order (``merge_from``), so row ``i`` of the input is faiss id ``i``.

Codes alone cap the recall, so searches take ``k * k_factor`` candidates from the codes and
re-rank them exactly with the full vectors, read from a store that may stay on disk (a
memory-mapped float16 file, or the catalogue's embeddings): only the candidates' rows are
read. ``nprobe`` is then chosen as the smallest power of two whose recall@10 on tuning
queries (sample rows, whose exact top 10 is tracked over every chunk during the fill)
reaches the target; when more lists stop helping (the codes cap what the candidates hold),
the candidates per result double (``k_factor``) and the sweep goes on; when nothing reaches
the target, the best setting found is kept and its recall recorded (:func:`tune_search`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import faiss
import numpy as np

MAX_DIM = 256
"""Widest vector the codes are made from (wider ones are PCA-projected first)."""


OPQ_ITERATIONS = 10
OPQ_TRAIN_ROWS = 16_384
PQ_ITERATIONS = 16
"""Training effort: the OPQ rotation's rounds and rows (faiss: 50 and 65,536) and k-means
iterations of each product quantiser (faiss: 25, and 40 for OPQ's first); the codes are
re-ranked exactly, so rougher codes cost little recall."""
HNSW_QUANTIZER_MIN = 1024
"""From this many lists, vectors find their lists through an HNSW graph over the centroids
(the wiki's ``IVFk_HNSW32``), not by comparing with every centroid."""


def factory_string(n: int, dim: int, m: int = 32, nlist: int | None = None) -> str:
    """The index factory string for ``n`` vectors of ``dim`` dims (``OPQm_d,IVFk,PQm``)."""
    if dim < m or dim % m and dim <= MAX_DIM:
        raise ValueError(
            f"{dim}-d vectors cannot be split into m={m} sub-vectors: use an m that divides "
            f"{dim} (e.g. 8, 16 or 32)"
        )
    out = min(dim, MAX_DIM) // m * m
    k = nlist or default_nlist(n)
    prefix = f"PCAR{out}," if out < dim else ""
    quantizer = "_HNSW32" if k >= HNSW_QUANTIZER_MIN else ""
    return f"{prefix}OPQ{m}_{out},IVF{k}{quantizer},PQ{m}np"  # np: no polysemous training


def default_nlist(n: int) -> int:
    """``4 * sqrt(n)`` inverted lists (the wiki's lower end: short lists, cheap training),
    at least 1 and at most ``n // 39`` (faiss wants >= 39 training points per list)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


@dataclass
class TopK:
    """Running exact top ``k`` by inner product of fixed queries over chunks of rows."""

    queries: np.ndarray
    k: int = 10
    scores: np.ndarray = field(init=False)
    rows: np.ndarray = field(init=False)
    seen: int = 0

    def __post_init__(self) -> None:
        self.scores = np.full((len(self.queries), self.k), -np.inf, np.float32)
        self.rows = np.full((len(self.queries), self.k), -1, np.int64)

    def update(self, chunk: np.ndarray) -> None:
        """Merge ``chunk`` (the next rows, in order) into the running top k."""
        s = self.queries @ chunk.T
        k = min(self.k, len(chunk))
        if not k:
            return
        best = np.argpartition(-s, k - 1, axis=1)[:, :k]  # the chunk's own top k first
        both_s = np.concatenate([self.scores, np.take_along_axis(s, best, 1)], axis=1)
        both_r = np.concatenate([self.rows, best + self.seen], axis=1)
        top = np.argsort(-both_s, axis=1, kind="stable")[:, : self.k]
        self.scores = np.take_along_axis(both_s, top, 1)
        self.rows = np.take_along_axis(both_r, top, 1)
        self.seen += len(chunk)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top k found in its returned top k."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def ivf_of(index: faiss.Index) -> faiss.IndexIVF:
    """The inverted-file index inside ``index`` (under its pre-transforms)."""
    return faiss.extract_index_ivf(index)


def train(sample: np.ndarray, n: int, *, m: int = 32, nlist: int | None = None, seed: int = 0):
    """An empty index for ``n`` vectors, its transforms, quantizer and codes trained on
    ``sample`` (rows of the same distribution; at least ``39 * nlist`` of them)."""
    sample = np.ascontiguousarray(sample, np.float32)
    k = nlist or default_nlist(n)
    k = max(1, min(k, len(sample) // 39))
    index = faiss.index_factory(
        sample.shape[1], factory_string(n, sample.shape[1], m, k), faiss.METRIC_INNER_PRODUCT
    )
    ivf = ivf_of(index)
    ivf.cp.seed = seed
    ivf.cp.niter = 10
    ivf.cp.max_points_per_centroid = max(256, -(-len(sample) // k))  # use the whole sample
    faiss.downcast_index(ivf).pq.cp.niter = PQ_ITERATIONS
    for i in range(index.chain.size()):  # OPQ: fewer, smaller rounds than faiss's default
        opq = faiss.downcast_VectorTransform(index.chain.at(i))
        if isinstance(opq, faiss.OPQMatrix):
            opq.niter, opq.max_train_points = OPQ_ITERATIONS, OPQ_TRAIN_ROWS
            opq.niter_pq_0 = PQ_ITERATIONS
    index.train(sample)
    return index


def fill(
    index: faiss.Index,
    chunks: Iterable[np.ndarray],
    *,
    workers: int = 1,
    on_chunk: Callable[[np.ndarray], None] | None = None,
) -> faiss.Index:
    """Add ``chunks`` (in order) to the trained ``index``; returns it. With ``workers > 1``
    each chunk fills a clone of the empty index (``workers`` at once) and the shards are
    merged into ``index`` in input order; with one, chunks are added in place (the same
    result). ``on_chunk`` sees every chunk first, in order (e.g. :meth:`TopK.update`)."""

    def shard(chunk: np.ndarray) -> faiss.Index:
        part = faiss.clone_index(empty)
        part.add(chunk)
        return part

    def merge(part: faiss.Index) -> None:
        ivf_of(index).merge_from(ivf_of(part), index.ntotal)
        index.ntotal = ivf_of(index).ntotal

    if workers <= 1:
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, np.float32)
            if on_chunk is not None:
                on_chunk(chunk)
            index.add(chunk)
        return index
    empty = faiss.clone_index(index)  # trained, with nothing in it: each shard's start
    empty.reset()
    with ThreadPoolExecutor(workers) as pool:
        pending = []
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, np.float32)
            if on_chunk is not None:
                on_chunk(chunk)
            pending.append(pool.submit(shard, chunk))
            if len(pending) >= workers:  # bounded: at most `workers` chunks in flight
                merge(pending.pop(0).result())
        for future in pending:
            merge(future.result())
    return index


def rerank(
    store: np.ndarray, queries: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact re-ranking of candidate ``rows`` (``-1``: none) by inner product with the full
    vectors in ``store`` (any row-indexable array: in memory, or a memory map on disk, so
    only the candidates are read). Returns the top ``k`` ``(scores, rows)``."""
    out_s = np.full((len(queries), k), -np.inf, np.float32)
    out_r = np.full((len(queries), k), -1, np.int64)
    for i, (q, cand) in enumerate(zip(queries, rows)):
        cand = np.unique(cand[cand >= 0])  # sorted: sequential reads from a memory map
        if not len(cand):
            continue
        s = np.asarray(store[cand], np.float32) @ q
        top = np.argsort(-s, kind="stable")[:k]
        out_s[i, : len(top)], out_r[i, : len(top)] = s[top], cand[top]
    return out_s, out_r


def search(
    index: faiss.Index, store: np.ndarray | None, queries: np.ndarray, k: int, k_factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """``k`` nearest: ``k * k_factor`` candidates from the codes, re-ranked exactly with
    ``store`` (codes alone when ``store`` is None)."""
    queries = np.ascontiguousarray(queries, np.float32)
    if store is None:
        return index.search(queries, k)
    _, cand = index.search(queries, min(index.ntotal, k * k_factor))
    return rerank(store, queries, cand, k)


def tune_search(
    index: faiss.Index,
    queries: np.ndarray,
    truth: np.ndarray,
    target: float = 0.95,
    k: int = 10,
    store: np.ndarray | None = None,
    k_factor: int = 1,
    max_k_factor: int = 64,
) -> tuple[int, int, float, list[dict]]:
    """:func:`tune_nprobe`, and when more lists no longer help (the codes cap the recall) and
    a ``store`` re-ranks, twice the candidates per result (``k_factor``) and again, up to
    ``max_k_factor``. Returns ``(nprobe, k_factor, recall, the sweep)``: the cheapest setting
    that reaches ``target``, else the best one found (set on the index)."""
    sweep: list[dict] = []
    while True:
        _, recall, part = tune_nprobe(index, queries, truth, target, k, store, k_factor)
        sweep += [{**step, "k_factor": k_factor} for step in part]
        if recall >= target or store is None or k_factor * 2 > max_k_factor:
            break
        k_factor *= 2
    hit = [s for s in sweep if s["recall"] >= target]
    best = hit[0] if hit else max(sweep, key=lambda s: (s["recall"], -s["k_factor"], -s["nprobe"]))
    ivf_of(index).nprobe = best["nprobe"]
    return best["nprobe"], best["k_factor"], best["recall"], sweep


def tune_nprobe(
    index: faiss.Index,
    queries: np.ndarray,
    truth: np.ndarray,
    target: float = 0.95,
    k: int = 10,
    store: np.ndarray | None = None,
    k_factor: int = 1,
) -> tuple[int, float, list[dict]]:
    """The smallest power-of-two ``nprobe`` whose recall@k (re-ranked with ``store`` as
    :func:`search` does) reaches ``target`` (set on the index). Returns ``(nprobe, its
    recall, the sweep)``; when no setting reaches the target, the one with the best recall."""
    ivf = ivf_of(index)
    sweep, nprobe = [], 1
    while True:
        ivf.nprobe = min(nprobe, ivf.nlist)
        _, found = search(index, store, queries, k, k_factor)
        sweep.append({"nprobe": int(ivf.nprobe), "recall": round(recall_at(found, truth), 4)})
        if sweep[-1]["recall"] >= target or ivf.nprobe >= ivf.nlist:
            break
        # the codes cap the recall: stop once doubling nprobe twice no longer helps
        if len(sweep) >= 3 and sweep[-1]["recall"] <= sweep[-3]["recall"]:
            break
        nprobe *= 2
    hit = [s for s in sweep if s["recall"] >= target]
    best = hit[0] if hit else max(sweep, key=lambda s: (s["recall"], -s["nprobe"]))
    ivf.nprobe = best["nprobe"]
    return best["nprobe"], best["recall"], sweep
