"""Evaluation metrics and reports for multi-task tagging.

Everything here works on plain arrays (labels and predicted probabilities); no model code.

* :func:`multiclass_metrics` / :func:`multilabel_metrics` score one task.
* :func:`evaluate_tasks` scores several tasks and adds a summary.
* :func:`write_json`, :func:`write_html` and :func:`format_table` render a report.

Missing labels are masked out: ``-1`` in a multiclass ``y_true``, a row of all ``-1`` in a
multilabel ``y_true``. All returned values are plain Python (``float``/``int``/``list``/``dict``
/``None``), so a report can go straight to :func:`json.dumps`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from multitag.core.io import write_text

__all__ = [
    "evaluate_tasks",
    "format_table",
    "multiclass_metrics",
    "multilabel_metrics",
    "write_html",
    "write_json",
]

MAX_CONFUSION_CLASSES = 30
MAX_BAR_CLASSES = 40
_NO_LABELS_NOTE = "no labelled rows: metrics are undefined (None)"
_SUMMARY_COLUMNS = (
    ("support", "support"),
    ("accuracy", "accuracy"),
    ("top3_accuracy", "top-3"),
    ("macro_f1", "macro-F1"),
    ("weighted_f1", "weighted-F1"),
)


# ----------------------------------------------------------------------------- helpers


def _to_builtin(obj: Any) -> Any:
    """Recursively convert numpy scalars/arrays (and tuples) to plain Python values."""
    if isinstance(obj, dict):
        return {str(k): _to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_builtin(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _to_builtin(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    return obj


def _check_classes(classes: Sequence[str], n_cols: int) -> list[str]:
    names = [str(c) for c in classes]
    if len(names) != n_cols:
        raise ValueError(f"proba has {n_cols} columns but {len(names)} classes were given")
    if len(set(names)) != len(names):
        raise ValueError("class names must be unique")
    return names


def _check_proba(proba: Any, n_rows: int) -> np.ndarray:
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"proba must be 2-D (n, n_classes), got shape {p.shape}")
    if p.shape[0] != n_rows:
        raise ValueError(f"proba has {p.shape[0]} rows but y_true has {n_rows}")
    if p.shape[1] == 0:
        raise ValueError("proba must have at least one class column")
    if not np.all(np.isfinite(p)):
        raise ValueError("proba contains NaN or infinite values")
    return p


def _as_int_labels(y: Any) -> np.ndarray:
    a = np.asarray(y)
    if a.dtype.kind == "b":
        return a.astype(np.int64)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise ValueError("y_true must hold integer values")
    elif a.dtype.kind not in "iu":
        raise ValueError(f"y_true must be numeric, got dtype {a.dtype}")
    return a.astype(np.int64)


def _topk_idx(p: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row (ties broken by lower class index)."""
    return np.argsort(-p, axis=1, kind="stable")[:, :k]


def _per_class_prf(
    y: np.ndarray, pred: np.ndarray, labels: list[int] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    p, r, f, s = precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0
    )
    return p, r, f, s


# ----------------------------------------------------------------------------- metrics


def top_confusions(
    confusion: np.ndarray, classes: Sequence[str], n: int = 10
) -> list[dict[str, Any]]:
    """The ``n`` most frequent errors of a confusion matrix (rows true, columns predicted):
    ``{"true", "predicted", "count", "share_of_errors"}``, most frequent first (ties by
    name). Shows whether errors are a few near-synonym pairs or spread out."""
    cm = np.asarray(confusion, dtype=np.int64).copy()
    np.fill_diagonal(cm, 0)
    total = int(cm.sum())
    true_idx, pred_idx = np.nonzero(cm)
    order = sorted(
        zip(true_idx, pred_idx), key=lambda ij: (-cm[ij], classes[ij[0]], classes[ij[1]])
    )
    return [
        {
            "true": classes[i],
            "predicted": classes[j],
            "count": int(cm[i, j]),
            "share_of_errors": float(cm[i, j] / total),
        }
        for i, j in order[:n]
    ]


