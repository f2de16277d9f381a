"""Reliability under hostile input and faults (``pytest -m reliability``).

A tiny tagger (three colours, two shapes, generated product photos, real Lite0 weights at
64 px) keeps every run to seconds. Processes are killed with SIGKILL at deterministic points
(``MULTITAG_TEST_KILL_AT``, :mod:`multitag.core.faults`) inside chunk commits and the publish step;
each kill is followed by a rerun that must end identical to an uninterrupted run. Two writers
at once, corrupt model files, disk full and a corpus of hostile image files complete it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from multitag.catalog import build_catalog, load_catalog, store
from multitag.cli.main import app
from multitag.core.faults import ENV as KILL_ENV
from multitag.core.integrity import ModelFileError
from multitag.core.io import read_table_any
from multitag.core.locks import WriterLocked, lock_file
from tests.hostile import write_corpus

pytestmark = [pytest.mark.reliability, pytest.mark.slow]  # minutes: not in the fast tier
runner = CliRunner()
COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 170, 30)}
BUILD = dict(chunk_size=8, n_topics=3, n_clusters=3, layout="tsne", progress=False)
BUILD_ARGS = ["--chunk-size", "8", "--topics", "3", "--clusters", "3", "--layout", "tsne"]
TRAIN_ARGS = ["--tasks", "colour,shape", "--image-size", "64", "--epochs", "3"]
TRAIN_ARGS += ["--min-count", "2", "--framing", "none", "--path-col", "path", "--seed", "1"]


def _photo(path: Path, colour, tall: bool, jitter) -> None:
    arr = np.full((80, 60, 3), 255, np.uint8)
    box = (slice(10, 70), slice(20, 40)) if tall else (slice(30, 50), slice(5, 55))
    arr[box] = np.clip(np.array(colour) + jitter, 0, 255)
    Image.fromarray(arr).save(path, quality=92)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``{root, images, manifest, model}``: 36 photos (one 'purple' row: a rare class that
    training folds into 'other'), and a tagger trained on them in this process (which also
    warms the feature cache that every subprocess below shares)."""
    from multitag import MultiTaskTagger
    from multitag.tagger.config import from_flat

    root = tmp_path_factory.mktemp("tiny")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(36):
        name = "purple" if i == 35 else list(COLOURS)[i % 3]
        colour = (140, 30, 160) if name == "purple" else COLOURS[name]
        path = images / f"{1000 + i}.jpg"
        _photo(path, colour, tall=bool(i % 2), jitter=rng.integers(-20, 20, 3))
        shape = "tall" if i % 2 else "wide"
        rows.append({"id": str(1000 + i), "path": str(path), "colour": name, "shape": shape})
    frame = pd.DataFrame(rows)
    frame.to_csv(root / "data.csv", index=False)
    tagger = MultiTaskTagger(
        ["colour", "shape"],
        **from_flat(dict(image_size=64, epochs=3, min_count=2, framing="none", progress=False)),
    )
    tagger.fit(frame)
    tagger.save(root / "model")
    return {"root": root, "images": images, "manifest": root / "data.csv", "model": root / "model"}


def _env(kill_at: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "MULTITAG_LOG": "warning"}
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    return env


