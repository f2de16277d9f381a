"""``--engine ray`` beyond ``tag``: the encoder passes of ``catalog build``, ``index build``
and ``train`` on Ray actors (:class:`multitag.vision.ray_engine.RayEncoder`), on ~150 real
photos and a corrupt one. One simulated three-node cluster (``ray.cluster_utils.Cluster``:
1 + 1 + 1 declared CPUs on this machine's two cores, no dashboard) serves the whole module.

Each build runs with a cold feature cache of its own (the Ray build must not read what the
local one stored): outputs equal the local engine's, the corrupt photo is a reject, and the
photos are encoded on more than one node.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.catalog_util import BUILD, sample_rows
from tests.conftest import requires_fashion

ray = pytest.importorskip("ray")
pytestmark = [requires_fashion, pytest.mark.slow]
TOL = 1e-6


@pytest.fixture(scope="module")
def cluster():
    """A head with one CPU (left to Ray's read tasks) and two 1-CPU nodes for the actors."""
    from tests.ray_util import simulated_cluster

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)  # never join a cluster the environment names
        mp.setenv("RAY_AUTH_MODE", "disabled")
        if ray.is_initialized():
            ray.shutdown()
        with simulated_cluster(nodes=2) as sim:
            yield sim


@pytest.fixture
def on_ray(cluster):
    """A context: every encoder pass inside runs on the cluster's actors."""
    from multitag.vision.extraction import encoding_on
    from multitag.vision.ray_engine import RayEncoder, RayOptions

    def start():
        return encoding_on(RayEncoder(RayOptions(address=cluster.address, actors=2)))

    return start


@pytest.fixture
def cold_cache(monkeypatch, tmp_path_factory):
    """Point the feature cache at a new empty folder (the OpenVINO conversions stay shared:
    converting again would only cost time)."""
    shared = Path(os.environ["MULTITAG_CACHE"])
    (shared / "openvino").mkdir(parents=True, exist_ok=True)

    def fresh() -> Path:
        root = tmp_path_factory.mktemp("cold-cache")
        (root / "openvino").symlink_to(shared / "openvino")
        monkeypatch.setenv("MULTITAG_CACHE", str(root))
        return root

    return fresh


@pytest.fixture(scope="module")
def model_dir(trained_tagger, tmp_path_factory) -> Path:
    return Path(trained_tagger.save(tmp_path_factory.mktemp("ray-jobs-model") / "model"))


@pytest.fixture(scope="module")
def manifest(fashion_frame, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-jobs-inputs")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    rows = sample_rows(fashion_frame)[["id", "path"]]
    rows = pd.concat([rows, pd.DataFrame({"id": ["corrupt"], "path": [root / "corrupt.jpg"]})])
    rows.to_csv(root / "items.csv", index=False)
    return root / "items.csv"


def test_catalog_build_on_ray_equals_local(model_dir, manifest, on_ray, cold_cache, tmp_path):
    from multitag.catalog import build_catalog, load_catalog
    from multitag.catalog.store import REJECTS

    cold_cache()
    build_catalog(model_dir, [manifest], tmp_path / "local", **BUILD)
    cold_cache()
    with on_ray() as remote:
        build_catalog(model_dir, [manifest], tmp_path / "ray", **BUILD)
    assert len(remote.nodes) >= 2, remote.nodes  # both actors' nodes encoded photos
    local, got = load_catalog(tmp_path / "local"), load_catalog(tmp_path / "ray")
    tags = ["id", *(t["name"] for t in local.tasks), "cluster", "topic"]
    pd.testing.assert_frame_equal(got.items[tags], local.items[tags])
    np.testing.assert_allclose(got.tagprobs, local.tagprobs, rtol=0, atol=TOL)
    np.testing.assert_allclose(got.embeddings, local.embeddings, rtol=0, atol=TOL)
    _, want = local.load_index().search(local.embeddings[:20], 5)
    _, found = got.load_index().search(local.embeddings[:20], 5)
    np.testing.assert_array_equal(found, want)
    rejects = pd.read_parquet(got.data_dir / REJECTS)
    assert rejects["id"].tolist() == ["corrupt"]  # a reject, not a failed build


def test_index_build_cli_on_ray_equals_local(model_dir, manifest, cluster, cold_cache, tmp_path):
    from typer.testing import CliRunner

    from multitag.cli.main import app
    from multitag.embedding.index import VectorIndex
    from multitag.embedding.search import build_index_dir, similar

    cold_cache()
    build_index_dir(model_dir, [manifest], tmp_path / "local", progress=False)
    cold_cache()
    args = ["index", "build", str(model_dir), str(manifest), "--out", str(tmp_path / "ray")]
    args += ["--engine", "ray", "--address", cluster.address, "--actors", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "1 unreadable images skipped" in out and "photos encoded per Ray node" in out
    local, got = VectorIndex.load(tmp_path / "local"), VectorIndex.load(tmp_path / "ray")
    assert got.items_["id"].tolist() == local.items_["id"].tolist()
    assert "corrupt" not in set(got.items_["id"])
    np.testing.assert_allclose(got.vectors(), local.vectors(), rtol=0, atol=TOL)
    for item in local.items_["id"].iloc[:10]:
        want = similar(tmp_path / "local", item_id=item, k=5)
        pd.testing.assert_frame_equal(similar(tmp_path / "ray", item_id=item, k=5), want)


def test_training_features_on_ray_give_the_same_model(
    trained_tagger, fashion_frame, on_ray, tmp_path
):
    """``train --engine ray``: Ray actors fill the feature cache, the heads train here; the
    model equals one trained on locally extracted features (``trained_tagger``)."""
    from sklearn.base import clone

    tagger = clone(trained_tagger).set_params(runtime__cache_dir=tmp_path / "cache")
    with on_ray() as remote:
        tagger.fit(fashion_frame)
    from multitag.core.digest import file_digest

    contents = {file_digest(p) for p in fashion_frame["path"]}  # each encoded once
    # and each training photo's extra views (views="auto", the default) on Ray too
    train_ids = {str(i) for i in tagger.split_["train_ids"]}
    train = fashion_frame[fashion_frame["id"].astype(str).isin(train_ids)]
    viewed = {file_digest(p) for p in train["path"]}
    n_views = len(tagger.views_["views"])
    assert n_views == 2
    assert sum(remote.nodes.values()) == len(contents) + n_views * len(viewed)
    assert len(remote.nodes) >= 2, remote.nodes
    probe = tagger.predict_proba(fashion_frame["path"].iloc[:40].tolist())
    want = trained_tagger.predict_proba(fashion_frame["path"].iloc[:40].tolist())
    for task, p in want["proba"].items():
        np.testing.assert_allclose(probe["proba"][task], p, rtol=0, atol=TOL)