def multiclass_metrics(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict:
    """Metrics for a single-label task.

    ``y_true`` holds class indices (``-1`` = missing, ignored); ``proba`` is ``(n, n_classes)``.
    F1 scores use every class (``labels=range(n_classes)``, ``zero_division=0``), so a class
    that is neither present nor predicted contributes 0 to ``macro_f1``. ``top3_accuracy`` uses
    ``k = min(3, n_classes)``. ``confusion`` rows are true classes, columns predictions;
    ``top_confusions``: its most frequent off-diagonal cells (:func:`top_confusions`).
    """
    y = _as_int_labels(y_true).ravel()
    p = _check_proba(proba, y.shape[0])
    names = _check_classes(classes, p.shape[1])
    n_classes = len(names)
    if np.any((y < -1) | (y >= n_classes)):
        raise ValueError(f"y_true values must be -1 or in [0, {n_classes})")

    mask = y >= 0
    y, p = y[mask], p[mask]
    support = int(y.shape[0])
    labels = list(range(n_classes))

    if support == 0:
        return _to_builtin(
            {
                "kind": "multiclass",
                "accuracy": None,
                "top3_accuracy": None,
                "macro_f1": None,
                "weighted_f1": None,
                "support": 0,
                "per_class": {
                    c: {"precision": None, "recall": None, "f1": None, "support": 0} for c in names
                },
                "confusion": np.zeros((n_classes, n_classes), dtype=int),
                "note": _NO_LABELS_NOTE,
            }
        )

    pred = np.argmax(p, axis=1)
    k = min(3, n_classes)
    top3 = float(np.mean(np.any(_topk_idx(p, k) == y[:, None], axis=1)))
    prec, rec, f1, sup = _per_class_prf(y, pred, labels)
    return _to_builtin(
        {
            "kind": "multiclass",
            "accuracy": float(np.mean(pred == y)),
            "top3_accuracy": top3,
            "macro_f1": f1_score(y, pred, labels=labels, average="macro", zero_division=0),
            "weighted_f1": f1_score(y, pred, labels=labels, average="weighted", zero_division=0),
            "support": support,
            "per_class": {
                c: {"precision": prec[i], "recall": rec[i], "f1": f1[i], "support": sup[i]}
                for i, c in enumerate(names)
            },
            "confusion": (cm := confusion_matrix(y, pred, labels=labels)),
            "top_confusions": top_confusions(cm, names),
        }
    )


def multilabel_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    threshold: float | np.ndarray = 0.5,
) -> dict:
    """Metrics for a multi-label task.

    ``y_true`` is ``(n, n_classes)`` in {0, 1}; a row of all ``-1`` is missing and ignored
    (a partly missing row is an error). A class is predicted when ``proba >= threshold``
    (scalar or one value per class). ``accuracy`` is exact-match subset accuracy;
    ``top3_accuracy`` is the fraction of labelled rows with at least one true label among the
    3 highest scores (rows with no positives count as misses); ``map`` averages
    ``average_precision_score`` over classes with at least one positive (``ap`` is None for
    the others).
    """
    y = _as_int_labels(y_true)
    if y.ndim != 2:
        raise ValueError(f"multilabel y_true must be 2-D (n, n_classes), got shape {y.shape}")
    p = _check_proba(proba, y.shape[0])
    if p.shape[1] != y.shape[1]:
        raise ValueError(f"y_true has {y.shape[1]} columns but proba has {p.shape[1]}")
    names = _check_classes(classes, p.shape[1])
    n_classes = len(names)

    missing = np.all(y == -1, axis=1)
    y, p = y[~missing], p[~missing]
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("multilabel y_true must be 0/1, or a whole row of -1 for a missing row")

    thr = np.asarray(threshold, dtype=float)
    if thr.ndim not in (0, 1) or (thr.ndim == 1 and thr.shape[0] != n_classes):
        raise ValueError(f"threshold must be a scalar or have {n_classes} values")
    support = int(y.shape[0])

    if support == 0:
        return _to_builtin(
            {
                "kind": "multilabel",
                "accuracy": None,
                "top3_accuracy": None,
                "macro_f1": None,
                "weighted_f1": None,
                "micro_f1": None,
                "map": None,
                "support": 0,
                "threshold": thr,
                "per_class": {
                    c: {"precision": None, "recall": None, "f1": None, "support": 0, "ap": None}
                    for c in names
                },
                "note": _NO_LABELS_NOTE,
            }
        )

    pred = (p >= thr).astype(np.int64)
    prec, rec, f1, sup = _per_class_prf(y, pred, None)
    aps: list[float | None] = []
    for j in range(n_classes):
        aps.append(float(average_precision_score(y[:, j], p[:, j])) if y[:, j].any() else None)
    valid_aps = [a for a in aps if a is not None]
    k = min(3, n_classes)
    top_hits = np.take_along_axis(y, _topk_idx(p, k), axis=1).any(axis=1)

    def avg_f1(average: str) -> float:
        return float(f1_score(y, pred, average=average, zero_division=0))

    return _to_builtin(
        {
            "kind": "multilabel",
            "accuracy": float(np.mean(np.all(pred == y, axis=1))),
            "top3_accuracy": float(np.mean(top_hits)),
            "macro_f1": avg_f1("macro"),
            "weighted_f1": avg_f1("weighted"),
            "micro_f1": avg_f1("micro"),
            "map": float(np.mean(valid_aps)) if valid_aps else None,
            "support": support,
            "threshold": thr,
            "per_class": {
                c: {
                    "precision": prec[i],
                    "recall": rec[i],
                    "f1": f1[i],
                    "support": sup[i],
                    "ap": aps[i],
                }
                for i, c in enumerate(names)
            },
        }
    )