def _cli(args: list, kill_at: str | None = None, timeout: float = 300):
    """Run ``multitag ARGS`` in a fresh process (SIGKILLed at ``kill_at``)."""
    return subprocess.run(
        [sys.executable, "-m", "multitag.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(kill_at),
        timeout=timeout,
    )


def _one_line(output: str) -> str:
    """The CLI's message with rich's wrapping undone."""
    return re.sub(r"\s*\n\s*", " ", output.strip())


# ---------------------------------------------------------------------------- catalogue
def _assert_same_catalog(got_dir: Path, ref_dir: Path, settled: bool = True) -> None:
    """Same published content; ``settled``: also no staging or extra states left behind."""
    got, ref = load_catalog(got_dir), load_catalog(ref_dir)
    pd.testing.assert_frame_equal(got.items, ref.items)
    np.testing.assert_allclose(got.embeddings, ref.embeddings, atol=1e-6)
    np.testing.assert_allclose(got.tagprobs, ref.tagprobs, atol=1e-6)
    assert sorted(got.fit) == sorted(ref.fit)
    for name in ref.fit:
        np.testing.assert_allclose(got.fit[name], ref.fit[name], atol=1e-5)
    assert (
        got.meta["topics"] == ref.meta["topics"] and got.meta["n_rejects"] == ref.meta["n_rejects"]
    )
    assert got.load_index().ntotal == ref.load_index().ntotal == len(ref.items)
    leftovers = sorted(p.name for p in (got_dir / "versions").iterdir())
    assert not settled or len(leftovers) <= 2 and not [n for n in leftovers if n.startswith(".")], (
        leftovers
    )


@pytest.fixture(scope="module")
def catalogs(tiny, tmp_path_factory):
    """Uninterrupted references: a full build of all 36 photos; a build of the first 24
    (the base of incremental builds) and that base grown to 36."""
    root = tmp_path_factory.mktemp("catalogs")
    frame = pd.read_csv(tiny["manifest"], dtype=str)
    first = root / "first24.csv"
    frame.iloc[:24].to_csv(first, index=False)
    build_catalog(tiny["model"], [tiny["manifest"]], root / "full", **BUILD)
    build_catalog(tiny["model"], [first], root / "base", **BUILD)
    shutil.copytree(root / "base", root / "grown")
    build_catalog(tiny["model"], [tiny["manifest"]], root / "grown", **BUILD)
    return root


# each kill is a fresh process (seconds of imports): a few points, each a different window
FULL_KILLS = [
    "catalog.part#2",  # two chunks committed, the rest not tagged
    "catalog.publish.arrays#2",  # inside the publish step: state half-written
    "catalog.publish.pointer",  # state complete, catalog.json not yet replaced
]


@pytest.mark.parametrize("kill_at", FULL_KILLS)
def test_catalog_build_killed_then_rerun_is_identical(kill_at, tiny, catalogs, tmp_path):
    out = tmp_path / "cat"
    res = _cli(
        ["catalog", "build", tiny["model"], tiny["manifest"], "--out", out, *BUILD_ARGS], kill_at
    )
    assert res.returncode == -signal.SIGKILL, res.stderr
    published = kill_at == "catalog.publish.cleanup"
    assert store.is_built(out) == published  # never complete: true over a partial state
    if published:
        _assert_same_catalog(out, catalogs / "full", settled=False)
    build_catalog(tiny["model"], [tiny["manifest"]], out, **BUILD)
    _assert_same_catalog(out, catalogs / "full")


INCREMENTAL_KILLS = [
    "catalog.part#1",  # one of two new chunks committed
    "catalog.publish.index",  # state written up to the index, no items yet
    "catalog.publish.cleanup",  # published, old states not yet removed
]


@pytest.mark.parametrize("kill_at", INCREMENTAL_KILLS)
def test_incremental_build_killed_keeps_the_old_state_then_rerun_is_identical(
    kill_at, tiny, catalogs, tmp_path
):
    out = tmp_path / "cat"
    shutil.copytree(catalogs / "base", out)
    res = _cli(
        ["catalog", "build", tiny["model"], tiny["manifest"], "--out", out, *BUILD_ARGS], kill_at
    )
    assert res.returncode == -signal.SIGKILL, res.stderr
    # a reader (serve) sees the old state or the new one, whole: never a mix
    seen = load_catalog(out)
    assert seen.load_index().ntotal == len(seen.items) == len(seen.embeddings)
    if kill_at == "catalog.publish.cleanup":
        _assert_same_catalog(out, catalogs / "grown", settled=False)
    else:
        _assert_same_catalog(out, catalogs / "base", settled=False)
    build_catalog(tiny["model"], [tiny["manifest"]], out, **BUILD)
    _assert_same_catalog(out, catalogs / "grown")


@pytest.mark.parametrize("delay", [0.5, 2.0])
def test_catalog_build_killed_at_a_moment_then_rerun_is_identical(delay, tiny, catalogs, tmp_path):
    """Kills by timing (after the build took its lock) land anywhere, inside atomic writes
    too: the rerun removes their temp files and ends identical."""
    out = tmp_path / "cat"
    build = subprocess.Popen(
        [sys.executable, "-m", "multitag.cli.main", "catalog", "build", str(tiny["model"]),
         str(tiny["manifest"]), "--out", str(out), *BUILD_ARGS],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
    )  # fmt: skip
    lock = lock_file(out, folder=True)
    deadline = time.monotonic() + 120
    while build.poll() is None and not (lock.is_file() and lock.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(delay)
    build.send_signal(signal.SIGKILL)
    build.wait()
    build_catalog(tiny["model"], [tiny["manifest"]], out, **BUILD)
    _assert_same_catalog(out, catalogs / "full")
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp"))


def test_torn_flat_catalogue_is_refused_then_rebuilt(tiny, catalogs, tmp_path):
    """The issue's torn state, in a catalogue written before state folders: index.faiss of
    36 items beside items and arrays of 24. serve refuses it; a build redoes it."""
    out = tmp_path / "cat"
    shutil.copytree(catalogs / "base", out)
    base = load_catalog(out)
    for p in base.data_dir.rglob("*"):  # flatten to the old layout
        target = out / p.relative_to(base.data_dir)
        if p.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
    meta = json.loads((out / "catalog.json").read_text())
    del meta["state"]
    (out / "catalog.json").write_text(json.dumps(meta))
    shutil.rmtree(out / "versions")
    shutil.copy2(load_catalog(catalogs / "full").index_path, out / "index.faiss")
    res = runner.invoke(app, ["serve", str(out), "--port", "1"])
    assert res.exit_code == 2
    message = _one_line(res.output)
    assert (
        "torn catalogue" in message
        and "index.faiss 36" in message
        and "items.parquet 24" in message
    )
    assert "Traceback" not in res.output
    first24 = tmp_path / "first24.csv"
    pd.read_csv(tiny["manifest"], dtype=str).iloc[:24].to_csv(first24, index=False)
    build_catalog(tiny["model"], [first24], out, **BUILD)
    _assert_same_catalog(out, catalogs / "base")


def test_two_catalog_builds_at_once(tiny, catalogs, tmp_path):
    out = tmp_path / "cat"
    first = subprocess.Popen(
        [sys.executable, "-m", "multitag.cli.main", "catalog", "build", str(tiny["model"]),
         str(tiny["manifest"]), "--out", str(out), *BUILD_ARGS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        lock = lock_file(out, folder=True)
        while not (lock.is_file() and lock.read_text()):  # the first writer holds it
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        t0 = time.monotonic()
        with pytest.raises(
            WriterLocked, match=rf"another catalogue build writer .*PID {first.pid} on"
        ):
            build_catalog(tiny["model"], [tiny["manifest"]], out, **BUILD)
        assert time.monotonic() - t0 < 5  # fails fast
        _, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err
    _assert_same_catalog(out, catalogs / "full")  # the second writer changed nothing


# ---------------------------------------------------------------------------- tag
def test_tag_killed_in_publish_then_rerun_is_identical(tiny, tmp_path):
    images = tiny["images"]
    ref = tmp_path / "ref.csv"
    assert (
        runner.invoke(app, ["tag", str(tiny["model"]), str(images), "--out", str(ref)]).exit_code
        == 0
    )
    out = tmp_path / "tags.csv"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.jpg").write_bytes(b"<html>not found</html>")
    shutil.copy2(images / "1000.jpg", broken / "good.jpg")
    assert (
        runner.invoke(app, ["tag", str(tiny["model"]), str(broken), "--out", str(out)]).exit_code
        == 0
    )
    old = out.read_bytes()
    stale = out.with_name("tags.rejects.csv")
    assert "bad.jpg" in stale.read_text()
    res = _cli(["tag", tiny["model"], images, "--out", out], kill_at="tag.publish")
    assert res.returncode == -signal.SIGKILL
    assert out.read_bytes() == old  # the table is the commit: not replaced
    res = runner.invoke(app, ["tag", str(tiny["model"]), str(images), "--out", str(out)])
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(read_table_any(out), read_table_any(ref))
    assert not stale.exists()  # a rerun without rejects removes the old rejects file
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_tag_second_writer_fails_fast(tiny, tmp_path):
    out = tmp_path / "tags.parquet"
    hold = (
        "import sys, time\nfrom multitag.core.locks import writer_lock\n"
        "with writer_lock(sys.argv[1], 'tag', folder=False):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        res = runner.invoke(
            app, ["tag", str(tiny["model"]), str(tiny["images"]), "--out", str(out)]
        )
    finally:
        holder.kill()
        holder.wait()
    assert res.exit_code == 2
    message = _one_line(res.output)
    assert f"another tag writer is running (PID {holder.pid} on" in message
    assert "Traceback" not in res.output and not out.exists()


def test_disk_full_during_tag_is_one_line_and_keeps_the_old_output(tiny, tmp_path, monkeypatch):
    import multitag.tagger.batch as tagging

    out = tmp_path / "tags.jsonl"
    out.write_text('{"old": 1}\n')

    def full(frame, tmp, suffix):
        Path(tmp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tagging, "dump_table", full)
    res = runner.invoke(app, ["tag", str(tiny["model"]), str(tiny["images"]), "--out", str(out)])
    assert res.exit_code == 2
    message = _one_line(res.output)
    assert message.startswith("error:") and "No space left on device" in message
    assert "previous tags.jsonl, if any, is kept" in message and "Traceback" not in res.output
    assert out.read_text() == '{"old": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tags.jsonl"]


def test_hostile_corpus_through_tag(tiny, tmp_path):
    corpus = tmp_path / "corpus"
    expected = write_corpus(corpus)
    assert len(expected) >= 30
    out = tmp_path / "tags.csv"
    res = runner.invoke(app, ["tag", str(tiny["model"]), str(corpus), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    tagged = {Path(p).name for p in read_table_any(out)["path"]}
    rejects = read_table_any(out.with_name("tags.rejects.csv"))
    rejected = {Path(p).name: r for p, r in zip(rejects["path"], rejects["reason"])}
    assert tagged == {n for n, e in expected.items() if e == "tag"}
    assert set(rejected) == {n for n, e in expected.items() if e == "reject"}
    assert all(len(r) > 20 and "Traceback" not in r for r in rejected.values())
    assert "decompression-bomb" in rejected["bomb.png"] and "HTML" in rejected["page.jpg"]
    assert "empty" in rejected["zero.jpg"] and "truncated" in rejected["truncated.jpg"]
    summary = _one_line(res.output)
    assert f"tagged {len(tagged)} image(s)" in summary
    assert f"{len(rejected)} input(s) not tagged" in summary  # skipped + unreadable


def test_special_inputs_are_reported_not_hung_or_ignored(tiny, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy2(tiny["images"] / "1000.jpg", folder / "good.jpg")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "folder.jpg").mkdir()  # a folder, whatever its name: walked like any other
    shutil.copy2(tiny["images"] / "1001.jpg", folder / "folder.jpg" / "inner.jpg")
    (folder / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    out = tmp_path / "tags.csv"
    try:
        res = _cli(["tag", tiny["model"], folder, "--out", out], timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("tag hung on a FIFO named *.jpg")
    assert res.returncode == 0, res.stderr
    reasons = " ".join(read_table_any(out.with_name("tags.rejects.csv"))["reason"])
    assert "pipe.jpg" in res.stderr + reasons and "HEIC" in res.stderr + reasons
    assert sorted(read_table_any(out)["id"].astype(str)) == ["good", "inner"]  # not ignored


# ---------------------------------------------------------------------------- model files
def _weights(model: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model / "model.safetensors"))


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)  # tensors, not bytes: the header's key order varies
    return wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)


def test_train_killed_then_rerun_is_identical(tiny, tmp_path):
    from multitag.tagger.loading import load_tagger

    data = ["--data", tiny["manifest"], *TRAIN_ARGS]
    ref = runner.invoke(app, list(map(str, ["train", *data, "--out", tmp_path / "ref"])))
    assert ref.exit_code == 0, ref.output
    # train reports the classes it folded into 'other' (the README says it does)
    assert "colour: 1 class(es) with fewer than 2 examples folded into 'other': purple" in (
        _one_line(ref.output)
    )
    assert not _same_weights(tmp_path / "ref", tiny["model"])  # --seed 1: another model
    out = tmp_path / "model"
    shutil.copytree(tiny["model"], out)
    res = _cli(["train", *data, "--out", out], kill_at="train.epoch#2")
    assert res.returncode == -signal.SIGKILL
    assert _same_weights(out, tiny["model"])  # killed while fitting: the old model intact
    load_tagger(out)
    res = _cli(["train", *data, "--out", out], kill_at="model.save.weights")
    assert res.returncode == -signal.SIGKILL
    with pytest.raises(ModelFileError, match=r"model.safetensors does not match the SHA-256"):
        load_tagger(out)  # new weights under the old config.json: refused, not loaded
    res = runner.invoke(app, list(map(str, ["train", *data, "--out", out])))
    assert res.exit_code == 0, res.output
    assert _same_weights(out, tmp_path / "ref")
    assert load_tagger(out).tasks_ == load_tagger(tmp_path / "ref").tasks_


def _flip_bit(path: Path, offset_share: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * offset_share)] ^= 0x04
    path.write_bytes(bytes(data))


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:50_000] if p.suffix == ".safetensors" else p.read_bytes()[:300])


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _rename_class(p: Path) -> None:
    p.write_text(p.read_text().replace('"red"', '"rouge"'))


def _add_row(p: Path) -> None:
    p.write_text(p.read_text() + "9999,train,\n")


WEIGHTS, CONFIG = "model.safetensors", "config.json"
CORRUPTIONS = {
    "truncated weights": (WEIGHTS, _truncate, "has 50,000 bytes"),
    "zero-byte weights": (WEIGHTS, _empty, "is empty (zero bytes)"),
    "bit-flipped weights": (WEIGHTS, _flip_bit, "does not match the SHA-256"),
    "missing weights": (WEIGHTS, Path.unlink, "is missing"),
    "truncated config": (CONFIG, _truncate, "not valid JSON"),
    "zero-byte config": (CONFIG, _empty, "is empty (zero bytes)"),
    "edited config": (CONFIG, _rename_class, "changed after it was saved"),
    "edited split": ("split.csv", _add_row, "split.csv has"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_model_file_is_one_line_naming_it(case, tiny, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny["model"], model)
    name, corrupt, expect = CORRUPTIONS[case]
    corrupt(model / name)
    out = tmp_path / "tags.csv"
    res = runner.invoke(app, ["tag", str(model), str(tiny["images"]), "--out", str(out)])
    assert res.exit_code == 2, res.output
    message = _one_line(res.output)
    assert message.startswith("error:") and f"{name} " in message and expect in message, message
    assert "restore the folder from a backup" in message and "Traceback" not in res.output
    assert not out.exists()


def test_model_saved_without_integrity_records_still_loads(tiny, tmp_path):
    model = tmp_path / "old"
    shutil.copytree(tiny["model"], model)
    config = json.loads((model / "config.json").read_text())
    del config["integrity"]
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "tags.csv"
    res = runner.invoke(app, ["tag", str(model), str(tiny["images"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(read_table_any(out)) == 36
    (model / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:9000])
    res = runner.invoke(app, ["tag", str(model), str(tiny["images"]), "--out", str(out)])
    assert res.exit_code == 2
    assert "model.safetensors is unreadable, truncated or corrupt" in _one_line(res.output)


def test_evaluate_names_labels_the_model_does_not_know(tiny, tmp_path):
    frame = pd.read_csv(tiny["manifest"], dtype=str).iloc[:12]
    frame.loc[:3, "colour"] = "Red"  # a class spelt differently from training's 'red'
    data = tmp_path / "eval.csv"
    frame.to_csv(data, index=False)
    res = runner.invoke(
        app,
        ["evaluate", str(tiny["model"]), "--data", str(data), "--path-col", "path",
         "--json", str(tmp_path / "m.json")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    message = _one_line(res.output)
    assert "'colour' has labels the model does not know: 'Red' (4)" in message
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["unknown_label_values"] == {"colour": {"Red": 4}}


def test_second_train_into_one_model_folder_fails_fast(tiny, tmp_path):
    out = tmp_path / "model"
    hold = (
        "import sys, time\nfrom multitag.core.locks import writer_lock\n"
        "with writer_lock(sys.argv[1], 'model (train)', folder=True):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        args = ["train", "--data", tiny["manifest"], *TRAIN_ARGS, "--out", out]
        res = runner.invoke(app, list(map(str, args)))
        assert time.monotonic() - t0 < 30  # refused before any image is read
    finally:
        holder.kill()
        holder.wait()
    assert res.exit_code == 2
    assert f"another model (train) writer is running (PID {holder.pid} on" in _one_line(res.output)
    assert not (out / "config.json").exists()


def test_validate_cli_flags_label_variants(tiny, tmp_path):
    frame = pd.read_csv(tiny["manifest"], dtype=str)
    frame.loc[:2, "colour"] = ["Red", "RED", "red "]
    data = tmp_path / "data.csv"
    frame.to_csv(data, index=False)
    args = ["validate", "--data", str(data), "--path-col", "path", "--tasks", "colour,shape"]
    res = runner.invoke(app, [*args, "--min-count", "2", "--json", str(tmp_path / "v.json")])
    message = _one_line(res.output)
    assert "task 'colour': labels differ only by case or spaces: 'red'" in message
    assert "'Red' (1)" in message and "'RED' (1)" in message
    assert json.loads((tmp_path / "v.json").read_text())["label_variants"]["colour"]
