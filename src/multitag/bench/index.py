"""Vector-index benchmark: build time, memory, query latency and recall@10 vs exact search.

Synthetic clustered unit vectors (``--dim``, default 128) at 100k and 1M items; the index is
:class:`multitag.embedding.index.VectorIndex` as ``index build`` makes it (IVF beyond
``exact_max``, quantizer trained on a 100k sample). Latency: one query at a time, one thread
(as a request handler would), p50/p95 over ``--queries`` queries. Recall@10: overlap of the
top 10 with exact (flat) search. ``nprobe`` is swept; the smallest reaching recall >= 0.95 is
reported as the setting to use.

    python -m multitag.bench.index --out bench/
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import faiss
import numpy as np

from multitag.core.io import write_json, write_text
from multitag.embedding.index import VectorIndex

NPROBES = (4, 8, 16, 32, 64, 128)
N_CENTERS = 1000  # product "looks" (about the articleType x colour x gender combinations)
RANK = 16  # intrinsic dimension of each cluster
SPREAD = 0.8  # within-cluster spread (norm), relative to unit-norm centres
ISOTROPIC = 0.1  # noise outside the cluster's subspace


def clustered(
    n: int, centers: np.ndarray, bases: np.ndarray, seed: int, spread: float
) -> np.ndarray:
    """``n`` unit vectors around random ``centers``: each cluster varies mostly inside its own
    low-dimensional subspace (``bases``, like real embeddings' low intrinsic dimension), plus
    a little isotropic noise."""
    rng = np.random.default_rng(seed)
    k, rank, dim = bases.shape
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 20_000):
        m = min(20_000, n - s)
        c = rng.integers(0, len(centers), m)
        z = rng.standard_normal((m, rank), np.float32) * (spread / np.sqrt(rank))
        x[s : s + m] = (
            centers[c]
            + np.einsum("nr,nrd->nd", z, bases[c])
            + rng.standard_normal((m, dim), np.float32) * (ISOTROPIC / np.sqrt(dim))
        )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _latency(index: faiss.Index, queries: np.ndarray, k: int = 10) -> tuple[float, float]:
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        index.search(q[None, :], k)
        times.append(time.perf_counter() - t0)
    faiss.omp_set_num_threads(threads)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k found in the returned top-k."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def run_case(
    n: int,
    dim: int,
    n_queries: int,
    seed: int = 0,
    kind: str = "auto",
    rank: int = RANK,
    spread: float = SPREAD,
) -> dict:
    """Build one index of ``n`` synthetic items and measure it."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((N_CENTERS, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    bases = rng.standard_normal((N_CENTERS, rank, dim)).astype(np.float32) / np.sqrt(dim)
    x = clustered(n, centers, bases, seed + 1, spread)
    q = clustered(n_queries, centers, bases, seed + 2, spread)
    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    _, truth = flat.search(q, 10)
    exact_p50, exact_p95 = _latency(flat, q[: min(100, n_queries)])
    del flat
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    vi = VectorIndex(kind).build(x)
    build_s = time.perf_counter() - t0
    index_bytes = len(faiss.serialize_index(vi.index_))
    case = {
        "items": n,
        "dim": dim,
        "kind": vi.kind_,
        "build_seconds": round(build_s, 2),
        "index_mb": round(index_bytes / 2**20, 1),
        "vectors_mb": round(x.nbytes / 2**20, 1),
        "peak_rss_growth_mb": round(max(0.0, _rss_mb() - rss0), 1),
        "exact_p50_ms": round(exact_p50, 3),
        "exact_p95_ms": round(exact_p95, 3),
        "sweep": [],
    }
    settings = NPROBES if vi.kind_ == "ivf" else (None,)
    for nprobe in settings:
        if nprobe is not None:
            if nprobe > vi.index_.nlist:
                break
            vi.index_.nprobe = nprobe
        _, found = vi.index_.search(q, 10)
        p50, p95 = _latency(vi.index_, q)
        row = {"nprobe": nprobe, "recall@10": round(recall_at(found, truth), 4),
               "p50_ms": round(p50, 3), "p95_ms": round(p95, 3)}  # fmt: skip
        case["sweep"].append(row)
        if row["recall@10"] >= 0.99:
            break
    if vi.kind_ == "ivf":
        case["nlist"] = vi.index_.nlist
    good = [r for r in case["sweep"] if r["recall@10"] >= 0.95]
    case["chosen"] = good[0] if good else case["sweep"][-1]
    return case


def to_markdown(result: dict) -> str:
    lines = [
        "# Vector index benchmark",
        "",
        f"Machine: {result['machine']}. Synthetic clustered unit vectors, {result['dim']}-d "
        f"({N_CENTERS} clusters, each spread {result['spread']} in its own "
        f"{result['rank']}-d subspace); "
        f"{result['queries']} held-out queries; latency = one query at a time on one thread; "
        "recall@10 against exact (flat) search. Command: `python -m multitag.bench.index "
        "--out bench/`.",
        "",
        "| items | kind | nlist | nprobe | recall@10 | p50 ms | p95 ms | exact p50 ms | build s "
        "| index MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["cases"]:
        ch = c["chosen"]
        lines.append(
            f"| {c['items']:,} | {c['kind']} | {c.get('nlist', '')} | {ch['nprobe'] or ''} | "
            f"{ch['recall@10']:.3f} | {ch['p50_ms']:.3f} | {ch['p95_ms']:.3f} | "
            f"{c['exact_p50_ms']:.2f} | {c['build_seconds']:.1f} | {c['index_mb']:.0f} |"
        )
    lines += ["", "nprobe sweeps:", ""]
    for c in result["cases"]:
        sweep = ", ".join(
            f"nprobe {r['nprobe']}: recall {r['recall@10']:.3f} p50 {r['p50_ms']:.3f} ms"
            for r in c["sweep"]
        )
        lines.append(f"- {c['items']:,} ({c['kind']}): {sweep}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--kind", default="auto", choices=("auto", "exact", "ivf", "hnsw"))
    parser.add_argument("--rank", type=int, default=RANK, help="intrinsic dim of a cluster")
    parser.add_argument("--spread", type=float, default=SPREAD, help="within-cluster spread")
    args = parser.parse_args(argv)
    threads = faiss.omp_get_max_threads()
    cases = []
    for n in (int(s) for s in args.sizes.split(",")):
        print(f"benchmarking {n:,} items ...", flush=True)
        cases.append(run_case(n, args.dim, args.queries, 0, args.kind, args.rank, args.spread))
        ch = cases[-1]["chosen"]
        print(f"  {cases[-1]['kind']}: recall@10 {ch['recall@10']} p50 {ch['p50_ms']} ms, "
              f"build {cases[-1]['build_seconds']} s", flush=True)  # fmt: skip
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {threads} "
        f"threads, faiss {faiss.__version__}",
        "dim": args.dim,
        "rank": args.rank,
        "spread": args.spread,
        "queries": args.queries,
        "cases": cases,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "index.json", result)
    write_text(args.out / "index.md", to_markdown(result))
    print(f"wrote {args.out / 'index.json'} and {args.out / 'index.md'}")
    return result


if __name__ == "__main__":
    main()
