"""``VectorIndex``: FAISS inner-product search over L2-normalised vectors + an item table.

Exact (flat) search up to ``exact_max`` items, IVF (or HNSW on request) beyond, and from
``compress_min`` items the compressed IVF-PQ index of :mod:`multitag.embedding.compressed`
(trained on a sample, filled in chunks, ``nprobe`` tuned to ``recall_target``), chosen at
build time. Items (id, path, attribute columns) live in ``items.parquet``; faiss row ``i`` is
item row ``i``, so ``add`` appends to both without a rebuild. ``where`` filters by attribute
with a faiss ``IDSelector`` (falling back to an exact scan of the allowed rows when the
approximate search returns too few).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from multitag.core.io import atomic_path, write_json

INDEX_FILE = "index.faiss"
STORE_FILE = "vectors.npy"  # ivfpq: float16 vectors for exact re-ranking (memory-mapped)
ITEMS_FILE = "items.parquet"
META_FILE = "index.json"
KINDS = ("auto", "exact", "ivf", "hnsw", "ivfpq")


def _as_matrix(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim == 1:
        x = x[None, :]
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"vectors have {x.shape[1]} dims; this index holds {dim}-d vectors")
    return x


def parse_where(where: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``["gender=Women", ...]`` -> ``{"gender": "Women"}`` with a clear error on bad input."""
    if not where:
        return {}
    if isinstance(where, Mapping):
        return {str(k): str(v) for k, v in where.items()}
    out = {}
    for item in where:
        if "=" not in item:
            raise ValueError(f"--where {item!r}: write it as column=value, e.g. gender=Women")
        col, value = item.split("=", 1)
        out[col.strip()] = value.strip()
    return out