def evaluate_tasks(tasks: Mapping[str, dict]) -> dict:
    """Score several tasks.

    Each value is ``{"kind": "multiclass"|"multilabel", "y_true", "proba", "classes"}`` plus an
    optional ``"threshold"`` for multilabel tasks. Returns ``{"tasks": {name: metrics},
    "summary": {"mean_weighted_f1", "mean_accuracy", "n_tasks"}}``; means skip tasks whose value
    is None and are None when no task has one.
    """
    out: dict[str, dict] = {}
    for name, spec in tasks.items():
        kind = spec.get("kind")
        if kind == "multiclass":
            out[str(name)] = multiclass_metrics(spec["y_true"], spec["proba"], spec["classes"])
        elif kind == "multilabel":
            out[str(name)] = multilabel_metrics(
                spec["y_true"], spec["proba"], spec["classes"], spec.get("threshold", 0.5)
            )
        else:
            raise ValueError(
                f"task {name!r}: kind must be 'multiclass' or 'multilabel', got {kind!r}"
            )

    def mean_of(key: str) -> float | None:
        vals = [m[key] for m in out.values() if m.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    summary = {
        "mean_weighted_f1": mean_of("weighted_f1"),
        "mean_accuracy": mean_of("accuracy"),
        "n_tasks": len(out),
    }
    return {"tasks": out, "summary": summary}


# ----------------------------------------------------------------------------- writers


def _atomic_write_text(path: str | os.PathLike, text: str) -> None:
    write_text(path, text)


def write_json(report: dict, path: str | os.PathLike) -> None:
    """Write ``report`` as indented JSON, atomically (NaN/inf are rejected)."""
    text = json.dumps(_to_builtin(report), indent=2, allow_nan=False, ensure_ascii=False)
    _atomic_write_text(path, text + "\n")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(report: dict) -> str:
    """Markdown table of the per-task summary of an :func:`evaluate_tasks` report."""
    header = ["task", "kind"] + [label for _, label in _SUMMARY_COLUMNS]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * len(_SUMMARY_COLUMNS)) + "|",
    ]
    for name, m in report.get("tasks", {}).items():
        cells = [str(name).replace("|", "\\|"), str(m.get("kind", ""))]
        cells += [_fmt(m.get(key)) for key, _ in _SUMMARY_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- HTML report


def _short(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def _fig_to_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    fig.clear()
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _confusion_view(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], max_classes: int
) -> tuple[np.ndarray, list[str], list[str], bool]:
    """Row-normalised confusion matrix, limited to the ``max_classes`` most frequent true classes.

    Rows are normalised by the full row total; when classes are dropped, an extra "(other)"
    column holds the share predicted as a class not shown.
    """
    cm = np.asarray(confusion, dtype=float)
    totals = cm.sum(axis=1)
    n = cm.shape[0]
    truncated = n > max_classes
    if truncated:
        order = np.argsort(-totals, kind="stable")[:max_classes]
        keep = np.sort(order)
        sub = cm[np.ix_(keep, keep)]
        other = cm[keep].sum(axis=1) - sub.sum(axis=1)
        sub = np.column_stack([sub, other])
        row_tot = totals[keep]
        labels = [classes[i] for i in keep]
        col_labels = [*labels, "(other)"]
    else:
        sub, row_tot, labels, col_labels = cm, totals, list(classes), list(classes)
    norm = np.divide(sub, row_tot[:, None], out=np.zeros_like(sub), where=row_tot[:, None] > 0)
    return norm, labels, col_labels, truncated


def _plot_confusion(norm: np.ndarray, rows: list[str], cols: list[str]) -> str:
    from matplotlib.figure import Figure

    n = max(len(rows), len(cols))
    side = min(16.0, max(4.5, 0.35 * n + 2.5))
    fs = 9 if n <= 15 else 7
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([_short(c, 25) for c in cols], rotation=90, fontsize=fs, parse_math=False)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_short(c, 25) for c in rows], fontsize=fs, parse_math=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 12:
        for i in range(norm.shape[0]):
            for j in range(norm.shape[1]):
                v = norm[i, j]
                if v > 0:
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    return _fig_to_data_uri(fig)


