"""Catalogue build on real fashion-products images: tags, topics, map, clusters, index,
resume after an interruption, incremental growth, the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.catalog_util import BUILD, built_catalog, sample_rows, write_manifest
from tests.conftest import requires_fashion

pytestmark = [pytest.mark.slow, requires_fashion]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, trained_tagger, fashion_frame):
    return built_catalog(tmp_path_factory, trained_tagger, fashion_frame)


class Interrupted(Exception):
    pass


def test_build_contents(catalog, fashion_frame):
    from multitag.catalog import load_catalog

    cat_dir, model_dir, _ = catalog
    cat = load_catalog(cat_dir)
    rows = sample_rows(fashion_frame)
    n = len(rows)
    assert len(cat.items) == n and list(cat.items["id"]) == list(rows["id"])
    meta = json.loads((cat_dir / "catalog.json").read_text())
    assert meta["embedding"]["source"] == "features"
    assert meta["layout"]["method"] == "umap" and meta["topics"]["on"] == "tags"
    assert meta["model_dir"] == str(model_dir.resolve())
    # tags for every task, with full probabilities that sum to one per multiclass task
    n_cols = sum(len(t["classes"]) for t in meta["tasks"])
    assert cat.tagprobs.shape == (n, n_cols) == (n, len(meta["tag_columns"]))
    start = 0
    for task in meta["tasks"]:
        block = cat.tagprobs[:, start : start + len(task["classes"])]
        start += len(task["classes"])
        np.testing.assert_allclose(block.sum(1), 1, atol=1e-3)
        best = np.array(task["classes"])[block.argmax(1)]
        assert (best == cat.items[task["name"]].to_numpy()).all()
    # the tagger learnt article types: the catalogue's tags mostly agree with the labels
    agree = (cat.items["articleType"].to_numpy() == rows["articleType"].to_numpy()).mean()
    assert agree > 0.6
    assert all(len(v) == 5 for v in cat.items["imagenet"])
    # embeddings are unit rows; the index finds each item as its own nearest neighbour
    np.testing.assert_allclose(np.linalg.norm(cat.embeddings, axis=1), 1, atol=1e-4)
    import faiss

    index = faiss.read_index(str(cat.index_path))
    assert index.ntotal == n
    _, nn = index.search(cat.embeddings[:10].astype(np.float32), 1)
    assert (nn[:, 0] == np.arange(10)).all()
    # topics named by their top tags, k-means clusters, a 2-D map in [-1, 1]
    topics = meta["topics"]["topics"]
    assert len(topics) == BUILD["n_topics"]
    assert sum(t["size"] for t in topics) == n
    assert all(t["name"] and len(t["top_tags"]) == 3 for t in topics)
    assert set(cat.items["topic"]) <= set(range(len(topics)))
    assert cat.items["cluster"].nunique() == BUILD["n_clusters"]
    # the catalogue's clusters are `multitag cluster`'s on the same vectors (one k-means)
    from multitag.embedding.cluster import cluster_index
    from multitag.embedding.index import VectorIndex

    same_vectors = VectorIndex().build(cat.embeddings, cat.items[["id"]])
    assign, _ = cluster_index(same_vectors, BUILD["n_clusters"])
    np.testing.assert_array_equal(assign, cat.items["cluster"].to_numpy())
    xy = cat.items[["x", "y"]].to_numpy()
    assert np.abs(xy).max() <= 1.0001 and xy.std(0).min() > 0.1
    # items of one article type sit closer together on the map than random pairs
    same = rows["articleType"].to_numpy()
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    assert d[same[:, None] == same[None]].mean() < 0.8 * d.mean()


def test_resume_after_interruption_equals_uninterrupted(
    catalog, tmp_path, trained_tagger, fashion_frame
):
    from multitag.catalog import build_catalog, load_catalog

    ref_dir, model_dir, manifest = catalog
    out = tmp_path / "resumed"

    def kill_after_first(part, done, total):
        raise Interrupted(f"killed after part {part} ({done}/{total})")

    with pytest.raises(Interrupted):
        build_catalog(model_dir, [manifest], out, **{**BUILD, "on_chunk": kill_after_first})
    assert not (out / "catalog.json").exists()
    assert len(list((out / "parts").glob("*.done.json"))) == 1
    seen = []
    meta = build_catalog(
        model_dir, [manifest], out, **{**BUILD, "on_chunk": lambda *a: seen.append(a)}
    )
    n = len(sample_rows(fashion_frame))
    assert meta["last_build"]["new_items"] == n - 64  # the first chunk was not redone
    assert len(seen) == -(-(n - 64) // 64)
    ref, got = load_catalog(ref_dir), load_catalog(out)
    pd.testing.assert_frame_equal(ref.items.drop(columns="path"), got.items.drop(columns="path"))
    np.testing.assert_allclose(ref.embeddings, got.embeddings, atol=1e-6)
    assert ref.meta["topics"]["topics"] == got.meta["topics"]["topics"]


def test_incremental_adds_only_new_items(catalog, tmp_path, fashion_frame):
    from multitag.catalog import build_catalog, load_catalog

    ref_dir, model_dir, _ = catalog
    out = tmp_path / "grown"
    shutil.copytree(ref_dir, out)
    old = load_catalog(out)
    extra = fashion_frame.groupby("articleType").nth(slice(19, 22)).reset_index(drop=True)
    extra = extra.assign(id=extra["id"].astype(str))
    rows = pd.concat([sample_rows(fashion_frame), extra], ignore_index=True)
    manifest = write_manifest(rows, tmp_path / "more.csv")
    meta = build_catalog(model_dir, [manifest], out, **BUILD)
    assert (
        meta["last_build"]["new_items"] == len(extra) and not meta["last_build"]["refit_overview"]
    )
    new = load_catalog(out)
    assert len(new.items) == len(old.items) + len(extra)
    # old items keep their tags, positions, topics and clusters
    pd.testing.assert_frame_equal(new.items.iloc[: len(old.items)], old.items)
    assert new.meta["topics"]["topics"][0]["name"] == old.meta["topics"]["topics"][0]["name"]
    added = new.items.iloc[len(old.items) :]
    assert list(added["id"]) == list(extra["id"])
    # new items land near their nearest old neighbours, in the nearest centroid's cluster
    emb_new = new.embeddings[len(old.items) :]
    nn = (emb_new @ old.embeddings.T).argmax(1)
    gap = np.linalg.norm(
        added[["x", "y"]].to_numpy() - old.items[["x", "y"]].to_numpy()[nn], axis=1
    )
    assert np.median(gap) < 0.3
    cent = new.fit["centroids"]
    expect = ((emb_new[:, None] - cent[None]) ** 2).sum(-1).argmin(1)
    assert (added["cluster"].to_numpy() == expect).all()
    # the index covers the new items too
    import faiss

    assert faiss.read_index(str(new.index_path)).ntotal == len(new.items)
    # a rerun with nothing new tags nothing
    again = build_catalog(model_dir, [manifest], out, **BUILD)
    assert again["last_build"]["new_items"] == 0 and again["n_items"] == len(new.items)


def test_cli_catalog_build_tsne_topics_on_features(catalog, tmp_path, fashion_frame):
    from typer.testing import CliRunner

    from multitag.catalog import load_catalog
    from multitag.cli.main import app

    _, model_dir, _ = catalog
    rows = sample_rows(fashion_frame).iloc[:40]
    manifest = write_manifest(rows, tmp_path / "few.csv")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "cat"
    args = ["catalog", "build", str(model_dir), str(manifest), str(bad), "--out", str(out)]
    args += ["--layout", "tsne", "--topics-on", "features", "--topics", "4", "--clusters", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cat = load_catalog(out)
    assert len(cat.items) == 40 and cat.meta["n_rejects"] == 1
    assert cat.meta["layout"]["method"] == "tsne" and cat.meta["topics"]["on"] == "features"
    assert len(cat.meta["topics"]["topics"]) == 4 and "nmf_offset" in cat.fit
    rejects = pd.read_parquet(cat.data_dir / "rejects.parquet")
    assert rejects["id"].tolist() == ["broken"] and rejects["reason"].iloc[0]