class VectorIndex:
    """Nearest-neighbour search by cosine similarity (inner product on unit vectors)."""

    def __init__(
        self,
        kind: str = "auto",
        *,
        exact_max: int = 50_000,
        nlist: int | None = None,
        nprobe: int | None = None,
        hnsw_m: int = 32,
        ef_search: int = 128,
        train_size: int = 100_000,
        compress_min: int = 1_000_000,
        pq_m: int = 32,
        recall_target: float = 0.95,
        k_factor: int = 10,
        workers: int = 1,
        seed: int = 0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        self.kind = kind
        self.exact_max = exact_max
        self.nlist = nlist
        self.nprobe = nprobe
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.train_size = train_size
        self.compress_min = compress_min
        self.pq_m = pq_m
        self.recall_target = recall_target
        self.k_factor = k_factor
        self.workers = workers
        self.seed = seed
        self.meta: dict = {}

    # ----------------------------------------------------------------- building
    def _choose(self, n: int) -> str:
        if self.kind != "auto":
            return self.kind
        if n <= self.exact_max:
            return "exact"
        return "ivf" if n < self.compress_min else "ivfpq"

    def build(self, vectors: np.ndarray, items: pd.DataFrame | None = None) -> VectorIndex:
        """Index ``vectors`` (rows of ``items``: ``id``, ``path``, attributes)."""
        t0 = time.perf_counter()
        x = _as_matrix(vectors)
        n, dim = x.shape
        kind = self._choose(n)
        if kind == "ivfpq":
            chunk = 100_000
            chunks = (x[s : s + chunk] for s in range(0, n, chunk))
            return self.build_chunks(chunks, n, self._sample(x), items, t0, store=x)
        if kind == "exact":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = max(40, self.hnsw_m * 2)
            index.hnsw.efSearch = self.ef_search
        else:
            nlist = self.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(self.seed)
            sample = x[rng.choice(n, min(n, max(self.train_size, 39 * nlist)), replace=False)]
            index.cp.seed = self.seed
            index.cp.niter = 10
            index.train(sample)
            index.nprobe = self.nprobe or max(8, nlist // 50)
            index.make_direct_map()
        index.add(x)
        self.index_ = index
        self.dim_ = dim
        self.kind_ = kind
        self.items_ = self._items(items, n, start=0)
        self.meta = {
            **self.meta,
            "kind": kind,
            "dim": dim,
            "metric": "inner_product on L2-normalised vectors (cosine)",
            "build_seconds": round(time.perf_counter() - t0, 3),
            "exact_max": self.exact_max,
        }
        if kind == "ivf":
            self.meta.update(nlist=index.nlist, nprobe=index.nprobe)
        if kind == "hnsw":
            self.meta.update(hnsw_m=self.hnsw_m, ef_search=self.ef_search)
        return self

    @staticmethod
    def _items(items: pd.DataFrame | None, n: int, start: int) -> pd.DataFrame:
        if items is None:  # row numbers as ids, vectorised (compact string column)
            items = pd.DataFrame({"id": pd.Series(np.arange(start, start + n)).astype(str)})
        if len(items) != n:
            raise ValueError(f"{n} vectors but {len(items)} item rows: they must match")
        items = items.reset_index(drop=True).copy()
        if "id" not in items.columns:
            items.insert(0, "id", [str(i) for i in range(start, start + n)])
        items["id"] = items["id"].astype(str)
        return items

    def _check_compression(self) -> None:
        for name in ("compress_min", "pq_m", "k_factor", "workers", "train_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}={value!r}: use a whole number >= 1")
        if not 0 < self.recall_target <= 1:
            raise ValueError(
                f"recall_target={self.recall_target!r}: use a fraction in (0, 1], e.g. 0.95"
            )

    def _sample(self, x: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        size = min(len(x), self.train_size)
        return x[np.sort(rng.choice(len(x), size, replace=False))]

    def build_chunks(
        self,
        chunks,
        n: int,
        sample: np.ndarray,
        items: pd.DataFrame | None = None,
        started: float | None = None,
        store: np.ndarray | str | os.PathLike | None = None,
    ) -> VectorIndex:
        """The compressed (``ivfpq``) index of ``n`` vectors arriving as ``chunks`` (in row
        order, never all in memory), trained on ``sample`` (rows of the same distribution,
        e.g. a random subset); ``nprobe`` is tuned on 200 sample rows to ``recall_target``.

        ``store`` keeps the full vectors for exact re-ranking: None (a float16 copy in
        memory), a path (a float16 ``.npy`` memory map written there, read back row by row
        at search time) or an array already holding the ``n`` rows (e.g. the catalogue's
        embeddings)."""
        from multitag.embedding import compressed

        t0 = time.perf_counter() if started is None else started
        self._check_compression()
        sample = _as_matrix(sample)
        dim = sample.shape[1]
        path, fh, fill_store = None, None, True
        if isinstance(store, (str, os.PathLike)):  # streamed to disk, memory-mapped after
            path, store = Path(store), None
            fh = open(path, "wb")  # noqa: SIM115 (closed below, after the fill)
            header = {"descr": "<f2", "fortran_order": False, "shape": (n, dim)}
            np.lib.format.write_array_header_2_0(fh, header)
        elif store is None:
            store = np.empty((n, dim), np.float16)
        elif store.shape != (n, dim):
            raise ValueError(f"store has shape {store.shape}; it must be ({n}, {dim})")
        else:
            fill_store = False  # the caller's array already holds the rows
        nlist = self.nlist or compressed.default_nlist(n)
        index = compressed.train(sample, n, m=self.pq_m, nlist=nlist, seed=self.seed)
        rng = np.random.default_rng(self.seed + 1)
        tune = compressed.TopK(sample[rng.choice(len(sample), min(200, len(sample)), False)])

        def seen(chunk: np.ndarray) -> None:
            if fill_store and tune.seen + len(chunk) <= n:
                if fh is not None:
                    fh.write(chunk.astype(np.float16).tobytes())
                else:
                    store[tune.seen : tune.seen + len(chunk)] = chunk
            tune.update(chunk)

        try:
            compressed.fill(
                index, (_as_matrix(c, dim) for c in chunks), workers=self.workers, on_chunk=seen
            )
        finally:
            if fh is not None:
                fh.close()
        if index.ntotal != n:
            raise ValueError(f"expected {n} vectors, the chunks held {index.ntotal}")
        if path is not None:
            store = np.load(path, mmap_mode="r")
        k_factor = self.k_factor
        if self.nprobe:
            compressed.ivf_of(index).nprobe = self.nprobe
            found = compressed.search(index, store, tune.queries, 10, k_factor)[1]
            recall = compressed.recall_at(found, tune.rows)
            sweep = [{"nprobe": self.nprobe, "k_factor": k_factor, "recall": round(recall, 4)}]
        else:  # more lists first, then more candidates re-ranked, until the target is met
            _, k_factor, recall, sweep = compressed.tune_search(
                index, tune.queries, tune.rows, self.recall_target, 10, store, k_factor
            )
        self.k_factor_ = k_factor
        self.store_ = store  # vectors() reads the store: no direct map needed
        self.index_, self.dim_, self.kind_ = index, dim, "ivfpq"
        self.items_ = self._items(items, n, start=0)
        ivf = compressed.ivf_of(index)
        self.meta = {
            **self.meta,
            "kind": "ivfpq",
            "dim": dim,
            "metric": "inner_product on L2-normalised vectors (cosine)",
            "build_seconds": round(time.perf_counter() - t0, 3),
            "exact_max": self.exact_max,
            "compress_min": self.compress_min,
            "factory": compressed.factory_string(n, dim, self.pq_m, ivf.nlist),
            "nlist": int(ivf.nlist),
            "nprobe": int(ivf.nprobe),
            "train_rows": len(sample),
            "recall_target": self.recall_target,
            "k_factor": k_factor,
            "tuned_recall@10": round(float(recall), 4),
            "nprobe_sweep": sweep,
        }
        return self

    def add(self, vectors: np.ndarray, items: pd.DataFrame | None = None) -> VectorIndex:
        """Append items without a rebuild (IVF assigns them to the trained lists)."""
        self._check()
        x = _as_matrix(vectors, self.dim_)
        new = self._items(items, len(x), start=len(self.items_))
        self.index_.add(x)
        if getattr(self, "store_", None) is not None:  # ivfpq: the re-ranking rows too
            self.store_ = np.concatenate([self.store_, x.astype(self.store_.dtype)])
        self.items_ = pd.concat([self.items_, new], ignore_index=True)
        return self

    def __len__(self) -> int:
        return self.index_.ntotal if hasattr(self, "index_") else 0

    def _check(self) -> None:
        if not hasattr(self, "index_"):
            raise RuntimeError("this VectorIndex is empty: call build() or load() first")

    # ------------------------------------------------------------------ search
    def vectors(self, rows: Sequence[int] | None = None) -> np.ndarray:
        """Stored vectors of ``rows`` (all when None)."""
        self._check()
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros((0, self.dim_), np.float32)
        if getattr(self, "store_", None) is not None:  # ivfpq: the full vectors, not codes
            return np.asarray(self.store_[rows], np.float32)
        return self.index_.reconstruct_batch(rows)

    def row_of(self, item_id: str) -> int:
        """Row number of ``item_id`` (KeyError naming it when absent)."""
        hits = np.flatnonzero(self.items_["id"].to_numpy() == str(item_id))
        if not len(hits):
            raise KeyError(f"id {item_id!r} is not in this index ({len(self)} items)")
        return int(hits[0])

    def allowed_rows(self, where: Mapping[str, str] | Sequence[str] | None) -> np.ndarray | None:
        """Rows whose attributes match every ``col=value`` (None: no filter)."""
        where = parse_where(where)
        if not where:
            return None
        mask = np.ones(len(self.items_), dtype=bool)
        for col, value in where.items():
            if col not in self.items_.columns:
                attrs = [c for c in self.items_.columns if c not in ("id", "path")]
                raise ValueError(
                    f"--where {col}={value}: no column {col!r}; filterable columns: {attrs}"
                    " (build the index from a manifest to get attribute columns)"
                )
            mask &= self.items_[col].astype(str).to_numpy() == value
        return np.flatnonzero(mask)

    def _params(self, selector):
        if self.kind_ == "ivf":
            return faiss.SearchParametersIVF(sel=selector, nprobe=self.index_.nprobe)
        if self.kind_ == "ivfpq":  # the selector goes to the IVF under the transforms
            ivf = faiss.SearchParametersIVF(
                sel=selector, nprobe=faiss.extract_index_ivf(self.index_).nprobe
            )
            return faiss.SearchParametersPreTransform(index_params=ivf)
        if self.kind_ == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=self.index_.hnsw.efSearch)
        return faiss.SearchParameters(sel=selector)

    def _search(self, q: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        if getattr(self, "store_", None) is None:
            return self.index_.search(q, k, params=params)
        # ivfpq: k_factor candidates per result from the codes, re-ranked exactly
        from multitag.embedding.compressed import rerank

        k_factor = getattr(self, "k_factor_", self.k_factor)
        _, cand = self.index_.search(q, min(len(self), k * k_factor), params=params)
        return rerank(self.store_, q, cand, k)

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        where: Mapping[str, str] | Sequence[str] | None = None,
        exclude_rows: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` of shape (nq, k); missing results are ``-1`` rows, -inf scores.

        ``where`` keeps only matching items; ``exclude_rows`` (e.g. the query item itself)
        are dropped, and k results are still returned when that many exist.
        """
        self._check()
        q = _as_matrix(queries, self.dim_)
        allowed = self.allowed_rows(where)
        extra = len(exclude_rows) if exclude_rows is not None else 0
        kk = min(k + extra, len(self))
        if allowed is None:
            scores, rows = self._search(q, kk)
        elif len(allowed) == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1)
        else:
            kk = min(kk, len(allowed))
            sel = faiss.IDSelectorBatch(allowed.astype(np.int64))
            scores, rows = self._search(q, kk, self._params(sel))
            short = (rows >= 0).sum(1) < kk
            if short.any():  # approximate search missed some: scan the allowed rows exactly
                sub = self.vectors(allowed)
                s = q[short] @ sub.T
                top = np.argsort(-s, axis=1, kind="stable")[:, :kk]
                scores[short] = np.take_along_axis(s, top, 1)
                rows[short] = allowed[top]
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_r = np.full((len(q), k), -1, np.int64)
        drop = set(int(r) for r in exclude_rows) if exclude_rows is not None else set()
        for i in range(len(q)):
            keep = [(s, r) for s, r in zip(scores[i], rows[i]) if r >= 0 and int(r) not in drop]
            for j, (s, r) in enumerate(keep[:k]):
                out_s[i, j], out_r[i, j] = s, r
        return out_s, out_r

    def results(self, scores: np.ndarray, rows: np.ndarray) -> pd.DataFrame:
        """One query's results as a table: rank, id, score, path, attributes."""
        ok = rows >= 0
        table = self.items_.iloc[rows[ok]].reset_index(drop=True)
        table.insert(0, "score", np.round(scores[ok].astype(float), 4))
        table.insert(0, "rank", np.arange(1, ok.sum() + 1))
        cols = ["rank", "id", "score"] + [
            c for c in table.columns if c not in ("rank", "id", "score")
        ]
        return table[cols]

    # ------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``index.faiss``, ``items.parquet`` and ``index.json``."""
        self._check()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / INDEX_FILE) as tmp:
            faiss.write_index(self.index_, str(tmp))
        with atomic_path(directory / ITEMS_FILE) as tmp:
            self.items_.to_parquet(tmp, index=False)
        if getattr(self, "store_", None) is not None:
            with atomic_path(directory / STORE_FILE) as tmp:
                out = np.lib.format.open_memmap(tmp, "w+", np.float16, self.store_.shape)
                for s in range(0, len(out), 100_000):  # chunked: the store may be on disk
                    out[s : s + 100_000] = self.store_[s : s + 100_000]
                out.flush()
                del out
        write_json(directory / META_FILE, {**self.meta, "count": len(self)})
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> VectorIndex:
        """Read an index directory written by :meth:`save`."""
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{directory} is not an index directory (no {META_FILE}); "
                "create one with `multitag index build MODEL_DIR PATH... --out DIR`"
            )
        meta = json.loads(meta_path.read_text())
        self = cls(
            meta["kind"],
            exact_max=meta.get("exact_max", 50_000),
            compress_min=meta.get("compress_min", 1_000_000),
            k_factor=meta.get("k_factor", 10),
        )
        self.k_factor_ = self.k_factor  # as tuned when built (meta)
        if (directory / STORE_FILE).is_file():
            self.store_ = np.load(directory / STORE_FILE, mmap_mode="r")
        self.index_ = faiss.read_index(str(directory / INDEX_FILE))
        if meta["kind"] in ("ivf", "ivfpq"):
            ivf = faiss.extract_index_ivf(self.index_)
            ivf.nprobe = meta.get("nprobe", ivf.nprobe)
            if ivf.direct_map.type == faiss.DirectMap.NoMap and meta["kind"] == "ivf":
                ivf.make_direct_map()  # ivfpq reads vectors from its store instead
        self.items_ = pd.read_parquet(directory / ITEMS_FILE)
        self.items_["id"] = self.items_["id"].astype(str)
        self.dim_ = self.index_.d
        self.kind_ = meta["kind"]
        self.meta = meta
        if len(self.items_) != self.index_.ntotal:
            raise ValueError(
                f"{directory}: {ITEMS_FILE} has {len(self.items_)} rows but {INDEX_FILE} holds "
                f"{self.index_.ntotal} vectors; rebuild the index"
            )
        return self