def _bar_rows(per_class: Mapping[str, dict], limit: int) -> tuple[list[str], bool]:
    """Class names for the bar plot: top ``limit`` by support, then sorted by F1 ascending."""
    names = list(per_class)
    truncated = len(names) > limit
    if truncated:
        names = sorted(names, key=lambda c: -(per_class[c]["support"] or 0))[:limit]
    names.sort(key=lambda c: per_class[c]["f1"] or 0.0)
    return names, truncated


def _plot_bars(per_class: Mapping[str, dict], names: list[str], with_ap: bool) -> str:
    from matplotlib.figure import Figure

    labels = [f"{_short(c)} (n={per_class[c]['support']})" for c in names]
    f1 = np.array([per_class[c]["f1"] or 0.0 for c in names])
    fig = Figure(figsize=(7.5, max(2.5, 0.28 * len(names) * (1.6 if with_ap else 1.0) + 1.0)))
    ax = fig.subplots()
    pos = np.arange(len(names))
    if with_ap:
        ap = np.array([per_class[c].get("ap") or 0.0 for c in names])
        ax.barh(pos - 0.2, f1, height=0.4, color="#3b75af", label="F1")
        ax.barh(pos + 0.2, ap, height=0.4, color="#ef8636", label="AP")
        ax.legend(loc="best", fontsize=8)
    else:
        ax.barh(pos, f1, height=0.7, color="#3b75af")
    ax.set_yticks(pos)
    ax.set_yticklabels(labels, fontsize=8, parse_math=False)
    ax.invert_yaxis()  # lowest F1 at the top
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("score" if with_ap else "F1")
    ax.grid(axis="x", alpha=0.3)
    return _fig_to_data_uri(fig)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;
