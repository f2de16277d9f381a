"""Large-catalogue benchmark: the compressed index at up to 10 M synthetic 256-d vectors, and
the API's ``/items`` filters and ``/map`` views on a 1 M-item synthetic catalogue.

Index: clustered unit vectors (:func:`mixture`, the distribution of ``bench.index``: a Gaussian
mixture, each cluster in its own low-dimensional subspace) generated chunk by chunk from a seed, so
the full set is never in memory. :meth:`VectorIndex.build_chunks` trains on a sample drawn
from the same mixture, fills the index chunk by chunk and tunes ``nprobe`` on sample rows;
while the chunks stream past, the exact top 10 of held-out queries is kept by a brute-force
scan (:class:`multitag.embedding.compressed.TopK`), so recall@10 is measured against exact
search. Latency: one query at a time on one thread, p50/p99. Memory: peak RSS of the
process and the saved index's size.

    python -m multitag.bench.index_scale --out bench/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from multitag.bench.index import ISOTROPIC, N_CENTERS, RANK, SPREAD
from multitag.bench.provenance import git_commit
from multitag.core.io import write_json, write_text
from multitag.core.progress import bar
from multitag.embedding import compressed
from multitag.embedding.index import VectorIndex

NAME = "index_scale"


def mixture(
    n: int, centers: np.ndarray, bases: np.ndarray, seed: int, spread: float = SPREAD
) -> np.ndarray:
    """``n`` unit vectors from the mixture of :func:`multitag.bench.index.clustered` (same
    distribution), computed cluster by cluster: one small matrix product per cluster instead
    of a gathered (n, rank, dim) basis tensor."""
    rng = np.random.default_rng(seed)
    _, rank, dim = bases.shape
    c = rng.integers(0, len(centers), n)
    z = rng.standard_normal((n, rank), np.float32) * (spread / np.sqrt(rank))
    x = centers[c] + rng.standard_normal((n, dim), np.float32) * (ISOTROPIC / np.sqrt(dim))
    order = np.argsort(c, kind="stable")
    bounds = np.searchsorted(c[order], np.arange(len(centers) + 1))
    for k in range(len(centers)):
        rows = order[bounds[k] : bounds[k + 1]]
        if len(rows):
            x[rows] += z[rows] @ bases[k]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _latency(index: VectorIndex, queries: np.ndarray, k: int = 10) -> tuple[float, float]:
    """p50 / p99 ms of one query at a time on one thread (codes + exact re-ranking)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        index.search(q[None, :], k)
        times.append(time.perf_counter() - t0)
    faiss.omp_set_num_threads(threads)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def index_case(
    n: int,
    dim: int,
    n_queries: int,
    chunk: int,
    train: int,
    nlist: int | None,
    store_dir: Path | None = None,
    seed: int = 0,
) -> dict:
    """Build the compressed index of ``n`` generated vectors and measure it."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((N_CENTERS, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    bases = rng.standard_normal((N_CENTERS, RANK, dim)).astype(np.float32) / np.sqrt(dim)
    queries = mixture(n_queries, centers, bases, seed + 2, SPREAD)
    truth = compressed.TopK(queries)
    t0 = time.perf_counter()
    sample = mixture(train, centers, bases, seed + 3, SPREAD)

    def chunks():
        with bar(f"index {n:,}", n) as pbar:
            for i, start in enumerate(range(0, n, chunk)):
                x = mixture(min(chunk, n - start), centers, bases, seed + 10 + i, SPREAD)
                truth.update(x)  # the exact top 10 by a brute-force scan, chunk by chunk
                yield x
                pbar.advance(len(x))

    with tempfile.TemporaryDirectory(dir=store_dir) as tmp:
        vi = VectorIndex("ivfpq", nlist=nlist, train_size=train, seed=seed)
        vi.build_chunks(chunks(), n, sample, store=Path(tmp) / "vectors.npy")
        del sample
        build_s = time.perf_counter() - t0
        faiss.write_index(vi.index_, str(Path(tmp) / "index.faiss"))
        index_mb = (Path(tmp) / "index.faiss").stat().st_size / 2**20
        store_mb = (Path(tmp) / "vectors.npy").stat().st_size / 2**20
        _, found = vi.search(queries, 10)
        _, coded = vi.index_.search(queries, 10)  # the codes alone, no re-ranking
        p50, p99 = _latency(vi, queries)
    return {
        "items": n,
        "dim": dim,
        "factory": vi.meta["factory"],
        "nlist": vi.meta["nlist"],
        "nprobe": vi.meta["nprobe"],
        "k_factor": vi.meta["k_factor"],
        "train_rows": train,
        "tuned_recall@10": vi.meta["tuned_recall@10"],
        "nprobe_sweep": vi.meta["nprobe_sweep"],
        "recall@10": round(compressed.recall_at(found, truth.rows), 4),
        "codes_only_recall@10": round(compressed.recall_at(coded, truth.rows), 4),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "build_seconds": round(build_s, 1),
        "index_mb": round(index_mb, 1),
        "store_mb_on_disk": round(store_mb, 1),
        "float_vectors_mb": round(n * dim * 4 / 2**20, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
    }


def api_case(n: int, repeats: int = 20) -> dict:
    """``/items`` filters and ``/map`` views on a synthetic catalogue of ``n`` items."""
    from fastapi.testclient import TestClient

    from multitag.catalog.synthetic import synthetic_catalog
    from multitag.serve.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cat = synthetic_catalog(Path(tmp) / "catalog", n)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        app = create_app(cat)
        load_s = time.perf_counter() - t0
        requests = {
            "/items (no filter)": ("/items", {}),
            "/items tag": ("/items", {"tag": "gender:gender1"}),
            "/items two tags + topic": (
                "/items",
                {"tag": "articleType:articletype3,gender:gender1", "topic": 3},
            ),
            "/items cluster, page 10": ("/items", {"cluster": 5, "page": 10}),
            "/map whole map": ("/map", {}),
            "/map zoomed view": ("/map", {"x0": 0.0, "x1": 0.2, "y0": 0.0, "y1": 0.2}),
            "/map tag filter": ("/map", {"tag": "gender:gender2"}),
        }
        out = {"items": n, "write_seconds": round(write_s, 1), "load_seconds": round(load_s, 1)}
        rows = []
        with TestClient(app, base_url="http://localhost") as client:
            for name, (path, params) in requests.items():
                times, body = [], None
                client.get(path, params=params)  # warm-up: lazily built columns and caches
                for _ in range(repeats):
                    t = time.perf_counter()
                    res = client.get(path, params=params)
                    times.append(time.perf_counter() - t)
                    body = res.json()
                ms = np.array(times) * 1000
                rows.append(
                    {
                        "request": name,
                        "total": body["total"],
                        "returned": len(body["items"] if "items" in body else body["ids"]),
                        "p50_ms": round(float(np.percentile(ms, 50)), 1),
                        "p99_ms": round(float(np.percentile(ms, 99)), 1),
                    }
                )
        out["requests"] = rows
        out["scan_vs_columns"] = _scan_vs_columns(app.state.service, "gender:gender1")
        out["peak_rss_mb"] = round(_rss_mb(), 1)
    return out


def _scan_vs_columns(service, tag: str, repeats: int = 3) -> dict:
    """One tag filter, the way the server did it before (a Python scan over per-row tag
    sets) and on columns, in the same process."""
    t0 = time.perf_counter()
    row_tags = [set(map(str, t)) for t in service.items["tags"]]
    sets_s = time.perf_counter() - t0
    scan, cols = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        old = np.array([tag in s for s in row_tags])
        scan.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        new = service.columns.mask([tag])
        cols.append(time.perf_counter() - t0)
    if not np.array_equal(old, new):
        raise AssertionError("the columnar filter disagrees with the row scan")
    scan_ms, cols_ms = float(np.median(scan)) * 1000, float(np.median(cols)) * 1000
    return {
        "tag": tag,
        "row_sets_build_s": round(sets_s, 1),
        "scan_ms": round(scan_ms, 1),
        "columns_ms": round(cols_ms, 2),
        "speed-up": round(scan_ms / max(cols_ms, 1e-6), 1),
    }


def to_markdown(result: dict) -> str:
    lines = [
        "# Large catalogues: compressed index and API at scale",
        "",
        f"Machine: {result['machine']}; the host was shared with other jobs (load average "
        f"about {result['load']:.0f} on {result['cpus']} cores), so times are slower than an "
        "idle machine and only ratios within one run compare.",
        "",
        "## Compressed similar-items index",
        "",
        f"Synthetic clustered unit vectors ({N_CENTERS} clusters, each spread {SPREAD} in its own "
        f"{RANK}-d subspace), generated chunk by chunk (never all in memory); "
        f"{result.get('queries', 0)} held-out queries; recall@10 = overlap of the top 10 with exact "
        "search (a chunked brute-force scan); latency = one query at a time on one thread; "
        "build = sample generation + training + filling + nprobe tuning; peak RSS is the whole "
        "process's so far. Command: "
        f"`{result.get('index_command', '')}`"
        + (f" ({result['run']})" if result.get("run") else "")
        + ".",
        "",
        "| items | factory | nprobe | k_factor (candidates / result) | recall@10 | codes-only recall@10 "
        "| p50 ms | p99 ms | build s | index MB | float16 store MB (disk) | float vectors MB "
        "| peak RSS MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["index"]:
        lines.append(
            f"| {c['items']:,} | `{c['factory']}` | {c['nprobe']} | {c.get('k_factor', '')} | "
            f"{c['recall@10']:.3f} | "
            f"{c.get('codes_only_recall@10', float('nan')):.3f} | "
            f"{c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {c['build_seconds']:.0f} | "
            f"{c['index_mb']:.1f} | {c.get('store_mb_on_disk', 0):.0f} | "
            f"{c['float_vectors_mb']:.0f} | {c['peak_rss_mb']:.0f} |"
        )
    if result.get("not_finished"):
        lines += ["", f"Not finished: {result['not_finished']}"]
    lines += [
        "",
        "Tuning (recall@10 on 200 sample rows at nprobe x candidates per result; the cheapest "
        "setting meeting 0.95 is kept; when more lists stop helping, the candidates double):",
        "",
    ]
    for c in result["index"]:
        sweep = ", ".join(
            f"{s['nprobe']} x {s.get('k_factor', '?')}: {s['recall']:.3f}"
            for s in c["nprobe_sweep"]
        )
        lines.append(f"- {c['items']:,}: {sweep}")
    if result.get("api"):
        a = result["api"]
        lines += [
            "",
            f"## API on a {a['items']:,}-item synthetic catalogue",
            "",
            f"Written in {a['write_seconds']} s, loaded by the server in {a['load_seconds']} s; "
            f"peak RSS {a['peak_rss_mb']:.0f} MB. Command: `{a.get('command', '')}`. "
            "Each request once to warm up, then 20 times through the ASGI test client (JSON "
            "encoding included).",
            "",
            "| request | matching | returned | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in a["requests"]:
            lines.append(
                f"| {r['request']} | {r['total']:,} | {r['returned']:,} | {r['p50_ms']} | "
                f"{r['p99_ms']} |"
            )
        sc = a.get("scan_vs_columns")
        if sc:
            lines += [
                "",
                f"The filter alone (`{sc['tag']}`, median of 3, same process): the former "
                f"Python scan over per-row tag sets {sc['scan_ms']} ms (after "
                f"{sc['row_sets_build_s']} s building the sets at start-up), the columnar "
                f"inverted index {sc['columns_ms']} ms: {sc['speed-up']}x. What remains of "
                "a request's time is the page's rows and JSON.",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--train", type=int, default=200_000, help="training sample rows")
    parser.add_argument("--nlist", type=int, default=None, help="inverted lists (default 4√N)")
    parser.add_argument("--store-dir", type=Path, help="where the float16 store goes (temp)")
    parser.add_argument("--api-items", type=int, default=1_000_000, help="0: skip the API")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{NAME}.json"
    # the index and the API may be measured by separate runs (separate peak RSS): each run
    # replaces only its own section of the file
    result = json.loads(path.read_text()) if path.is_file() else {"index": [], "api": None}
    command = "python -m multitag.bench.index_scale " + " ".join(argv or [])
    result.update(
        machine=f"{platform.processor() or platform.machine()}, "
        f"{faiss.omp_get_max_threads()} threads, faiss {faiss.__version__}",
        cpus=os.cpu_count(),
    )

    def save() -> None:  # after every case: a long run killed midway keeps what it measured
        result["load"] = max(result.get("load", 0.0), os.getloadavg()[0])
        write_json(path, result)
        write_text(args.out / f"{NAME}.md", to_markdown(result))

    if args.api_items:
        print(f"API on {args.api_items:,} synthetic items ...", flush=True)
        result["api"] = {**api_case(args.api_items), "command": command}
        save()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if sizes:
        result.update(
            index=[],
            index_command=command,
            queries=args.queries,
            run=f"commit {git_commit()}, {time.strftime('%Y-%m-%d')}",
        )
    for n in sizes:
        print(f"compressed index of {n:,} vectors ...", flush=True)
        case = index_case(
            n, args.dim, args.queries, args.chunk, args.train, args.nlist, args.store_dir
        )
        result["index"].append(case)
        print(f"  {case}", flush=True)
        save()
    print(f"wrote {args.out / f'{NAME}.json'} and {args.out / f'{NAME}.md'}")
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
