"""Tests for multitag.evaluation.metrics (synthetic arrays, hand-computed expectations)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from multitag.evaluation.metrics import (
    _confusion_view,
    evaluate_tasks,
    format_table,
    multiclass_metrics,
    multilabel_metrics,
    write_html,
    write_json,
)

CLASSES3 = ["a", "b", "c"]


def _onehot_proba(pred: list[int], n_classes: int) -> np.ndarray:
    p = np.full((len(pred), n_classes), 0.1)
    p[np.arange(len(pred)), pred] = 0.8
    return p


def _mc_example() -> tuple[np.ndarray, np.ndarray]:
    # true [0,0,1,1,2,2], predicted [0,1,1,1,2,0]
    y = np.array([0, 0, 1, 1, 2, 2])
    return y, _onehot_proba([0, 1, 1, 1, 2, 0], 3)


def _ml_example() -> tuple[np.ndarray, np.ndarray]:
    y = np.array(
        [
            [1, 0, 1, 0],
            [0, 1, 0, 0],
            [1, 1, 0, 0],
            [0, 0, 1, 0],
            [0, 1, 0, 0],
        ]
    )
    p = np.array(
        [
            [0.9, 0.2, 0.4, 0.1],
            [0.1, 0.8, 0.3, 0.2],
            [0.7, 0.45, 0.2, 0.1],
            [0.3, 0.2, 0.6, 0.1],
            [0.3, 0.05, 0.2, 0.25],
        ]
    )
    return y, p


# ----------------------------------------------------------------------------- multiclass


def test_multiclass_hand_computed():
    y, p = _mc_example()
    m = multiclass_metrics(y, p, CLASSES3)
    assert m["support"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["top3_accuracy"] == pytest.approx(1.0)  # k = n_classes = 3
    # a: P=1/2 R=1/2 F1=1/2; b: P=2/3 R=1 F1=4/5; c: P=1 R=1/2 F1=2/3
    pc = m["per_class"]
    assert pc["a"]["precision"] == pytest.approx(0.5) and pc["a"]["f1"] == pytest.approx(0.5)
    assert pc["b"]["precision"] == pytest.approx(2 / 3) and pc["b"]["recall"] == pytest.approx(1)
    assert pc["b"]["f1"] == pytest.approx(0.8)
    assert pc["c"]["recall"] == pytest.approx(0.5) and pc["c"]["f1"] == pytest.approx(2 / 3)
    assert [pc[c]["support"] for c in CLASSES3] == [2, 2, 2]
    macro = (0.5 + 0.8 + 2 / 3) / 3
    assert m["macro_f1"] == pytest.approx(macro)
    assert m["weighted_f1"] == pytest.approx(macro)  # equal supports
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["top_confusions"] == [  # two errors, one each; ties sorted by name
        {"true": "a", "predicted": "b", "count": 1, "share_of_errors": 0.5},
        {"true": "c", "predicted": "a", "count": 1, "share_of_errors": 0.5},
    ]
    assert "note" not in m


def test_multiclass_top3_and_weighted():
    # 5 classes; the true class is ranked 1st..5th in rows 0..4
    y = np.arange(5)
    scores = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    p = np.zeros((5, 5))
    for i in range(5):
        others = [c for c in range(5) if c != i]
        p[i, [*others[:i], i, *others[i:]]] = scores
    m = multiclass_metrics(y, p, list("vwxyz"))
    assert m["accuracy"] == pytest.approx(1 / 5)
    assert m["top3_accuracy"] == pytest.approx(3 / 5)

    # two classes: top-3 degrades to top-2, always a hit
    m2 = multiclass_metrics(np.array([0, 1, 1]), _onehot_proba([1, 0, 1], 2), ["x", "y"])
    assert m2["top3_accuracy"] == 1.0
    assert m2["accuracy"] == pytest.approx(1 / 3)


def test_multiclass_weighted_f1_uses_support():
    y = np.array([0, 0, 0, 1])
    m = multiclass_metrics(y, _onehot_proba([0, 0, 0, 0], 2), ["x", "y"])
    # x: P=3/4 R=1 F1=6/7; y: F1=0
    assert m["weighted_f1"] == pytest.approx(0.75 * 6 / 7)
    assert m["macro_f1"] == pytest.approx(0.5 * 6 / 7)


def test_multiclass_missing_rows_excluded():
    y, p = _mc_example()
    base = multiclass_metrics(y, p, CLASSES3)
    y_m = np.concatenate([[-1], y[:3], [-1, -1], y[3:]])
    junk = np.array([[0.0, 0.0, 1.0]])
    p_m = np.concatenate([junk, p[:3], junk, junk, p[3:]])
    m = multiclass_metrics(y_m, p_m, CLASSES3)
    assert m == base
    assert m["support"] == 6
    assert sum(map(sum, m["confusion"])) == 6


def test_multiclass_all_missing():
    m = multiclass_metrics(np.array([-1, -1]), _onehot_proba([0, 1], 3), CLASSES3)
    assert m["support"] == 0
    for key in ("accuracy", "top3_accuracy", "macro_f1", "weighted_f1"):
        assert m[key] is None
    assert "no labelled rows" in m["note"]
    json.dumps(m)


def test_multiclass_validation():
    y, p = _mc_example()
    with pytest.raises(ValueError):
        multiclass_metrics(y, p, ["a", "b"])  # wrong class count
    with pytest.raises(ValueError):
        multiclass_metrics(y[:5], p, CLASSES3)  # row mismatch
    with pytest.raises(ValueError):
        multiclass_metrics(np.array([0, 0, 1, 1, 2, 3]), p, CLASSES3)  # label out of range
    with pytest.raises(ValueError):
        multiclass_metrics(y, p, ["a", "a", "c"])  # duplicate names


# ----------------------------------------------------------------------------- multilabel


def test_multilabel_hand_computed():
    y, p = _ml_example()
    m = multilabel_metrics(y, p, list("abcd"))
    assert m["support"] == 5
    # predictions at 0.5: [1000],[0100],[1000],[0010],[0000]
    assert m["accuracy"] == pytest.approx(2 / 5)
    assert m["top3_accuracy"] == pytest.approx(4 / 5)  # last row: only positive ranked 4th
    pc = m["per_class"]
    assert pc["a"]["f1"] == pytest.approx(1.0)
    assert pc["b"]["precision"] == pytest.approx(1.0)
    assert pc["b"]["recall"] == pytest.approx(1 / 3)
    assert pc["b"]["f1"] == pytest.approx(0.5)
    assert pc["c"]["f1"] == pytest.approx(2 / 3)
    assert pc["d"]["f1"] == 0.0 and pc["d"]["support"] == 0
    assert [pc[c]["support"] for c in "abcd"] == [2, 3, 2, 0]
    assert m["micro_f1"] == pytest.approx(8 / 11)  # tp=4 fp=0 fn=3
    assert m["macro_f1"] == pytest.approx((1 + 0.5 + 2 / 3 + 0) / 4)
    assert m["weighted_f1"] == pytest.approx((2 * 1 + 3 * 0.5 + 2 * 2 / 3) / 7)
    # AP: a=1, b=13/15, c=1, d=None (no positives, excluded from mAP)
    assert pc["a"]["ap"] == pytest.approx(1.0)
    assert pc["b"]["ap"] == pytest.approx(13 / 15)
    assert pc["d"]["ap"] is None
    assert m["map"] == pytest.approx((1 + 13 / 15 + 1) / 3)


def test_multilabel_per_class_threshold():
    y, p = _ml_example()
    m = multilabel_metrics(y, p, list("abcd"), threshold=np.array([0.5, 0.4, 0.5, 0.5]))
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8)  # row 2 now predicts b
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["threshold"] == [0.5, 0.4, 0.5, 0.5]
    with pytest.raises(ValueError):
        multilabel_metrics(y, p, list("abcd"), threshold=np.array([0.5, 0.5]))


def test_multilabel_missing_rows_masked():
    y, p = _ml_example()
    base = multilabel_metrics(y, p, list("abcd"))
    y_m = np.vstack([y[:2], [[-1, -1, -1, -1]], y[2:], [[-1, -1, -1, -1]]])
    p_m = np.vstack([p[:2], [[1.0, 1.0, 1.0, 1.0]], p[2:], [[0.0, 0.0, 0.0, 0.0]]])
    m = multilabel_metrics(y_m, p_m, list("abcd"))
    assert m == base
    assert m["support"] == 5

    all_missing = multilabel_metrics(np.full((2, 4), -1), p[:2], list("abcd"))
    assert all_missing["support"] == 0
    assert all_missing["accuracy"] is None and all_missing["map"] is None
    assert "note" in all_missing

    partial = y.copy()
    partial[0, 1] = -1
    with pytest.raises(ValueError):
        multilabel_metrics(partial, p, list("abcd"))


# ----------------------------------------------------------------------------- reports


def _tasks(rng: np.random.Generator) -> dict:
    y, p = _mc_example()
    yl, pl = _ml_example()
    n, k = 400, 45  # > 30 classes for the confusion cut, > 40 for the bar cut
    big_y = rng.integers(0, k, size=n)
    big_y[:10] = -1
    big_p = rng.random((n, k))
    names = [f"cls<{i}>" if i else "$x$ & <b>bold</b>" for i in range(k)]
    return {
        "colour": {"kind": "multiclass", "y_true": y, "proba": p, "classes": CLASSES3},
        "style_tags": {"kind": "multilabel", "y_true": yl, "proba": pl, "classes": list("abcd")},
        "brand": {"kind": "multiclass", "y_true": big_y, "proba": big_p, "classes": names},
        "empty": {
            "kind": "multiclass",
            "y_true": np.array([-1, -1]),
            "proba": _onehot_proba([0, 1], 3),
            "classes": CLASSES3,
        },
    }


@pytest.fixture
def report() -> dict:
    return evaluate_tasks(_tasks(np.random.default_rng(0)))


def _walk(obj):
    yield obj
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def test_evaluate_tasks_summary_and_plain_types(report):
    assert list(report["tasks"]) == ["colour", "style_tags", "brand", "empty"]
    t = report["tasks"]
    assert t["colour"]["kind"] == "multiclass" and t["style_tags"]["kind"] == "multilabel"
    for m in t.values():
        for key in ("accuracy", "top3_accuracy", "macro_f1", "weighted_f1", "support"):
            assert key in m
    assert t["brand"]["support"] == 390
    s = report["summary"]
    accs = [t[k]["accuracy"] for k in ("colour", "style_tags", "brand")]  # "empty" is None
    assert s["mean_accuracy"] == pytest.approx(np.mean(accs))
    wf1 = [t[k]["weighted_f1"] for k in ("colour", "style_tags", "brand")]
    assert s["mean_weighted_f1"] == pytest.approx(np.mean(wf1))
    allowed = (dict, list, str, int, float, bool, type(None))
    assert all(type(v) in allowed for v in _walk(report))
    json.loads(json.dumps(report, allow_nan=False))
    with pytest.raises(ValueError):
        evaluate_tasks({"x": {"kind": "regression", "y_true": [], "proba": [], "classes": []}})


def test_write_json_round_trip(report, tmp_path):
    out = tmp_path / "sub" / "report.json"
    write_json(report, out)
    assert json.loads(out.read_text(encoding="utf-8")) == report
    write_json(report, out)  # overwrite in place
    assert [f.name for f in out.parent.iterdir()] == ["report.json"]  # no temp leftovers


def test_confusion_view_truncates_with_other_column():
    cm = np.diag(np.arange(1, 36))
    cm[34, 0] = 5  # most frequent class (index 34) sometimes predicted as class 0 (dropped)
    norm, rows, cols, trunc = _confusion_view(cm, [str(i) for i in range(35)], 30)
    assert trunc and len(rows) == 30 and cols[-1] == "(other)"
    assert rows[0] == "5" and rows[-1] == "34"  # classes 0..4 are the least frequent
    assert norm.shape == (30, 31)
    assert np.allclose(norm.sum(axis=1), 1.0)
    assert norm[-1, -1] == pytest.approx(5 / 40)


def test_write_html(report, tmp_path):
    out = tmp_path / "report.html"
    write_html(report, out, title="eval <run 1>")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    for name in ("colour", "style_tags", "brand", "empty"):
        assert name in text
    assert "<table>" in text and "<th>weighted-F1</th>" in text
    assert "data:image/png;base64," in text
    # colour: confusion + F1 bars; style_tags: F1/AP bars; brand: both; empty: none
    assert text.count("data:image/png;base64,") == 5
    assert "30 most frequent true classes of 45" in text
    assert "40 classes with most support (of 45) are shown" in text
    assert "no labelled rows" in text
    assert text.count("<h3>Most frequent errors</h3>") == 2  # the multiclass tasks with errors
    assert not re.search(r"https?://", text)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    # names are escaped
    assert "<b>bold</b>" not in text and "&lt;b&gt;bold&lt;/b&gt;" in text
    assert "cls&lt;1&gt;" in text and "eval &lt;run 1&gt;" in text
    assert [f.name for f in tmp_path.iterdir()] == ["report.html"]


def test_format_table(report):
    md = format_table(report)
    lines = md.strip().splitlines()
    assert lines[0] == ("| task | kind | support | accuracy | top-3 | macro-F1 | weighted-F1 |")
    assert len(lines) == 2 + 4
    colour = next(line for line in lines if line.startswith("| colour "))
    assert "| multiclass | 6 | 0.6667 | 1.0000 | 0.6556 | 0.6556 |" in colour
    empty = next(line for line in lines if line.startswith("| empty "))
    assert empty.count("n/a") == 4
