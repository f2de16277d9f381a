"""Streamed, resumable ``tag`` output (:mod:`multitag.tagger.stream`): a Parquet dataset folder
written shard by shard, resumed by an anti-join on ``(id, digest)`` for one model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from multitag.core.digest import file_digest
from multitag.core.faults import ENV as KILL_ENV
from multitag.tagger import shards
from multitag.tagger.stream_job import tag_to_dataset
from tests.conftest import requires_fashion


def _rows(schema: pa.Schema, ids: list[str], model: str) -> pa.Table:
    frame = pd.DataFrame({"id": ids, "digest": [f"d{i}" for i in ids], "model": model})
    return shards.to_table(frame, schema)


def test_shards_resume_keys_and_one_model_per_folder(tmp_path):
    schema = shards.tag_schema(["colour"], imagenet=False)
    assert schema.names[:5] == list(shards.KEY_COLUMNS)
    assert schema.names[5:] == ["colour", "colour_prob", "colour_top"]
    writer = shards.ShardWriter(tmp_path / "out", schema, "model-a", {"top_k": 3})
    writer.write(_rows(schema, ["1", "2"], "model-a"))
    assert writer.write(_rows(schema, [], "model-a")) is None  # no empty shards
    writer.write(_rows(schema, ["3"], "model-a"))
    again = shards.ShardWriter(tmp_path / "out", schema, "model-a", {"top_k": 3})
    assert again.next_part == 2
    assert again.done_keys() == {("1", "d1"), ("2", "d2"), ("3", "d3")}
    assert shards.read_dataset(tmp_path / "out")["id"].tolist() == ["1", "2", "3"]
    with pytest.raises(ValueError, match="another model.*new --out folder"):
        shards.ShardWriter(tmp_path / "out", schema, "model-b", {"model_dir": "b"})
    with pytest.raises(ValueError, match="written with --top-k 3: rerun with it"):
        shards.ShardWriter(tmp_path / "out", schema, "model-a", {"model_dir": "a", "top_k": 5})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        shards.ShardWriter(tmp_path / "file", schema, "model-a", {})


def test_model_fingerprint_follows_the_weights(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"kind": "multitag-tagger"}))
    (model / "model.safetensors").write_bytes(b"weights one")
    first = shards.model_fingerprint(model)
    assert first == shards.model_fingerprint(model) and len(first) == 64
    (model / "model.safetensors").write_bytes(b"weights two")
    assert shards.model_fingerprint(model) != first
    with pytest.raises(FileNotFoundError, match="not a saved multitag model"):
        shards.model_fingerprint(tmp_path / "empty")


# ------------------------------------------------------------------ real photos (slow)
@pytest.fixture(scope="module")
def model_dir(trained_tagger, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stream-model") / "model"
    trained_tagger.save(path)
    return path


@pytest.fixture(scope="module")
def manifest(fashion_frame, tmp_path_factory) -> Path:
    """The ~300 real photos, one corrupt photo and one missing file."""
    root = tmp_path_factory.mktemp("stream-inputs")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    extra = pd.DataFrame(
        {"id": ["corrupt", "missing"], "path": [root / "corrupt.jpg", root / "missing.jpg"]}
    )
    frame = pd.concat([fashion_frame[["id", "path"]], extra], ignore_index=True)
    frame.to_csv(root / "inputs.csv", index=False)
    return root / "inputs.csv"


def _cli(args: list, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "multitag.cli.main", "tag", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("id").reset_index(drop=True)


@requires_fashion
@pytest.mark.slow
def test_dataset_holds_the_single_files_tags_and_error_rows(
    trained_tagger, model_dir, manifest, tmp_path
):
    from multitag.tagger.batch import tag_to_file

    args = dict(id_col="id", path_col="path")
    report = tag_to_dataset(
        model_dir, [manifest], tmp_path / "tags", shard_rows=100, progress=False, **args
    )
    got = shards.read_dataset(tmp_path / "tags")
    n_photos = len(pd.read_csv(manifest)) - 2
    assert report.written == len(got) == n_photos + 1
    assert report.shards == 3  # 100 rows rounded up to two model batches of 64
    assert report.errors == 1 and report.n_rejected_inputs == 1
    assert got["id"].is_unique
    bad = got.set_index("id").loc["corrupt"]
    assert isinstance(bad["error"], str) and bad["error"] and pd.isna(bad["gender"])
    rejects = pd.read_csv(tmp_path / "tags" / shards.REJECTS)
    assert rejects["id"].tolist() == ["missing"]
    first = got.iloc[0]
    assert first["digest"] == file_digest(first["path"])
    assert first["model"] == shards.model_fingerprint(model_dir)

    tag_to_file(trained_tagger, [manifest], tmp_path / "one.parquet", **args)
    single = _by_id(pd.read_parquet(tmp_path / "one.parquet").astype({"id": str}))
    ok = _by_id(got[got["error"].isna()])
    assert ok["id"].tolist() == single["id"].tolist()
    for task in trained_tagger.tasks_:
        assert ok[task.name].tolist() == single[task.name].tolist()
        np.testing.assert_allclose(ok[f"{task.name}_prob"], single[f"{task.name}_prob"])
        assert (
            ok[f"{task.name}_top"].map(list).tolist()
            == single[f"{task.name}_top"].map(list).tolist()
        )

    again = tag_to_dataset(model_dir, [manifest], tmp_path / "tags", progress=False, **args)
    assert again.written == 0 and again.skipped_done == n_photos + 1
    assert len(shards.read_dataset(tmp_path / "tags")) == len(got)


@requires_fashion
@pytest.mark.slow
def test_killed_job_reruns_to_the_uninterrupted_rows(model_dir, manifest, tmp_path):
    args = [model_dir, manifest, "--id-col", "id", "--path-col", "path", "--shard-rows", "64"]
    full = _cli([*args, "--out", tmp_path / "full"])
    assert full.returncode == 0, full.stderr
    killed = _cli([*args, "--out", tmp_path / "resumed"], kill_at="tag.shard#2")
    assert killed.returncode == -9, killed.stderr
    assert len(shards.read_dataset(tmp_path / "resumed")) == 128
    rerun = _cli([*args, "--out", tmp_path / "resumed"])
    assert rerun.returncode == 0, rerun.stderr
    assert "128 already there" in " ".join((rerun.stdout + rerun.stderr).split())
    got = shards.read_dataset(tmp_path / "resumed")
    assert got["id"].is_unique
    pd.testing.assert_frame_equal(_by_id(got), _by_id(shards.read_dataset(tmp_path / "full")))


# VmHWM is the child's own peak: ru_maxrss would keep the (bigger) pytest parent's across exec
_PEAK = """
import sys
from multitag.core.runtime import keep_freed_memory
from multitag.tagger.stream_job import tag_to_dataset
keep_freed_memory()  # as the command line runs: freed memory kept for reuse, never trimmed
tag_to_dataset(sys.argv[1], [sys.argv[2]], sys.argv[3], shard_rows=1000, progress=False,
               id_col="id", path_col="path")
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1])
"""


@requires_fashion
@pytest.mark.slow
@pytest.mark.timeout(1800)  # 22,000 photos tagged: over 900 s on the shared 2-core host
def test_peak_memory_does_not_grow_with_the_job(model_dir, fashion_frame, tmp_path):
    """2,000 and 20,000 rows (the real photos repeated under new ids): peak RSS within 10 %."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    peaks = {}
    for n in (2_000, 20_000):
        rows = fashion_frame[["path"]].sample(n, replace=True, random_state=0)
        rows.insert(0, "id", [f"row{i}" for i in range(n)])
        rows.to_csv(tmp_path / f"{n}.csv", index=False)
        done = subprocess.run(
            [sys.executable, "-c", _PEAK, model_dir, tmp_path / f"{n}.csv", tmp_path / str(n)],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr
        assert len(shards.read_dataset(tmp_path / str(n), ["id"])) == n
        peaks[n] = int(done.stdout.split()[-1])
    assert abs(peaks[20_000] - peaks[2_000]) / peaks[2_000] < 0.10, peaks
