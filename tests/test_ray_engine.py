"""``--engine ray`` (:mod:`multitag.tagger.ray_engine`) on ~300 real photos: a local Ray
cluster and a simulated three-node one; the rows equal the local engine's, a corrupt photo
is an error row, a killed job resumes. Ray processes are shut down after every test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from multitag.core.faults import ENV as KILL_ENV
from multitag.tagger import shards
from multitag.tagger.stream_job import tag_to_dataset
from tests.conftest import requires_fashion

ray = pytest.importorskip("ray")
pytestmark = [requires_fashion, pytest.mark.slow]
ARGS = dict(id_col="id", path_col="path", progress=False)


@pytest.fixture(autouse=True)
def _no_outside_cluster(monkeypatch):
    """Never join a cluster named by the environment; leave none running."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(trained_tagger, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ray-model") / "model"
    trained_tagger.save(path)
    return path


@pytest.fixture(scope="module")
def manifest(fashion_frame, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-inputs")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    extra = pd.DataFrame({"id": ["corrupt"], "path": [root / "corrupt.jpg"]})
    frame = pd.concat([fashion_frame[["id", "path"]], extra], ignore_index=True)
    frame.to_csv(root / "inputs.csv", index=False)
    return root / "inputs.csv"


@pytest.fixture(scope="module")
def local_rows(model_dir, manifest, tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("ray-local") / "tags"
    tag_to_dataset(model_dir, [manifest], out, shard_rows=128, **ARGS)
    return _by_id(shards.read_dataset(out))


def _by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("id").reset_index(drop=True)


def assert_same_rows(got: pd.DataFrame, ref: pd.DataFrame) -> None:
    """Same rows, keys, labels and errors; probabilities within 1e-6 (the outputs are
    rounded to 6 decimals, so a last-digit flip is the most two engines may differ by)."""
    got, ref = _by_id(got), _by_id(ref)
    assert got["id"].is_unique and list(got.columns) == list(ref.columns)
    tol = 1e-6 + 1e-9
    for col in ref.columns:
        if col.endswith("_prob"):
            as_written = [np.round(f[col].to_numpy(np.float64), 6) for f in (got, ref)]  # fp32
            np.testing.assert_allclose(*as_written, rtol=0, atol=tol)
        elif col.endswith("_top") or col == "imagenet_top5":
            for a, b in zip(got[col], ref[col]):
                if b is None:
                    assert a is None
                    continue
                assert [d["label"] for d in a] == [d["label"] for d in b]
                np.testing.assert_allclose(
                    [d["prob"] for d in a], [d["prob"] for d in b], rtol=0, atol=tol
                )
        else:
            pd.testing.assert_series_equal(got[col], ref[col])


@pytest.mark.parametrize(
    "pool",
    [{"actors": 2, "cpus_per_actor": 1}, {}],  # {}: this machine's default pool
    ids=["2x1", "default"],
)
def test_local_ray_cluster_equals_the_local_engine(model_dir, manifest, local_rows, tmp_path, pool):
    report = tag_to_dataset(
        model_dir,
        [manifest],
        tmp_path / "tags",
        engine="ray",
        shard_rows=128,
        ray_options=pool,
        **ARGS,
    )
    got = shards.read_dataset(tmp_path / "tags")
    assert report.written == len(local_rows) and report.errors == 1
    assert_same_rows(got, local_rows)
    bad = got.set_index("id").loc["corrupt"]
    assert isinstance(bad["error"], str) and pd.isna(bad["gender"])
    assert not ray.is_initialized()  # the job shut down the Ray it started


def test_simulated_cluster_spreads_work_over_nodes(model_dir, manifest, local_rows, tmp_path):
    from tests.ray_util import simulated_cluster

    with simulated_cluster(nodes=2) as cluster:  # 1-CPU nodes: the 2 actors cannot share one
        report = tag_to_dataset(
            model_dir,
            [manifest],
            tmp_path / "tags",
            engine="ray",
            shard_rows=128,
            ray_options={"address": cluster.address, "actors": 2, "cpus_per_actor": 1},
            **ARGS,
        )
    assert len(report.nodes) >= 2, report.nodes
    assert sum(report.nodes.values()) == len(local_rows)
    assert_same_rows(shards.read_dataset(tmp_path / "tags"), local_rows)


def test_killed_ray_job_reruns_to_the_same_rows(model_dir, manifest, local_rows, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), KILL_ENV: "tag.shard#2"}
    args = [sys.executable, "-m", "multitag.cli.main", "tag", model_dir, manifest, "--out"]
    args += [tmp_path / "tags", "--id-col", "id", "--path-col", "path", "--engine", "ray"]
    args += ["--shard-rows", "64", "--actors", "2"]
    run = dict(capture_output=True, text=True, timeout=600)
    killed = subprocess.run(list(map(str, args)), env=env, **run)
    assert killed.returncode == -9, killed.stderr
    assert len(shards.read_dataset(tmp_path / "tags")) == 128
    del env[KILL_ENV]
    rerun = subprocess.run(list(map(str, args)), env=env, **run)
    assert rerun.returncode == 0, rerun.stderr
    assert "128 already there" in " ".join((rerun.stdout + rerun.stderr).split())
    assert_same_rows(shards.read_dataset(tmp_path / "tags"), local_rows)


def test_a_job_without_address_starts_its_own_ray_beside_another_cluster(
    model_dir, manifest, local_rows, tmp_path
):
    """Another Ray cluster running on this machine (here a simulated one, this process
    disconnected from it) is not joined: Ray would refuse the job's declared CPUs."""
    from tests.ray_util import simulated_cluster

    with simulated_cluster(nodes=1):
        ray.shutdown()
        report = tag_to_dataset(
            model_dir, [manifest], tmp_path / "tags", engine="ray", shard_rows=128, **ARGS
        )
    assert report.written == len(local_rows)
    assert_same_rows(shards.read_dataset(tmp_path / "tags"), local_rows)
