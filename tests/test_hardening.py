"""Production hardening without a model: writer locks, model-file integrity records, the
catalogue's publish step and torn-catalogue refusal, label hygiene in validate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from multitag.catalog import store
from multitag.core import integrity
from multitag.core.locks import WriterLocked, lock_file, writer_lock
from multitag.data.validate import label_variants, validate

HOLD = (
    "import sys, time\n"
    "from multitag.core.locks import writer_lock\n"
    "with writer_lock(sys.argv[1], 'catalogue build', folder=True):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(60)\n"
)


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_second_writer_fails_fast_naming_the_holder(tmp_path):
    target = tmp_path / "cat"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(WriterLocked) as err, writer_lock(target, "catalogue", folder=True):
            pass
        assert time.monotonic() - t0 < 5  # fails at once, does not wait for the holder
        message = str(err.value)
        assert f"PID {holder.pid}" in message and os.uname().nodename in message
        assert "started 20" in message and "wait for it to finish" in message
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale and the next writer takes over
    info = json.loads(lock_file(target, folder=True).read_text())
    assert info["pid"] == holder.pid
    with writer_lock(target, "catalogue", folder=True) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not lock_file(target, folder=True).exists()  # a clean release leaves nothing


def test_stale_lock_is_reported(tmp_path, caplog):
    out = tmp_path / "tags.csv"
    stale = {"pid": 999999, "host": "gone", "started": "2020-01-01T00:00:00", "command": "x"}
    lock_file(out, folder=False).write_text(json.dumps(stale))
    with caplog.at_level("WARNING"), writer_lock(out, "tag", folder=False):
        pass
    assert "stale lock from PID 999999 on gone" in caplog.text


def test_lock_is_reentrant_within_a_process(tmp_path):
    with writer_lock(tmp_path, "model", folder=True), writer_lock(tmp_path, "model", folder=True):
        pass
    with writer_lock(tmp_path, "model", folder=True):  # released after both exits
        pass


def test_integrity_seal_and_verify(tmp_path):
    (tmp_path / "w.bin").write_bytes(os.urandom(4096))
    sealed = integrity.seal({"a": 1, "x": np.float32(0.5)}, tmp_path, ["w.bin"])
    (tmp_path / "c.json").write_text(json.dumps(sealed))
    obj = integrity.read_json(tmp_path / "c.json")
    integrity.verify(tmp_path, obj, "c.json")
    data = bytearray((tmp_path / "w.bin").read_bytes())
    data[1000] ^= 0x01  # one flipped bit
    (tmp_path / "w.bin").write_bytes(bytes(data))
    with pytest.raises(integrity.ModelFileError, match=r"w.bin does not match the SHA-256"):
        integrity.verify(tmp_path, obj, "c.json")
    (tmp_path / "w.bin").write_bytes(bytes(data[:100]))
    with pytest.raises(integrity.ModelFileError, match=r"w.bin has 100 bytes, c.json records"):
        integrity.verify(tmp_path, obj, "c.json")
    (tmp_path / "w.bin").unlink()
    with pytest.raises(integrity.ModelFileError, match="w.bin is missing"):
        integrity.verify(tmp_path, obj, "c.json")
    (tmp_path / "c.json").write_text(json.dumps({**sealed, "a": 2}))
    with pytest.raises(integrity.ModelFileError, match="changed after it was saved"):
        integrity.read_json(tmp_path / "c.json")
    (tmp_path / "c.json").write_text(json.dumps(sealed)[:40])
    with pytest.raises(integrity.ModelFileError, match="not valid JSON"):
        integrity.read_json(tmp_path / "c.json")
    (tmp_path / "c.json").write_text("")
    with pytest.raises(integrity.ModelFileError, match="empty"):
        integrity.read_json(tmp_path / "c.json")
    integrity.verify(tmp_path, {"a": 1}, "c.json")  # saved before integrity records: unchecked


def _tiny_catalog(directory, n=12, dim=8, seed=0):
    import faiss

    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    items = pd.DataFrame({"id": [f"i{i}" for i in range(n)], "x": 0.0, "y": 0.0})
    index = faiss.IndexFlatIP(dim)
    index.add(emb)
    meta = {"tasks": [], "tag_columns": [], "topics": {"topics": []}}
    arrays = {"embeddings": emb, "tagprobs": np.zeros((n, 2), np.float32)}
    return store.save_catalog(directory, meta, items, arrays, {"centroids": emb[:2]}, index=index)


def test_publish_keeps_the_previous_state_and_removes_older(tmp_path):
    states = [_tiny_catalog(tmp_path, n=10 + i)["state"] for i in range(3)]
    assert states == ["versions/v000001", "versions/v000002", "versions/v000003"]
    kept = sorted(p.name for p in (tmp_path / "versions").iterdir())
    assert kept == ["v000002", "v000003"]  # the current and the one a reader may still hold
    cat = store.load_catalog(tmp_path)
    assert len(cat.items) == 12 and cat.load_index().ntotal == 12
    assert cat.data_dir == tmp_path / "versions/v000003"


def test_torn_catalogue_is_refused_in_one_line(tmp_path):
    _tiny_catalog(tmp_path, n=10)
    cat = store.load_catalog(tmp_path)
    # an index from another state (the issue: 500 items, 1,000 vectors)
    other = tmp_path / "other"
    _tiny_catalog(other, n=20)
    os.replace(store.load_catalog(other).index_path, cat.index_path)
    with pytest.raises(
        store.CatalogError, match=r"torn catalogue.*items.parquet 10, index.faiss 20"
    ):
        store.load_catalog(tmp_path).load_index()
    cat.index_path.unlink()
    with pytest.raises(store.CatalogError, match="index.faiss is missing"):
        store.load_catalog(tmp_path).load_index()
    np.save(cat.data_dir / "embeddings.npy", np.zeros((7, 8), np.float32))
    with pytest.raises(store.CatalogError, match=r"embeddings.npy 7") as err:
        store.load_catalog(tmp_path)
    assert "\n" not in str(err.value) and "multitag catalog build" in str(err.value)
    (tmp_path / "catalog.json").write_text('{"complete": tr')
    with pytest.raises(store.CatalogError, match="catalog.json: not valid JSON"):
        store.load_catalog(tmp_path)


def test_catalogue_without_state_folders_still_loads(tmp_path):
    """Catalogues written before state folders kept every file beside catalog.json."""
    _tiny_catalog(tmp_path / "new", n=9)
    data = store.load_catalog(tmp_path / "new").data_dir
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in data.rglob("*"):
        if p.is_file():
            (flat / p.relative_to(data)).parent.mkdir(parents=True, exist_ok=True)
            (flat / p.relative_to(data)).write_bytes(p.read_bytes())
    meta = json.loads((tmp_path / "new/catalog.json").read_text())
    del meta["state"]
    (flat / "catalog.json").write_text(json.dumps(meta))
    cat = store.load_catalog(flat)
    assert cat.data_dir == flat and cat.load_index().ntotal == len(cat.items) == 9


def test_validate_flags_labels_differing_only_by_case_or_spaces(tmp_path):
    frame = pd.DataFrame(
        {
            "id": [str(i) for i in range(7)],
            "path": [str(tmp_path / f"{i}.jpg") for i in range(7)],
            "gender": ["Men", "Men", "men ", "Women", "Women", "MEN", "Women"],
            "type": ["Sports Shoes", "Sports  Shoes", "Shirts", "Shirts", "a", "b", "c"],
        }
    )
    report = validate(frame, ["gender", "type"], decode=False, progress=False)
    assert report.label_variants["gender"] == [{"Men": 2, "men": 1, "MEN": 1}]
    assert report.label_variants["type"] == [{"Sports Shoes": 1, "Sports  Shoes": 1}]
    lines = [line for line in report.problems() if "differ only by case" in line]
    assert len(lines) == 2 and "'Men' (2), 'men' (1), 'MEN' (1)" in lines[0]
    assert report.to_dict()["label_variants"]["gender"]
    assert label_variants(Counter(["a", "b", "A "])) == [{"a": 1, "A ": 1}]


def test_serve_refuses_a_corrupt_catalog_json_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from multitag.cli.main import app

    (tmp_path / "catalog.json").write_text('{"complete": tr')
    res = CliRunner().invoke(app, ["serve", str(tmp_path)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "catalog.json: not valid JSON" in " ".join(res.output.split())
