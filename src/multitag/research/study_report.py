"""The study's table and self-contained HTML report (base64 PNG plots via matplotlib)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from multitag.core.io import write_text


def results_table(results: Sequence[dict]) -> pd.DataFrame:
    """One row per run: per-task weighted F1 / accuracy, means, params, seconds, ms/image."""
    rows = []
    for r in results:
        row = {k: r[k] for k in ("backbone", "freeze", "sharing", "balancing")}
        for task, m in r["metrics"].items():
            row[f"{task}_f1"] = round(m["weighted_f1"], 4)
        for task, m in r["metrics"].items():
            row[f"{task}_acc"] = round(m["accuracy"], 4)
        row["mean_f1"] = round(r["mean_weighted_f1"], 4)
        row["mean_acc"] = round(r["mean_accuracy"], 4)
        row["trainable_params"] = int(r["trainable_params"])
        row["train_s"] = round(r["train_seconds"], 1)
        row["infer_ms_per_image"] = round(r["inference_ms"], 3)
        rows.append(row)
    return pd.DataFrame(rows)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _freeze_order(name: str) -> float:
    return 99.0 if name == "all" else float(name.split(".")[-1])


def plot_freeze(table: pd.DataFrame) -> bytes | None:
    """Mean weighted F1 vs freeze point, one line per backbone (hard sharing, equal weights)."""
    t = table[(table.sharing == "hard") & (table.balancing == "equal")]
    if t.empty:
        return None
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    points = sorted(t["freeze"].unique(), key=_freeze_order)  # deepest fine-tuning left
    for bb, g in t.groupby("backbone"):
        g = g.sort_values("freeze", key=lambda s: s.map(_freeze_order))
        ax.plot([points.index(f) for f in g["freeze"]], g["mean_f1"], marker="o", label=bb)
    ax.set_xticks(range(len(points)), points)
    ax.set_xlabel("last frozen stage ('all' = heads only)")
    ax.set_ylabel("mean weighted F1 (test)")
    ax.set_title("Freeze point (hard sharing, equal weights)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def plot_sharing(table: pd.DataFrame) -> bytes | None:
    """Per-task weighted F1 of each sharing x balancing run, grouped by task."""
    t = table[table.freeze != "all"]
    if t.empty:
        return None
    key = t.groupby(["backbone", "freeze"]).size().idxmax()  # the point with the most runs
    t = t[(t.backbone == key[0]) & (t.freeze == key[1])]
    tasks = [c[:-3] for c in t.columns if c.endswith("_f1") and c != "mean_f1"] + ["mean"]
    fig = Figure(figsize=(9, 3.8))
    ax = fig.subplots()
    width = 0.8 / max(len(t), 1)
    for i, (_, row) in enumerate(t.iterrows()):
        values = [row[f"{k}_f1"] for k in tasks]
        xs = [j + i * width for j in range(len(tasks))]
        ax.bar(xs, values, width, label=f"{row.sharing}/{row.balancing}")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks, rotation=20)
    lo = min(t[[f"{k}_f1" for k in tasks]].min().min() - 0.05, 0.9)
    ax.set_ylim(max(0.0, lo), 1.0)
    ax.set_ylabel("weighted F1 (test)")
    ax.set_title(f"Sharing strategies ({key[0]}, frozen up to {key[1]})")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _rounded(units: list) -> str:
    return str([[[round(v, 3) for v in row] for row in unit] for unit in units])


def write_report(results: Sequence[dict], data: dict, out: Path, skipped: Sequence[str]) -> None:
    """``report.html`` (self-contained) + ``freeze.png`` / ``sharing.png`` beside it."""
    table = results_table(results)
    parts = [
        "<!doctype html><meta charset='utf-8'><title>multitag transfer-learning study</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style>",
        "<h1>Transfer-learning study</h1>",
        f"<p>Data: {html.escape(str(data))}</p>",
    ]
    if skipped:
        parts.append(f"<p><b>Not run (budget):</b> {html.escape(', '.join(skipped))}</p>")
    for name, png in (("freeze", plot_freeze(table)), ("sharing", plot_sharing(table))):
        if png is None:
            continue
        (out / f"{name}.png").write_bytes(png)
        uri = base64.b64encode(png).decode()
        parts.append(f"<img alt='{name}' src='data:image/png;base64,{uri}'>")
    parts.append(table.to_html(index=False) if len(table) else "<p>No finished runs.</p>")
    mixing = [
        (r, d["sharing_report"])
        for r in results
        for d in r.get("details", [])
        if d.get("sharing_report", {}).get("stitch")
    ]
    for r, rep in mixing:
        parts.append(
            f"<h3>Cross-stitch weights: {html.escape(r['backbone'])} {html.escape(r['freeze'])} "
            f"{html.escape(r['balancing'])}</h3><p>groups {html.escape(str(rep['groups']))}</p>"
            f"<pre>{html.escape(_rounded(rep['stitch']))}</pre>"
        )
    write_text(out / "report.html", "\n".join(parts))
