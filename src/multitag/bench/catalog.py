"""Catalogue benchmark: build speed vs plain tagging, explorer first paint and hover latency
with 35k points (headless chromium), and ``/similar`` latency under bounded concurrent load.

``python -m multitag.bench.catalog --out bench/`` writes ``bench/catalog.json`` and
``bench/catalog.md``. Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from multitag.core.io import write_json, write_text

DATA = Path(os.environ.get("MULTITAG_FASHION", "../shared/datasets/fashion-products"))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def quick_model(frame: pd.DataFrame, out: Path) -> Path:
    """A small real tagger (12 common article types) for the catalogue and service benchmarks."""
    from multitag import MultiTaskTagger
    from multitag.tagger.config import FeatureConfig, LabelConfig, RuntimeConfig, TrainConfig

    common = frame["articleType"].value_counts().index[:12]
    sample = frame[frame["articleType"].isin(common)].groupby("articleType").head(60)
    tagger = MultiTaskTagger(
        ["gender", "masterCategory", "articleType", "baseColour", "season", "usage"],
        features=FeatureConfig(image_size=128),
        labels=LabelConfig(min_count=3),
        training=TrainConfig(epochs=15),
        runtime=RuntimeConfig(progress=False),
    )
    return tagger.fit(sample.reset_index(drop=True)).save(out)


def bench_build(model_dir: Path, frame: pd.DataFrame, work: Path) -> dict:
    """Plain tagging and a full catalogue build over the same images, in the same run."""
    from multitag.catalog import build_catalog
    from multitag.tagger.estimator import MultiTaskTagger

    paths = frame["path"].tolist()
    tagger = MultiTaskTagger.load(model_dir)
    tagger.set_params(runtime__progress=False)
    tagger.predict_proba(paths[:64])  # warm-up
    t0 = time.perf_counter()
    tagger.predict_proba(paths)
    tag_s = time.perf_counter() - t0
    manifest = work / "items.csv"
    frame[["id", "path"]].to_csv(manifest, index=False)
    t0 = time.perf_counter()
    meta = build_catalog(model_dir, [manifest], work / "catalog", progress=False)
    build_s = time.perf_counter() - t0
    n = len(paths)
    return {
        "images": n,
        "image_size": tagger.net_.encoder.preprocessing.image_size,
        "plain_tagging_images_per_s": round(n / tag_s, 1),
        "catalog_build_images_per_s": round(n / build_s, 1),
        "catalog_tag_pass_images_per_s": round(n / meta["last_build"]["tag_seconds"], 1),
        "catalog_build_seconds": round(build_s, 1),
        "global_steps_seconds": round(build_s - meta["last_build"]["tag_seconds"], 1),
        "note": "build = one pass (tags + ImageNet + features) + NMF + UMAP (incl. numba JIT on "
        "a cold process) + k-means + FAISS",
    }


def synthetic_catalog(out: Path, image_paths: list[str], n: int = 35_000, seed: int = 0) -> Path:
    """A catalogue of ``n`` points in blobs with made-up tags (thumbnails cycle real images)."""
    from multitag.catalog.build import build_index
    from multitag.catalog.store import save_catalog

    rng = np.random.default_rng(seed)
    tasks = [
        {"name": "articleType", "kind": "multiclass", "classes": [f"type{i}" for i in range(30)]},
        {"name": "baseColour", "kind": "multiclass", "classes": [f"colour{i}" for i in range(12)]},
        {"name": "gender", "kind": "multiclass", "classes": ["Men", "Women", "Unisex"]},
    ]
    blobs = rng.integers(0, 40, n)
    centres = rng.normal(0, 1, (40, 2))
    xy = (centres[blobs] + rng.normal(0, 0.12, (n, 2))).astype(np.float32)
    xy /= np.abs(xy).max()
    emb = rng.normal(0, 1, (40, 64))[blobs] + rng.normal(0, 0.5, (n, 64))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    items = pd.DataFrame({"id": [f"s{i}" for i in range(n)]})
    items["path"] = [image_paths[i % len(image_paths)] for i in range(n)]
    probs, tags = [], [[] for _ in range(n)]
    for t in tasks:
        k = len(t["classes"])
        p = rng.dirichlet(np.ones(k) * 0.3, n).astype(np.float32)
        best = (
            (blobs * 7 + rng.integers(0, 2, n)) % k if t["name"] == "articleType" else p.argmax(1)
        )
        p[np.arange(n), best] += 1
        p /= p.sum(1, keepdims=True)
        probs.append(p)
        items[t["name"]] = [t["classes"][j] for j in best]
        items[f"{t['name']}_prob"] = p[np.arange(n), best]
        for row, j in zip(tags, best):
            row.append(f"{t['name']}:{t['classes'][j]}")
    items["tags"] = tags
    items["imagenet"] = [["jersey", "sweatshirt"]] * n
    items["x"], items["y"] = xy[:, 0], xy[:, 1]
    items["topic"] = (blobs % 12).astype(np.int32)
    items["topic_weight"] = 0.5
    items["cluster"] = (blobs % 20).astype(np.int32)
    tagprobs = np.concatenate(probs, axis=1)
    columns = [f"{t['name']}:{c}" for t in tasks for c in t["classes"]]
    topics = [
        {"id": i, "name": f"topic {i}", "top_tags": [], "size": int((items["topic"] == i).sum())}
        for i in range(12)
    ]
    meta = {
        "kind": "multitag-catalog",
        "synthetic": True,
        "model_dir": "",
        "tasks": tasks,
        "tag_columns": columns,
        "embedding": {"source": "synthetic", "dim": 64},
        "topics": {"k": 12, "on": "tags", "method": "nmf", "topics": topics},
        "layout": {"method": "synthetic"},
        "clusters": {"k": 20, "method": "kmeans"},
    }
    fit = {
        "nmf_components": np.abs(rng.normal(0, 1, (12, len(columns)))).astype(np.float32),
        "centroids": rng.normal(0, 1, (20, 64)).astype(np.float32),
    }
    save_catalog(
        out, meta, items, {"embeddings": emb, "tagprobs": tagprobs}, fit, index=build_index(emb)[0]
    )
    return out


def bench_explorer(url: str, samples: int = 20) -> dict:
    """First paint and hover latency of the explorer page in headless chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        t0 = time.perf_counter()
        page.goto(url + "/")
        page.wait_for_function("window.__ready === true", timeout=120_000)
        wall = time.perf_counter() - t0
        first_paint = page.evaluate("window.__firstPaintMs")
        since_nav = page.evaluate("performance.now()")
        n = page.evaluate("window.explorer.state.map.ids.length")
        page.evaluate(
            "document.getElementById('map').addEventListener('mousemove', "
            "() => { window.__move = performance.now(); }, true)"
        )
        rng = np.random.default_rng(1)
        lat = []
        for row in rng.choice(n, samples, replace=False):
            xy = page.evaluate(f"window.explorer.pointPixel({int(row)})")
            page.mouse.move(5, 5)
            page.wait_for_timeout(60)
            page.evaluate("window.__lastHover = null")
            page.mouse.move(xy["x"], xy["y"])
            try:
                page.wait_for_function("window.__lastHover !== null", timeout=5_000)
            except Exception:  # noqa: BLE001 - a miss (point under another) is not a latency
                continue
            lat.append(page.evaluate("window.__lastHover.t - window.__move"))
        browser.close()
    return {
        "points": n,
        "first_paint_ms_in_page": round(first_paint, 1),
        "ready_ms_since_navigation": round(since_nav, 1),
        "ready_wall_s_from_goto": round(wall, 2),
        "hover_samples": len(lat),
        "hover_ms_p50": round(statistics.median(lat), 1) if lat else None,
        "hover_ms_max": round(max(lat), 1) if lat else None,
        "note": "hover = last mousemove on the map -> explorer hover handler ran (thumbnail "
        "requested); headless chromium, software WebGL, 2 CPU cores",
    }


