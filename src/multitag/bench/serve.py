"""Service load benchmark: ``GET /items`` latency alone and while 4 large uploads are in flight,
a mixed load (errors, deliberate 503s), and the server's RSS before and after.

``python -m multitag.bench.serve --out bench/`` writes ``bench/serve.json`` and
``bench/serve.md``. The server is ``multitag serve`` in its own process on 127.0.0.1 (so the
load generator does not share its GIL); every phase is bounded in count and in time. With
``--baseline-src DIR`` the same phases also run against the code in ``DIR`` (e.g. the main
checkout's ``src``) for a before/after table on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from multitag.core.io import write_json, write_text

DATA = Path(os.environ.get("MULTITAG_FASHION", "../shared/datasets/fashion-products"))
HOST = "127.0.0.1"
PHASE_SECONDS = 180  # no request of a phase starts later than this
UPLOAD_SECONDS = 60  # the large-upload throughput phase
LARGE_SIZE = (4000, 5333)  # 21.3 Mpx: under the default 25 Mpx budget, ~0.5 s to decode
N_LARGE = 4


def _percentiles(lat: list[float]) -> dict:
    if not lat:
        return {"n": 0, "p50_ms": None, "p99_ms": None}
    q = np.percentile(lat, [50, 99])
    return {"n": len(lat), "p50_ms": round(float(q[0]), 1), "p99_ms": round(float(q[1]), 1)}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Server:
    """``multitag serve`` in a child process on a free loopback port."""

    def __init__(self, catalog: Path, model: Path, src: Path | None = None) -> None:
        from multitag.serve.background import free_port

        self.port = free_port(HOST)
        env = {**os.environ, "MULTITAG_LOG": "warning"}
        if src is not None:
            env["PYTHONPATH"] = str(src)
        cmd = [
            sys.executable,
            "-m",
            "multitag.cli.main",
            "serve",
            str(catalog),
            "--model",
            str(model),
        ]
        cmd += ["--host", HOST, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
        self.url = f"http://{HOST}:{self.port}"

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"multitag serve exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/topics", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError("multitag serve did not start in 180 s")

    def rss_mb(self) -> float:
        return _rss_mb(self.proc.pid)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _items_load(client, n: int, concurrency: int, pages: int, deadline: float) -> list:
    """Up to ``n`` GET /items, ``concurrency`` at a time; none is started after ``deadline``."""
    lat: list[float] = []
    todo = list(range(n))

    async def worker():
        while todo and time.monotonic() < deadline:
            i = todo.pop()
            t0 = time.perf_counter()
            resp = await client.get("/items", params={"page": 1 + i % pages, "page_size": 50})
            resp.raise_for_status()
            lat.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat


async def _keep_uploading(client, blob: bytes, stop: asyncio.Event, lat: list, statuses: dict):
    """Upload ``blob`` to ``/tag`` again and again until ``stop`` is set."""
    import httpx

    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            resp = await client.post("/tag", files={"file": ("large.png", blob, "image/png")})
            status = str(resp.status_code)
        except httpx.HTTPError as err:
            status = type(err).__name__
        statuses[status] = statuses.get(status, 0) + 1
        lat.append((time.perf_counter() - t0) * 1000)


async def _with_uploads(url: str, large: list[bytes], work) -> tuple[object, dict]:
    """Run ``work(client)`` while one client per ``large`` blob keeps an upload in flight;
    returns ``(work's result, upload stats)``."""
    import httpx

    uploads: list[float] = []
    statuses: dict[str, int] = {}
    stop = asyncio.Event()
    start = time.perf_counter()
    timeout = httpx.Timeout(PHASE_SECONDS, connect=30)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        tasks = [
            asyncio.create_task(_keep_uploading(client, b, stop, uploads, statuses)) for b in large
        ]
        if tasks:
            await asyncio.sleep(1.0)  # let the uploads arrive and start decoding
        result = await work(client)
        stop.set()
        _, late = await asyncio.wait(tasks, timeout=PHASE_SECONDS) if tasks else ((), ())
        for task in late:
            task.cancel()
    wall = time.perf_counter() - start
    per_minute = round(60 * len(uploads) / wall, 1)
    return result, {**_percentiles(uploads), "per_minute": per_minute, "status": statuses}


async def _items_phase(url: str, n: int, pages: int, large: list[bytes] | None) -> dict:
    """``n`` GET /items (4 at a time, within ``PHASE_SECONDS``); with ``large``, 4 clients keep
    one large upload each in flight for the whole phase."""

    async def items(client):
        return await _items_load(client, n, 4, pages, time.monotonic() + PHASE_SECONDS)

    lat, uploads = await _with_uploads(url, large or [], items)
    out = {"items": {**_percentiles(lat), "unfinished": n - len(lat)}}
    if large:
        out["uploads"] = uploads
    return out


async def _uploads_alone(url: str, large: list[bytes], seconds: float) -> dict:
    """Large-upload throughput with nothing else going on: 4 clients for ``seconds``."""
    _, uploads = await _with_uploads(url, large, lambda client: asyncio.sleep(seconds))
    return uploads


async def _mixed_phase(url: str, ids: list[str], small: list[bytes], n: int, clients: int) -> dict:
    """``n`` requests over ``clients`` concurrent clients, a fixed mix of every route."""
    import httpx

    def request(i: int):
        item = ids[(i * 7919) % len(ids)]
        kind = i % 10
        if kind in (0, 1, 2):
            return "items", ("GET", "/items", {"params": {"page": 1 + i % 5}})
        if kind in (3, 4):
            return "item", ("GET", f"/items/{item}", {})
        if kind == 5:
            return "topics", ("GET", "/topics", {})
        if kind == 6:
            return "thumb", ("GET", f"/thumbs/{item}", {})
        if kind == 7:
            return "similar_id", ("POST", "/similar", {"data": {"id": item, "k": 12}})
        blob = small[i % len(small)]
        if kind == 8:
            return "tag", ("POST", "/tag", {"files": {"file": ("q.jpg", blob, "image/jpeg")}})
        files = [
            ("files", (f"{j}.jpg", small[(i + j) % len(small)], "image/jpeg")) for j in range(3)
        ]
        return "recommend", ("POST", "/recommend", {"files": files, "data": {"k": 6}})

    lat: dict[str, list[float]] = {}
    errors, busy = 0, 0
    todo = list(range(n))

    deadline = time.monotonic() + PHASE_SECONDS

    async def worker(client):
        nonlocal errors, busy
        while todo and time.monotonic() < deadline:
            kind, (method, path, kw) = request(todo.pop())
            t0 = time.perf_counter()
            try:
                resp = await client.request(method, path, **kw)
            except httpx.HTTPError:
                errors += 1
                continue
            if resp.status_code == 503 and "retry-after" in resp.headers:
                busy += 1
            elif resp.status_code != 200:
                errors += 1
            else:
                lat.setdefault(kind, []).append((time.perf_counter() - t0) * 1000)

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=PHASE_SECONDS) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    wall = time.perf_counter() - start
    every = [x for v in lat.values() for x in v]
    return {
        "requests": n - len(todo),
        "unfinished": len(todo),
        "clients": clients,
        "errors": errors,
        "busy_503": busy,
        "throughput_rps": round((n - len(todo)) / wall, 1),
        "all": _percentiles(every),
        "by_route": {k: _percentiles(v) for k, v in sorted(lat.items())},
    }