color:#222;max-width:1200px}
h1{font-size:1.6em}h2{font-size:1.3em;border-bottom:1px solid #ccc;padding-bottom:.2em;
margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em}th{background:#f3f3f3;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555;max-width:900px}
img{max-width:100%;height:auto}.note{color:#a33}
.warn{background:#fff4d6;border-left:4px solid #e0a800;padding:.4em .8em}
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], num_from: int) -> str:
    """HTML table; cells are escaped, columns from ``num_from`` on are right-aligned."""
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="num"' if i >= num_from else ""
            cells.append(f"<td{cls}>{cell}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _figure(uri: str, alt: str, caption: str) -> str:
    return (
        f'<figure><img src="{uri}" alt="{html.escape(alt)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _task_section(idx: int, name: str, m: dict) -> str:
    kind = m.get("kind", "multiclass")
    per_class: dict[str, dict] = m.get("per_class", {})
    heading = f"<h2>{html.escape(name)} <small>({html.escape(str(kind))})</small></h2>"
    parts = [f'<section id="task-{idx}">', heading]
    if m.get("note"):
        parts.append(f'<p class="note">{html.escape(str(m["note"]))}</p>')
    extra = []
    if kind == "multilabel":
        extra = [f"micro-F1 {_fmt(m.get('micro_f1'))}", f"mAP {_fmt(m.get('map'))}"]
        thr = m.get("threshold")
        if thr is not None and not isinstance(thr, list):
            extra.append(f"threshold {_fmt(thr, 2)}")
    if extra:
        parts.append(f"<p>{html.escape(' · '.join(extra))}</p>")

    if m.get("support"):
        if kind == "multiclass" and m.get("confusion") is not None:
            norm, rows, cols, trunc = _confusion_view(
                m["confusion"], list(per_class), MAX_CONFUSION_CLASSES
            )
            cap = "Confusion matrix, row-normalised (rows: true class, columns: predicted)."
            if trunc:
                cap += (
                    f" Only the {MAX_CONFUSION_CLASSES} most frequent true classes of "
                    f"{len(per_class)} are shown; '(other)' is the share predicted as a class "
                    "not shown."
                )
            parts.append(_figure(_plot_confusion(norm, rows, cols), f"{name} confusion", cap))
        if m.get("top_confusions"):
            parts.append("<h3>Most frequent errors</h3>")
            parts.append(
                _table(
                    ["true", "predicted", "count", "share of errors"],
                    [
                        [
                            html.escape(c["true"]),
                            html.escape(c["predicted"]),
                            str(c["count"]),
                            f"{c['share_of_errors']:.1%}",
                        ]
                        for c in m["top_confusions"]
                    ],
                    num_from=2,
                )
            )
        names, trunc = _bar_rows(per_class, MAX_BAR_CLASSES)
        with_ap = kind == "multilabel"
        cap = "Per-class F1 and average precision" if with_ap else "Per-class F1"
        cap += ", lowest F1 first; n = support."
        if trunc:
            cap += (
                f" Only the {MAX_BAR_CLASSES} classes with most support"
                f" (of {len(per_class)}) are shown."
            )
        parts.append(_figure(_plot_bars(per_class, names, with_ap), f"{name} per-class F1", cap))

    header = ["class", "precision", "recall", "f1", "support"]
    if kind == "multilabel":
        header.append("ap")
    rows = []
    for c in sorted(per_class, key=lambda c: -(per_class[c].get("support") or 0)):
        v = per_class[c]
        rows.append([html.escape(c)] + [_fmt(v.get(h)) for h in header[1:]])
    table = _table(header, rows, num_from=1)
    if len(rows) > 50:
        table = (
            f"<details><summary>per-class table ({len(rows)} classes)</summary>{table}</details>"
        )
    parts.append(table)
    parts.append("</section>")
    return "\n".join(parts)


def write_html(report: dict, path: str | os.PathLike, title: str = "multitag evaluation") -> None:
    """Write a self-contained HTML report (inline CSS, base64 PNG figures), atomically."""
    tasks: dict[str, dict] = report.get("tasks", {})
    summary = report.get("summary", {})
    rows = []
    for i, (name, m) in enumerate(tasks.items()):
        link = f'<a href="#task-{i}">{html.escape(str(name))}</a>'
        rows.append(
            [link, html.escape(str(m.get("kind", "")))]
            + [_fmt(m.get(key)) for key, _ in _SUMMARY_COLUMNS]
        )
    header = ["task", "kind"] + [label for _, label in _SUMMARY_COLUMNS]
    body = [
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Summary</h2>",
        _table(header, rows, num_from=2),
        (
            f"<p>mean weighted-F1: {_fmt(summary.get('mean_weighted_f1'))} · "
            f"mean accuracy: {_fmt(summary.get('mean_accuracy'))}</p>"
        ),
    ]
    notes = [
        f"these photos differ from the training photos: {w}"
        for w in report.get("source_warnings", [])
    ]
    if report.get("skipped_tasks"):
        notes.append(f"tasks not scored (no column in the data): {report['skipped_tasks']}")
    body += [f'<p class="warn">{html.escape(n)}</p>' for n in notes]
    body += [_task_section(i, str(name), m) for i, (name, m) in enumerate(tasks.items())]
    doc = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    _atomic_write_text(path, doc)
