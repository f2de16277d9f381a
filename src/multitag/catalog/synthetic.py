"""A made-up catalogue of any size (no photos, no model), written vectorised, for testing and
measuring the API and the explorer at millions of items.

Items fall in blobs on the map; each blob has its own article type, so tags, topics,
clusters and map positions agree the way a real catalogue's do. Paths point nowhere
(thumbnails answer 404).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from multitag.catalog.store import FORMAT_VERSION, save_catalog

TASKS = (
    ("articleType", 30),
    ("baseColour", 12),
    ("gender", 3),
)
N_BLOBS = 40


def synthetic_items(n: int, dim: int = 16, seed: int = 0) -> tuple[pd.DataFrame, dict, dict]:
    """``(items, arrays, meta parts)`` of ``n`` made-up items with ``dim``-d embeddings."""
    rng = np.random.default_rng(seed)
    blob = rng.integers(0, N_BLOBS, n)
    centres = rng.uniform(-0.8, 0.8, (N_BLOBS, 2))
    xy = np.clip(centres[blob] + rng.normal(0, 0.06, (n, 2)), -1, 1).astype(np.float32)
    emb = rng.normal(0, 1, (N_BLOBS, dim)).astype(np.float32)[blob]
    emb += rng.normal(0, 0.5, (n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tasks, chosen, probs = [], [], []
    for name, k in TASKS:
        classes = [f"{name.lower()}{i}" for i in range(k)]
        best = (blob * 7 + rng.integers(0, 2, n)) % k if name == "articleType" else None
        best = rng.integers(0, k, n) if best is None else best
        p = np.full((n, k), 0.1 / k, np.float32)
        p[np.arange(n), best] += 0.9
        tasks.append({"name": name, "kind": "multiclass", "classes": classes})
        chosen.append((name, np.asarray(classes, dtype=object)[best]))
        probs.append(p)
    items = pd.DataFrame({"id": np.char.add("s", np.arange(n).astype(str)).astype(object)})
    items["path"] = "/nonexistent/synthetic.jpg"
    for name, labels in chosen:
        items[name] = labels
        items[f"{name}_prob"] = np.float32(0.9)
    # one "task:label" per task (row views of one array: no per-row string building)
    flat = np.stack([np.char.add(f"{name}:", labels.astype(str)) for name, labels in chosen], 1)
    items["tags"] = list(flat.astype(object))
    items["imagenet"] = [()] * n
    items["x"], items["y"] = xy[:, 0], xy[:, 1]
    items["topic"] = (blob % 12).astype(np.int32)
    items["topic_weight"] = np.float32(0.5)
    items["cluster"] = (blob % 20).astype(np.int32)
    columns = [f"{t['name']}:{c}" for t in tasks for c in t["classes"]]
    topics = [
        {"id": i, "name": f"topic {i}", "top_tags": [], "size": int((items["topic"] == i).sum())}
        for i in range(12)
    ]
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "multitag-catalog",
        "synthetic": True,
        "model_dir": "",
        "tasks": tasks,
        "tag_columns": columns,
        "embedding": {"source": "synthetic", "dim": dim},
        "topics": {"k": 12, "on": "tags", "method": "nmf", "topics": topics},
        "layout": {"method": "synthetic"},
        "clusters": {"k": 20, "method": "kmeans"},
    }
    arrays = {"embeddings": emb, "tagprobs": np.concatenate(probs, axis=1)}
    fit = {
        "nmf_components": np.abs(rng.normal(0, 1, (12, len(columns)))).astype(np.float32),
        "centroids": rng.normal(0, 1, (20, dim)).astype(np.float32),
    }
    return items, arrays, {"meta": meta, "fit": fit}


def synthetic_catalog(out: str | Path, n: int, dim: int = 16, seed: int = 0) -> Path:
    """Write a published catalogue of ``n`` made-up items to ``out`` (exact index: the
    vectors are few dims; the compressed index is measured by ``multitag.bench.index_scale``)."""
    import faiss

    items, arrays, parts = synthetic_items(n, dim, seed)
    index = faiss.IndexFlatIP(dim)
    index.add(arrays["embeddings"])
    parts["meta"]["index"] = {"kind": "exact", "dim": dim}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_catalog(out, parts["meta"], items, arrays, parts["fit"], index=index)
    return out