def large_uploads(paths: list[str]) -> list[bytes]:
    """4 large PNGs (real photos upscaled to 21 Mpx: PNG has no reduced-size decode)."""
    from PIL import Image

    out = []
    for p in paths[:N_LARGE]:
        buf = io.BytesIO()
        Image.open(p).convert("RGB").resize(LARGE_SIZE, Image.BICUBIC).save(
            buf, format="PNG", compress_level=1
        )
        out.append(buf.getvalue())
    return out


def run_phases(
    server: Server, ids: list[str], small: list[bytes], large: list[bytes], n: int
) -> dict:
    pages = max(1, len(ids) // 50)
    for _ in range(20):  # warm-up: thumbnails, first requests
        asyncio.run(_items_phase(server.url, 4, pages, None))
    rss = {"start": server.rss_mb()}
    alone = asyncio.run(_items_phase(server.url, n, pages, None))
    loaded = asyncio.run(_items_phase(server.url, n, pages, large))
    rss["after uploads"] = server.rss_mb()
    mixed = asyncio.run(_mixed_phase(server.url, ids, small, 2 * n, 8))
    rss["after mixed"] = server.rss_mb()
    alone_uploads = asyncio.run(_uploads_alone(server.url, large, UPLOAD_SECONDS))
    # the same two phases again: a leak grows RSS again, an allocator high-water mark does not
    asyncio.run(_items_phase(server.url, n, pages, large))
    asyncio.run(_mixed_phase(server.url, ids, small, 2 * n, 8))
    rss["after a second round"] = server.rss_mb()
    return {
        "items_alone": alone["items"],
        "items_with_uploads": loaded["items"],
        "large_uploads": loaded["uploads"],
        "large_uploads_alone": alone_uploads,
        "mixed": mixed,
        "rss_mb": rss,
    }


def _markdown(r: dict) -> str:
    def p(d: dict, key: str) -> str:
        v = d.get(key)
        return "-" if v is None else f"{v}"

    lines = [
        "# Service under load (`multitag serve`)",
        "",
        f"Machine: {r['machine']}. Measured by `python -m multitag.bench.serve` ({r['date']}); "
        f"server: `multitag serve` in its own process on 127.0.0.1 (defaults: 2 workers, queue 8), "
        f"catalogue of {r['catalogue_items']} real fashion-products images with a real model; "
        f"load from httpx in the benchmark process. 1-minute load average "
        f"{r['load_average_1min']['start']} at the start, {r['load_average_1min']['end']} at "
        "the end (other jobs shared the cores and the servers ran one after the other, so "
        "differences of a few tens of percent between rows can be the machine, not the code).",
        "",
        f"`GET /items` (50 per page): {r['n']} requests, 4 at a time. With uploads: 4 clients "
        f"each keep one {r['large_upload']} PNG upload to `/tag` in flight the whole time.",
        "",
        "| server | GET /items p50 ms alone | p99 alone | p50 with 4 uploads | p99 with 4 uploads "
        "| p99 ratio | not started in time | upload statuses |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, s in r["servers"].items():
        a, w, u = s["items_alone"], s["items_with_uploads"], s["large_uploads"]
        ratio = round(w["p99_ms"] / a["p99_ms"], 2) if a["p99_ms"] else "-"
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(u["status"].items()))
        lines.append(
            f"| {name} | {p(a, 'p50_ms')} | {p(a, 'p99_ms')} | {p(w, 'p50_ms')} | "
            f"{p(w, 'p99_ms')} | {ratio} | {w['unfinished']} | {statuses} |"
        )
    lines += [
        "",
        f"Target: p99 with uploads <= 3x p99 alone. A phase starts no request after "
        f"{PHASE_SECONDS} s; requests left then are counted as not started (their latency is "
        "not in the percentiles, so a server that stalls looks better than it is there).",
        "",
        "## Mixed load",
        "",
        f"{2 * r['n']} requests from 8 concurrent clients: 30% `GET /items`, 20% item detail, "
        "10% each `/topics`, thumbnail, `/similar` by id, `/tag` (small JPEG), `/recommend` "
        "(3 small JPEGs). Errors = any answer but 200, except deliberate `503` + `Retry-After`.",
        "",
        "| server | answered | not started in time | p50 ms | p99 ms | req/s | errors | deliberate 503 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in r["servers"].items():
        m = s["mixed"]
        lines.append(
            f"| {name} | {m['requests']} | {m['unfinished']} | {p(m['all'], 'p50_ms')} | "
            f"{p(m['all'], 'p99_ms')} | {m['throughput_rps']} | {m['errors']} | {m['busy_503']} |"
        )
    lines += [
        "",
        f"## Large uploads alone ({N_LARGE} clients, {UPLOAD_SECONDS} s)",
        "",
        "Each client keeps one large PNG upload to `/tag` in flight; nothing else runs.",
        "",
        "| server | uploads answered | per minute | p50 ms | p99 ms | statuses |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, s in r["servers"].items():
        u = s.get("large_uploads_alone")
        if u:
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(u["status"].items()))
            lines.append(
                f"| {name} | {u['n']} | {u['per_minute']} | {p(u, 'p50_ms')} | "
                f"{p(u, 'p99_ms')} | {statuses} |"
            )
    points = list(next(iter(r["servers"].values()))["rss_mb"])
    lines += [
        "",
        "## Server RSS (MB)",
        "",
        "After warm-up, after the upload phase, after the mixed load, and after both once more "
        "(a leak would grow again in the second round).",
        "",
        "| server | " + " | ".join(points) + " |",
        "| --- |" + " ---: |" * len(points),
    ]
    for name, s in r["servers"].items():
        lines.append(f"| {name} | " + " | ".join(str(s["rss_mb"][k]) for k in points) + " |")
    lines += [
        "",
        "Per route (this branch):",
        "",
        "| route | n | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for route, s in r["servers"]["this branch"]["mixed"]["by_route"].items():
        lines.append(f"| {route} | {s['n']} | {p(s, 'p50_ms')} | {p(s, 'p99_ms')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model", type=Path, default=None, help="model dir (default: train one)")
    parser.add_argument("--items", type=int, default=500, help="catalogue size")
    parser.add_argument("--requests", type=int, default=300, help="GET /items per phase")
    parser.add_argument("--baseline-src", type=Path, default=None, help="also run this src tree")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from multitag.bench.catalog import quick_model
    from multitag.catalog import build_catalog
    from multitag.data.manifest import load_manifest

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    frame = load_manifest(data / "styles.csv", data / "images")
    load_start = round(os.getloadavg()[0], 1)  # the machine may be shared: say how busy
    work = Path(tempfile.mkdtemp(prefix="multitag-bench-serve-"))
    os.environ["MULTITAG_CACHE"] = str(work / "cache")
    try:
        model = args.model or quick_model(frame, work / "model")
        sample = frame.sample(n=min(args.items, len(frame)), random_state=1)
        manifest = work / "items.csv"
        sample.assign(id=sample["id"].astype(str))[["id", "path"]].to_csv(manifest, index=False)
        print(f"catalogue: {len(sample)} images ...", flush=True)
        build_catalog(model, [manifest], work / "catalog", n_topics=8, n_clusters=8, progress=False)
        ids = sample["id"].astype(str).tolist()
        small = [Path(p).read_bytes() for p in sample["path"].iloc[:20]]
        large = large_uploads(sample["path"].tolist())
        servers = {"this branch": None}
        if args.baseline_src is not None:
            servers[f"baseline ({args.baseline_src})"] = args.baseline_src.resolve()
        results = {}
        for name, src in servers.items():
            print(f"server: {name} ...", flush=True)
            with Server(work / "catalog", Path(model), src) as server:
                results[name] = run_phases(server, ids, small, large, args.requests)
            print(json.dumps(results[name]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 1)},
        "catalogue_items": len(ids),
        "n": args.requests,
        "large_upload": f"{LARGE_SIZE[0]}x{LARGE_SIZE[1]} ({len(large[0]) / 1e6:.1f} MB)",
        "servers": results,
    }
    write_json(args.out / "serve.json", result)
    write_text(args.out / "serve.md", _markdown(result))
    print(f"wrote {args.out / 'serve.json'} and {args.out / 'serve.md'}")
    return result


if __name__ == "__main__":
    main()