async def _load(url: str, make_request, total: int, concurrency: int) -> dict:
    import httpx

    lat: list[float] = []
    errors = 0
    queue = list(range(total))

    async def worker(client):
        nonlocal errors
        while queue:
            i = queue.pop()
            t0 = time.perf_counter()
            resp = await make_request(client, i)
            lat.append((time.perf_counter() - t0) * 1000)
            errors += resp.status_code != 200

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    q = np.percentile(lat, [50, 99])
    return {
        "requests": total,
        "concurrency": concurrency,
        "errors": errors,
        "p50_ms": round(float(q[0]), 1),
        "p99_ms": round(float(q[1]), 1),
        "throughput_rps": round(total / wall, 1),
    }


def bench_similar_id(url: str, ids: list[str], total=400, concurrency=8) -> dict:
    async def req(client, i):
        return await client.post("/similar", data={"id": ids[(i * 7919) % len(ids)], "k": 12})

    return asyncio.run(_load(url, req, total, concurrency))


def bench_similar_upload(url: str, paths: list[str], total=40, concurrency=2) -> dict:
    blobs = [Path(p).read_bytes() for p in paths[:20]]

    async def req(client, i):
        files = {"file": ("q.jpg", blobs[i % len(blobs)], "image/jpeg")}
        return await client.post("/similar", files=files, data={"k": 12})

    return asyncio.run(_load(url, req, total, concurrency))


