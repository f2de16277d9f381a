"""The one k-means (restarts, spherical, sampled training), suggest-k, and `multitag cluster`
on generated, clearly separable data."""

from __future__ import annotations

import faiss
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import normalized_mutual_info_score
from typer.testing import CliRunner

from multitag.cli.main import app
from multitag.embedding.cluster import cluster_index
from multitag.embedding.evaluate import retrieval_metrics
from multitag.embedding.index import VectorIndex
from multitag.embedding.kmeans import KMeans, nearest_centroid, suggest_k
from tests.conftest import FASHION, requires_fashion


def _blobs(k=6, per=40, dim=32, noise=0.05, seed=0, unit=True):
    """``k`` tight, well separated classes of ``per`` rows (unit rows when ``unit``)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), per)
    x = centers[labels] + noise * rng.standard_normal((len(labels), dim))
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def _single_faiss_run(x, k):
    """What `multitag cluster` ran before: one FAISS k-means run (nredo=1), seed 0."""
    km = faiss.Kmeans(x.shape[1], k, niter=25, seed=0, spherical=True, min_points_per_centroid=1)
    km.train(x)
    return km.index.search(x, 1)[1][:, 0]


def test_restarts_find_the_obvious_clusters_that_one_unlucky_run_misses():
    seeds = range(5)
    data = [_blobs(seed=s) for s in seeds]
    # the data is hard for a single restart: one FAISS run merges two classes somewhere
    single = [normalized_mutual_info_score(y, _single_faiss_run(x, 6)) for x, y in data]
    assert min(single) < 0.99
    for x, y in data:
        km = KMeans(6).fit(x)
        assert normalized_mutual_info_score(y, km.labels_) == pytest.approx(1.0)
        assert km.spherical_ and km.n_train_ == len(x) and len(km.restart_inertias_) == 10
        assert km.inertia_ == pytest.approx(min(km.restart_inertias_), rel=1e-4)
        # `multitag cluster` runs the same k-means: 40/40/40/40/40/40
        items = pd.DataFrame({"id": [f"i{i}" for i in range(len(x))], "kind": y.astype(str)})
        assign, summaries = cluster_index(VectorIndex().build(x, items), 6)
        assert normalized_mutual_info_score(y, assign) == pytest.approx(1.0)
        assert [s["size"] for s in summaries] == [40] * 6
        assert all(s["dominant"]["kind"][0]["share"] == 1.0 for s in summaries)
        # and so does the NMI of the retrieval metrics
        assert retrieval_metrics(x, y.astype(str))["nmi"] == pytest.approx(1.0)


def test_spherical_for_unit_rows_euclidean_otherwise():
    x, y = _blobs(k=4, per=30, seed=3)
    km = KMeans(4, random_state=1).fit(x)
    assert km.spherical_
    np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1, atol=1e-5)
    raw, _ = _blobs(k=4, per=30, seed=3, unit=False)
    raw *= 5  # far from unit norm
    eu = KMeans(4).fit(raw)
    assert not eu.spherical_ and normalized_mutual_info_score(y, eu.labels_) == pytest.approx(1)
    # centroids are class means, so not unit vectors
    assert np.linalg.norm(eu.cluster_centers_, axis=1).min() > 4
    assert not KMeans(4, spherical=False).fit(x).spherical_
    # predict = nearest fitted centroid, the catalogue's rule for new items
    np.testing.assert_array_equal(km.predict(x), km.labels_)
    np.testing.assert_array_equal(nearest_centroid(x, km.cluster_centers_)[0], km.labels_)
    # the same seed gives the same clusters
    np.testing.assert_array_equal(KMeans(4, random_state=1).fit(x).labels_, km.labels_)


def test_sampled_training_assigns_every_row():
    x, y = _blobs(k=5, per=400, seed=2)
    km = KMeans(5, max_train=300).fit(x)
    assert km.n_train_ == 300 and len(km.labels_) == len(x)
    assert normalized_mutual_info_score(y, km.labels_) == pytest.approx(1.0)
    assert KMeans(5, max_train=None).fit(x).n_train_ == len(x)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n_clusters": 0}, "n_clusters=0: use a whole number from 1"),
        ({"n_clusters": 500}, r"number of rows \(120\)"),
        ({"n_clusters": 2.5}, "n_clusters=2.5"),
        ({"n_init": 0}, "n_init=0: use a whole number >= 1"),
        ({"max_iter": -1}, "max_iter=-1"),
        ({"spherical": "yes"}, "spherical='yes': use 'auto', True or False"),
        ({"max_train": 2}, r"max_train=2: use None \(all rows\) or a whole number >= n_clusters"),
    ],
)
def test_bad_parameters_are_named(params, match):
    x, _ = _blobs(k=3, seed=0)
    with pytest.raises(ValueError, match=match):
        KMeans(**{"n_clusters": 3, **params}).fit(x)


def test_bad_input_is_named():
    x, _ = _blobs(k=3, seed=0)
    x[5, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        KMeans(3).fit(x)
    with pytest.raises(ValueError, match="2-D array"):
        KMeans(3).fit(x[0])
    with pytest.raises(RuntimeError, match="not fitted"):
        KMeans(3).predict(x)


def test_suggest_k_finds_the_number_of_classes():
    for k, seed in ((3, 0), (5, 1), (8, 2)):
        x, _ = _blobs(k=k, per=50, seed=seed)
        best, scores = suggest_k(x, k_max=12)
        assert best == k and set(scores) == set(range(2, 13))
        assert scores[k] == max(scores.values())
    x, _ = _blobs(k=4, per=200, seed=4)
    best, scores = suggest_k(x, k_max=6, sample=300)  # silhouette on a sample
    assert best == 4
    with pytest.raises(ValueError, match="too few"):
        suggest_k(x[:2])
    with pytest.raises(ValueError, match="k_max=1"):
        suggest_k(x, k_max=1)


def test_cluster_cli_suggests_k_without_k(tmp_path):
    run = CliRunner().invoke
    x, y = _blobs(k=5, per=40, seed=1)
    items = pd.DataFrame({"id": [f"i{i}" for i in range(len(x))], "kind": y.astype(str)})
    index_dir = tmp_path / "index"
    VectorIndex().build(x, items).save(index_dir)
    page, table = tmp_path / "c.html", tmp_path / "assign.csv"
    r = run(app, ["cluster", str(index_dir), "--html", str(page), "--out", str(table)])
    assert r.exit_code == 0, r.output
    assert "no -k given: k=5 has the best silhouette" in r.output
    assert page.read_text().count("<h2>Cluster") == 5
    assign = pd.read_csv(table)
    assert normalized_mutual_info_score(y, assign["cluster"]) == pytest.approx(1.0)
    r = run(app, ["cluster", str(index_dir), "--html", str(page), "--max-k", "1"])
    assert r.exit_code == 2 and "--max-k 1: use 2 or more" in r.output
    r = run(app, ["cluster", str(index_dir), "--html", str(page), "-k", "999"])
    assert r.exit_code == 2 and "-k must be between 1 and the number of items (200)" in r.output


@pytest.mark.slow
@requires_fashion
def test_issue_folder_tree_through_the_cli():
    """Issue #39: 3 classes x 60 real photos, train / embed train / index build / cluster."""
    from multitag.bench.kmeans import tree_scenario

    out = tree_scenario(FASHION)
    assert out["suggested_k"] == 3
    assert out["now"]["sizes"] == [60, 60, 60] and out["now"]["nmi"] == pytest.approx(1.0)
