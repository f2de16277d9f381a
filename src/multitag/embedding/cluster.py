"""k-means clusters of an index, a summary per cluster and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from multitag.core.io import write_text
from multitag.embedding.index import VectorIndex
from multitag.embedding.kmeans import KMeans


def cluster_index(
    index: VectorIndex, k: int, *, seed: int = 0, n_repr: int = 6, top: int = 3
) -> tuple[np.ndarray, list[dict]]:
    """k-means (:class:`~multitag.embedding.kmeans.KMeans`: restarts, spherical on the
    index's normalised vectors) on the indexed vectors.

    Returns ``(assignment per item, summaries)``; each summary has ``cluster``, ``size``,
    ``dominant`` (per attribute column: top values with their share) and ``representatives``
    (the ``n_repr`` items closest to the centroid: id, path, score).
    """
    n = len(index)
    if not 1 <= k <= n:
        raise ValueError(f"-k must be between 1 and the number of items ({n}), not {k}")
    x = index.vectors()
    km = KMeans(k, random_state=seed).fit(x)
    assign = km.labels_
    sims = (x * km.cluster_centers_[assign]).sum(1)  # cosine: rows and centroids are unit
    items = index.items_
    attrs = [c for c in items.columns if c not in ("id", "path")]
    summaries = []
    for c in range(k):
        rows = np.flatnonzero(assign == c)
        if not len(rows):
            continue
        dominant = {}
        for col in attrs:
            counts = items[col].iloc[rows].astype(str).value_counts()
            dominant[col] = [
                {"value": v, "share": round(int(m) / len(rows), 3)}
                for v, m in counts.head(top).items()
            ]
        best = rows[np.argsort(-sims[rows], kind="stable")[:n_repr]]
        reps = [
            {
                "id": items["id"].iloc[r],
                "path": str(items["path"].iloc[r]) if "path" in items else "",
                "score": round(float(sims[r]), 4),
            }  # fmt: skip
            for r in best
        ]
        summaries.append({"cluster": c, "size": int(len(rows)), "dominant": dominant,
                          "representatives": reps})  # fmt: skip
    summaries.sort(key=lambda s: -s["size"])
    return assign, summaries


def thumbnail_uri(path: str | os.PathLike, size: int = 96) -> str | None:
    """A JPEG data URI of a small thumbnail, or None when the file cannot be read."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def cluster_html(summaries: list[dict], title: str = "multitag clusters") -> str:
    """Self-contained HTML (inline CSS, thumbnails as data URIs, no external URLs)."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>",
        "body{font-family:sans-serif;margin:1.5em;color:#222}"
        ".c{border:1px solid #ddd;border-radius:6px;padding:.8em;margin:0 0 1em}"
        ".reps img{height:96px;margin:2px;border:1px solid #eee}"
        "table{border-collapse:collapse;font-size:.9em}td{padding:2px 8px}",
        "</style></head><body>",
        f"<h1>{esc(title)}</h1><p>{len(summaries)} clusters, "
        f"{sum(s['size'] for s in summaries)} items</p>",
    ]
    for s in summaries:
        parts.append(f"<div class='c'><h2>Cluster {s['cluster']} &middot; {s['size']} items</h2>")
        rows = "".join(
            f"<tr><td><b>{esc(col)}</b></td><td>"
            + ", ".join(f"{esc(v['value'])} ({v['share']:.0%})" for v in vals)
            + "</td></tr>"
            for col, vals in s["dominant"].items()
        )
        if rows:
            parts.append(f"<table>{rows}</table>")
        parts.append("<div class='reps'>")
        for r in s["representatives"]:
            uri = thumbnail_uri(r["path"]) if r["path"] else None
            label = esc(f"{r['id']} ({r['score']:.2f})")
            if uri:
                parts.append(f"<img src='{uri}' alt='{label}' title='{label}'>")
            else:
                parts.append(f"<span>{label}</span>")
        parts.append("</div></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_cluster_report(
    index: VectorIndex, k: int, out: str | os.PathLike, *, seed: int = 0
) -> tuple[Path, list[dict], pd.Series]:
    """Cluster ``index`` and write the HTML page to ``out``; returns (path, summaries,
    assignment as a Series indexed by item id)."""
    assign, summaries = cluster_index(index, k, seed=seed)
    write_text(out, cluster_html(summaries, f"{k} clusters of {len(index)} items"))
    return Path(out), summaries, pd.Series(assign, index=index.items_["id"], name="cluster")