def _markdown(r: dict) -> str:
    b, e, s, u = r["build"], r["explorer"], r["similar_by_id"], r["similar_upload"]
    return f"""# Catalogue benchmark

Machine: {r["machine"]}. Measured by `python -m multitag.bench.catalog` ({r["date"]}).

## Build vs plain tagging ({b["images"]} fashion-products images, {b["image_size"]} px)

| | images/s |
| --- | ---: |
| plain tagging (`predict_proba`) | {b["plain_tagging_images_per_s"]} |
| catalogue tag pass (tags + ImageNet + features, chunked, parts written; incl. loading the model and its ~3 s OpenVINO conversion, cold feature cache) | {b["catalog_tag_pass_images_per_s"]} |
| whole catalogue build (+ NMF, UMAP, k-means, FAISS) | {b["catalog_build_images_per_s"]} |

Global steps took {b["global_steps_seconds"]} s of {b["catalog_build_seconds"]} s ({b["note"]}).

## Explorer with {e["points"]} points (synthetic catalogue, headless chromium)

| | ms |
| --- | ---: |
| first paint (script start -> map drawn, incl. fetching /map) | {e["first_paint_ms_in_page"]} |
| ready since navigation start | {e["ready_ms_since_navigation"]} |
| hover latency p50 ({e["hover_samples"]} points) | {e["hover_ms_p50"]} |
| hover latency max | {e["hover_ms_max"]} |

{e["note"]}.

## `/similar` latency on loopback (uvicorn, httpx)

| query | catalogue | requests | concurrency | p50 ms | p99 ms | req/s | errors |
| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |
| by id | {e["points"]} synthetic | {s["requests"]} | {s["concurrency"]} | {s["p50_ms"]} | {s["p99_ms"]} | {s["throughput_rps"]} | {s["errors"]} |
| upload (tag + embed + search) | {b["images"]} real | {u["requests"]} | {u["concurrency"]} | {u["p50_ms"]} | {u["p99_ms"]} | {u["throughput_rps"]} | {u["errors"]} |
"""


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model", type=Path, default=None, help="model dir (default: train one)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--points", type=int, default=35_000)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from multitag.catalog.store import load_catalog
    from multitag.data.manifest import load_manifest
    from multitag.serve.app import create_app
    from multitag.serve.background import BackgroundServer

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    frame = load_manifest(data / "styles.csv", data / "images")
    work = Path(tempfile.mkdtemp(prefix="multitag-bench-catalog-"))
    # a cold feature cache: the catalogue build must not reuse features of earlier runs
    os.environ["MULTITAG_CACHE"] = str(work / "cache")
    try:
        model = args.model or quick_model(frame, work / "model")
        sample = frame.sample(n=min(args.images, len(frame)), random_state=0)
        print(f"build: {len(sample)} images ...", flush=True)
        build = bench_build(Path(model), sample.reset_index(drop=True), work)
        print(json.dumps(build), flush=True)
        synth = synthetic_catalog(work / "synthetic", sample["path"].tolist(), args.points)
        with BackgroundServer(create_app(synth)) as url:
            print("explorer ...", flush=True)
            explorer = bench_explorer(url)
            print(json.dumps(explorer), flush=True)
            ids = load_catalog(synth).items["id"].tolist()
            by_id = bench_similar_id(url, ids)
            print(json.dumps(by_id), flush=True)
        with BackgroundServer(create_app(work / "catalog", model)) as url:
            upload = bench_similar_upload(url, sample["path"].tolist())
            print(json.dumps(upload), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "build": build,
        "explorer": explorer,
        "similar_by_id": by_id,
        "similar_upload": upload,
    }
    write_json(args.out / "catalog.json", result)
    write_text(args.out / "catalog.md", _markdown(result))
    print(f"wrote {args.out / 'catalog.json'} and {args.out / 'catalog.md'}")
    return result


if __name__ == "__main__":
    main()
