"""VectorIndex (exact / IVF / HNSW, save/load, add, filters), kNN vote, clusters, metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from multitag.embedding.cluster import cluster_html, cluster_index
from multitag.embedding.evaluate import retrieval_metrics
from multitag.embedding.index import VectorIndex, parse_where
from multitag.embedding.knn import knn_accuracy, knn_classify
from tests.conftest import make_image


def _data(n=3000, dim=32, k=12, seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, dim)).astype(np.float32)
    labels = rng.integers(0, k, n)
    x = centers[labels] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    items = pd.DataFrame(
        {
            "id": [f"item{i}" for i in range(n)],
            "path": [f"/nowhere/{i}.jpg" for i in range(n)],
            "kind": [f"c{v}" for v in labels],
            "gender": np.where(np.arange(n) % 3 == 0, "Women", "Men"),
        }
    )
    return x, items, labels


def _exact_top(x, q, k):
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


def test_exact_search_matches_brute_force():
    x, items, _ = _data(500)
    index = VectorIndex().build(x, items)
    assert index.kind_ == "exact"
    scores, rows = index.search(x[:20], 5)
    assert (rows[:, 0] == np.arange(20)).all()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (rows == _exact_top(x, x[:20], 5)).mean() > 0.98


@pytest.mark.parametrize("kind", ["auto", "hnsw"])
def test_approximate_kinds_have_high_recall(kind):
    x, items, _ = _data(4000)
    index = VectorIndex(kind, exact_max=1000).build(x, items)
    assert index.kind_ == ("ivf" if kind == "auto" else "hnsw")
    q = x[:200] + 0.01
    _, rows = index.search(q, 10)
    truth = _exact_top(x, q / np.linalg.norm(q, axis=1, keepdims=True), 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth)])
    assert recall >= 0.9, recall


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_save_load_add_without_rebuild(tmp_path, kind):
    x, items, _ = _data(2000)
    index = VectorIndex(kind).build(x[:1500], items.iloc[:1500])
    before = index.search(x[:10], 5)
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx")
    assert loaded.kind_ == kind and len(loaded) == 1500
    after = loaded.search(x[:10], 5)
    np.testing.assert_array_equal(before[1], after[1])
    loaded.add(x[1500:], items.iloc[1500:])
    assert len(loaded) == 2000 and len(loaded.items_) == 2000
    scores, rows = loaded.search(x[1500:1510], 1)
    assert (rows[:, 0] == np.arange(1500, 1510)).all()
    assert loaded.items_["id"].iloc[rows[0, 0]] == "item1500"
    np.testing.assert_allclose(loaded.vectors([1999])[0], x[1999], atol=1e-6)
    loaded.save(tmp_path / "idx")
    assert len(VectorIndex.load(tmp_path / "idx")) == 2000


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_where_filter_returns_k_matching(kind):
    x, items, _ = _data(3000)
    items.loc[7, "gender"] = "Unisex"  # a single matching item, far from most queries
    index = VectorIndex(kind).build(x, items)
    scores, rows = index.search(x[:5], 10, where=["gender=Women"])
    assert (rows >= 0).all()
    assert set(index.items_["gender"].iloc[rows.ravel()]) == {"Women"}
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    _, rows = index.search(x[1:4], 10, where={"gender": "Unisex"})
    assert (rows[:, 0] == 7).all() and (rows[:, 1:] == -1).all()
    _, rows = index.search(x[:2], 10, where=["gender=Nobody"])
    assert (rows == -1).all()
    with pytest.raises(ValueError, match="no column 'colour'"):
        index.search(x[:1], 3, where=["colour=Red"])
    with pytest.raises(ValueError, match="column=value"):
        parse_where(["gender"])


def test_exclude_rows_keeps_k_results_and_results_table():
    x, items, _ = _data(300)
    index = VectorIndex().build(x, items)
    scores, rows = index.search(x[3], 5, exclude_rows=[3])
    assert 3 not in rows[0] and (rows[0] >= 0).sum() == 5
    table = index.results(scores[0], rows[0])
    assert list(table.columns[:3]) == ["rank", "id", "score"]
    assert table["rank"].tolist() == [1, 2, 3, 4, 5] and "gender" in table.columns
    with pytest.raises(KeyError, match="nope"):
        index.row_of("nope")


def test_knn_vote_and_accuracy():
    x, items, labels = _data(2000, noise=0.5)
    index = VectorIndex().build(x[:1500], items.iloc[:1500])
    pred = knn_classify(index, x[1500:], "kind", k=10)
    truth = items["kind"].iloc[1500:].to_numpy()
    acc = float(np.mean(pred["prediction"].to_numpy() == truth))
    assert acc > 0.9
    assert pred["confidence"].between(0, 1).all() and pred["confidence"].mean() > 0.5
    names = items["kind"].to_numpy()
    assert knn_accuracy(x[:1500], names[:1500], x[1500:], names[1500:], 10) == pytest.approx(acc)
    shuffled = np.random.default_rng(1).permutation(names[:1500])
    assert knn_accuracy(x[:1500], shuffled, x[1500:], names[1500:]) < 0.3


def test_retrieval_metrics_separate_good_from_random():
    x, _, labels = _data(1200, noise=0.2)
    good = retrieval_metrics(x, labels.astype(str))
    assert good["recall@1"] > 0.99 and good["map@r"] > 0.95 and good["nmi"] > 0.85
    assert good["recall@10"] >= good["recall@5"] >= good["recall@1"]
    rand = retrieval_metrics(np.random.default_rng(0).standard_normal(x.shape), labels.astype(str))
    assert rand["recall@1"] < 0.3 and rand["map@r"] < 0.2 and rand["nmi"] < 0.2


def test_cluster_summary_and_self_contained_html(tmp_path):
    x, items, labels = _data(600, k=3, noise=0.1)
    colours = {0: (200, 30, 30), 1: (30, 200, 30), 2: (30, 30, 200)}
    paths = []
    for i in range(len(items)):
        p = tmp_path / f"{i}.png"
        make_image(p, colour=colours[labels[i]])
        paths.append(str(p))
    items["path"] = paths
    index = VectorIndex().build(x, items)
    assign, summaries = cluster_index(index, 3)
    assert sorted(s["size"] for s in summaries) == sorted(np.bincount(labels).tolist())
    for s in summaries:
        assert s["dominant"]["kind"][0]["share"] == 1.0
        assert len(s["representatives"]) == 6
    page = cluster_html(summaries)
    assert page.count("<h2>Cluster") == 3
    assert "http" not in page and "<span>" not in page
    assert page.count("src='data:image/jpeg;base64,") == 18
    with pytest.raises(ValueError, match="-k must be"):
        cluster_index(index, 0)
