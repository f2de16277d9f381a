"""Every input format x every command that takes photos, through the real CLI, on generated
JPEGs: the same manifest works in every command, and an input that cannot be used (a row whose
file is missing, a FIFO in a folder, a HEIC photo) is reported, never fatal."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from multitag.catalog.store import load_catalog
from multitag.cli.main import app
from tests.test_inputs import write_manifest

pytestmark = pytest.mark.slow  # ~80 CLI runs, each through the real backbone

COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 160, 30)}
PER_CLASS = 8
# formats with labels (a `label` column or class folders) and those without
LABELLED = ("csv", "tsv", "parquet", "jsonl", "semicolon", "options", "tree")
ALL = (*LABELLED, "folder", "files")
TINY = ["--image-size", "32", "--framing", "none"]
run = CliRunner().invoke


def _photo(path, colour, seed) -> None:
    rng = np.random.default_rng(seed)  # distinct bytes: no two photos are copies
    arr = np.full((40, 30, 3), 250, np.int16)
    arr[8:32, 6:24] = COLOURS[colour]
    arr += rng.integers(-12, 12, arr.shape, dtype=np.int16)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=95)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Photos in a folder-per-class tree, the same photos listed in every manifest format (plus
    a row whose file is missing), a plain folder and a file list, and two base models."""
    root = tmp_path_factory.mktemp("inputs")
    rows = []
    for colour in COLOURS:
        (root / "photos" / colour).mkdir(parents=True)
        for i in range(PER_CLASS):
            _photo(root / "photos" / colour / f"{colour}{i}.jpg", colour, len(rows))
            rows.append({"id": f"{colour}{i}", "path": f"photos/{colour}/{colour}{i}.jpg"})
            rows[-1]["label"] = colour
    rows.append({"id": "lost", "path": "photos/red/lost.jpg", "label": "red"})
    frame = pd.DataFrame(rows)
    for name in ("m.csv", "m.tsv", "m.parquet", "m.jsonl", "m.semi.csv"):
        write_manifest(frame, root / name)
    write_manifest(frame.rename(columns={"id": "sku", "path": "photo"}), root / "opts.csv")
    os.mkfifo(root / "photos" / "red" / "pipe.jpg")  # reading it would hang
    (root / "loose").mkdir()
    for i in range(6):
        _photo(root / "loose" / f"x{i}.jpg", list(COLOURS)[i % 3], 100 + i)
    (root / "loose" / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    os.mkfifo(root / "loose" / "pipe.jpg")
    cache = root / "cache"
    base = root / "base"
    r = run(app, ["train", "--data", str(root / "m.csv"), "--tasks", "label",
                  "--out", str(base), "--epochs", "3", "--min-count", "2",
                  "--cache-dir", str(cache), *TINY])  # fmt: skip
    assert r.exit_code == 0, r.output
    emb = root / "emb"
    r = run(app, ["embed", "train", "--data", str(root / "m.csv"), "--same", "label",
                  "--out", str(emb), "--epochs", "2", "--dim", "16", "--hidden", "32",
                  *TINY])  # fmt: skip
    assert r.exit_code == 0, r.output
    return {"root": root, "base": base, "emb": emb, "cache": cache, "n": len(rows) - 1}


def data_args(world, fmt) -> tuple[list[str], str, int]:
    """``(input arguments, the skipped file's name, usable rows)`` of ``fmt``."""
    root = world["root"]
    manifests = {"csv": "m.csv", "tsv": "m.tsv", "parquet": "m.parquet", "jsonl": "m.jsonl"}
    manifests |= {"semicolon": "m.semi.csv"}
    if fmt in manifests:
        return [str(root / manifests[fmt])], "lost.jpg", world["n"]
    if fmt == "options":
        opts = ["--id-col", "sku", "--path-col", "photo"]
        return [str(root / "opts.csv"), *opts], "lost.jpg", world["n"]
    if fmt == "tree":
        return [str(root / "photos")], "pipe.jpg", world["n"]
    if fmt == "folder":
        return [str(root / "loose")], "pipe.jpg", 6
    return [str(root / "loose" / f) for f in ("x0.jpg", "x3.jpg", "phone.heic")], "phone.heic", 2


def data_option(world, fmt) -> tuple[list[str], str, int]:
    """The same as ``--data`` (a command's options after it)."""
    args, skipped, n = data_args(world, fmt)
    return ["--data", *args], skipped, n


def reported(result, skipped: str) -> None:
    assert result.exit_code == 0, result.output
    assert "input(s) skipped" in result.output and skipped in result.output, result.output


def rejected(rejects_file, skipped: str) -> None:
    table = pd.read_csv(rejects_file, dtype=str, keep_default_na=False)
    assert any(p.endswith(skipped) for p in table["path"]), table


@pytest.mark.parametrize("fmt", LABELLED)
def test_train(world, fmt, tmp_path):
    data, skipped, n = data_option(world, fmt)
    out = tmp_path / "model"
    r = run(app, ["train", *data, "--tasks", "label", "--out", str(out), "--epochs", "2",
                  "--min-count", "2", "--cache-dir", str(world["cache"]), *TINY])  # fmt: skip
    reported(r, skipped)
    rejected(out / "inputs.rejects.csv", skipped)
    split = pd.read_csv(out / "split.csv", dtype=str)
    assert len(split) == n


@pytest.mark.parametrize("fmt", LABELLED)
def test_evaluate(world, fmt, tmp_path):
    data, skipped, n = data_option(world, fmt)
    metrics = tmp_path / "m.json"
    r = run(app, ["evaluate", str(world["base"]), *data, "--json", str(metrics)])
    reported(r, skipped)
    assert json.loads(metrics.read_text())["tasks"]["label"]["support"] == n
    rejected(tmp_path / "m.rejects.csv", skipped)


@pytest.mark.parametrize("fmt", LABELLED)
def test_validate(world, fmt):
    data, skipped, _ = data_option(world, fmt)
    r = run(app, ["validate", *data, "--tasks", "label", "--min-count", "2"])
    reported(r, skipped)
    assert "skipped inputs: 1" in r.output


@pytest.mark.parametrize("fmt", ALL)
def test_tag(world, fmt, tmp_path):
    args, skipped, n = data_args(world, fmt)
    out = tmp_path / "tags.csv"
    r = run(app, ["tag", str(world["base"]), *args, "--out", str(out)])
    reported(r, skipped)
    tags = pd.read_csv(out, dtype=str)
    assert len(tags) == n and tags["id"].is_unique
    rejected(tmp_path / "tags.rejects.csv", skipped)


@pytest.mark.parametrize("fmt", LABELLED)
def test_embed_train(world, fmt, tmp_path):
    data, skipped, _ = data_option(world, fmt)
    out = tmp_path / "emb"
    r = run(app, ["embed", "train", *data, "--same", "label", "--out", str(out),
                  "--epochs", "1", "--dim", "8", "--hidden", "16", *TINY])  # fmt: skip
    reported(r, skipped)
    assert (out / "embedding.json").is_file()
    rejected(out / "inputs.rejects.csv", skipped)


@pytest.mark.parametrize("fmt", LABELLED)
def test_embed_evaluate(world, fmt, tmp_path):
    data, skipped, _ = data_option(world, fmt)
    metrics = tmp_path / "e.json"
    r = run(app, ["embed", "evaluate", str(world["emb"]), *data, "--same", "label",
                  "--json", str(metrics)])  # fmt: skip
    reported(r, skipped)
    assert "recall@1" in json.loads(metrics.read_text())["embedding"]


@pytest.mark.parametrize("fmt", ALL)
def test_index_build(world, fmt, tmp_path):
    args, skipped, n = data_args(world, fmt)
    out = tmp_path / "idx"
    r = run(app, ["index", "build", str(world["emb"]), *args, "--out", str(out)])
    reported(r, skipped)
    items = pd.read_parquet(out / "items.parquet")
    assert len(items) == n
    if fmt in LABELLED:  # the labels become filters
        assert set(items["label"]) == set(COLOURS)
    rejected(out / "inputs.rejects.csv", skipped)


def test_index_add_takes_the_same_inputs(world, tmp_path):
    out = tmp_path / "idx"
    args, _, n = data_args(world, "options")
    r = run(app, ["index", "build", str(world["emb"]), *args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    args, skipped, n_more = data_args(world, "folder")
    r = run(app, ["index", "add", str(out), *args])
    reported(r, skipped)
    assert len(pd.read_parquet(out / "items.parquet")) == n + n_more


@pytest.mark.parametrize("fmt", ALL)
def test_catalog_build(world, fmt, tmp_path):
    args, skipped, n = data_args(world, fmt)
    out = tmp_path / "cat"
    r = run(app, ["catalog", "build", str(world["base"]), *args, "--out", str(out),
                  "--layout", "tsne", "--topics", "2", "--clusters", "2"])  # fmt: skip
    reported(r, skipped)
    meta = json.loads((out / "catalog.json").read_text())
    n_skipped = 2 if fmt == "folder" else 1  # the folder holds a FIFO and a HEIC photo
    assert meta["n_items"] == n and meta["n_rejects"] == n_skipped
    rejects = pd.read_parquet(load_catalog(out).data_dir / "rejects.parquet")  # state folder
    assert rejects["path"].str.endswith(skipped).any()


@pytest.mark.parametrize("fmt", LABELLED)
def test_learning_curve(world, fmt, tmp_path):
    data, skipped, _ = data_option(world, fmt)
    out = tmp_path / "lc"
    r = run(app, ["learning-curve", *data, "--tasks", "label", "--fractions", "0.5,1",
                  "--seeds", "1", "--epochs", "2", "--min-count", "2",
                  "--cache-dir", str(world["cache"]), "--out", str(out), *TINY])  # fmt: skip
    reported(r, skipped)
    assert (out / "learning_curve.csv").is_file()
    rejected(out / "inputs.rejects.csv", skipped)


@pytest.mark.parametrize("fmt", LABELLED)
def test_study(world, fmt, tmp_path):
    args, skipped, n = data_args(world, fmt)
    config = {
        "data": args[0], "tasks": ["label"], "image_size": 32, "epochs": 1, "warm_epochs": 2,
        "freeze": ["all"], "min_count": 2, "cache_dir": str(tmp_path / "cache"),
    }  # fmt: skip
    if fmt == "options":
        config |= {"id_col": "sku", "path_col": "photo"}
    (tmp_path / "study.yaml").write_text(json.dumps(config))  # JSON is YAML
    out = tmp_path / "study"
    r = run(app, ["study", str(tmp_path / "study.yaml"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "inputs skipped" in r.output
    data = json.loads((out / "data.json").read_text())
    assert data["rows"] == n and data["skipped_inputs"] == 1
    rejected(out / "inputs.rejects.csv", skipped)


def test_same_stem_in_two_folders_is_tagged_and_catalogued_twice(world, tmp_path):
    """Two different photos named alike: two ids everywhere, none dropped."""
    for sub in ("a", "b"):
        (tmp_path / "in" / sub).mkdir(parents=True)
    src = world["root"] / "photos"
    shutil.copy(src / "red" / "red0.jpg", tmp_path / "in" / "a" / "10102.jpg")
    shutil.copy(src / "blue" / "blue0.jpg", tmp_path / "in" / "b" / "10102.jpg")
    shutil.copy(src / "green" / "green0.jpg", tmp_path / "in" / "top.jpg")
    r = run(
        app, ["tag", str(world["base"]), str(tmp_path / "in"), "--out", str(tmp_path / "t.csv")]
    )
    assert r.exit_code == 0 and "share the name '10102'" in r.output, r.output
    tags = pd.read_csv(tmp_path / "t.csv", dtype=str)
    assert len(tags) == 3 and tags["id"].is_unique
    r = run(app, ["catalog", "build", str(world["base"]), str(tmp_path / "in"),
                  "--out", str(tmp_path / "cat"), "--layout", "tsne", "--topics", "2",
                  "--clusters", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "cat" / "catalog.json").read_text())["n_items"] == 3


def test_duplicate_ids_in_a_manifest_are_reported(world, tmp_path):
    frame = pd.read_csv(world["root"] / "m.csv", dtype=str).iloc[:6]
    frame.loc[5, "id"] = frame.loc[0, "id"]
    frame["path"] = [str(world["root"] / p) for p in frame["path"]]
    write_manifest(frame, tmp_path / "dup.csv")
    r = run(app, ["tag", str(world["base"]), str(tmp_path / "dup.csv"),
                  "--out", str(tmp_path / "t.csv")])  # fmt: skip
    assert r.exit_code == 0 and "duplicate id 'red0' on 2 rows" in r.output, r.output
    r = run(app, ["catalog", "build", str(world["base"]), str(tmp_path / "dup.csv"),
                  "--out", str(tmp_path / "cat"), "--layout", "tsne", "--topics", "2",
                  "--clusters", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rejects = pd.read_parquet(load_catalog(tmp_path / "cat").data_dir / "rejects.parquet")
    assert rejects["reason"].str.contains("duplicate id 'red0'").any()


def test_bad_manifests_name_the_file_and_an_existing_option(world, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "nopath.csv").write_text("sku;colour\n1;red\n")
    for args in (["tag", str(world["base"])], ["index", "build", str(world["emb"])]):
        r = run(app, [*args, str(tmp_path / "empty.csv"), "--out", str(tmp_path / "o.csv")])
        assert r.exit_code == 2 and "empty.csv: the manifest is empty" in r.output, r.output
        r = run(app, [*args, str(tmp_path / "nopath.csv"), "--out", str(tmp_path / "o.csv")])
        assert r.exit_code == 2 and "nopath.csv" in r.output and "--path-col" in r.output
        flat = r.output.replace("\n", "")  # the console wraps long lines
        assert "['sku', 'colour']" in flat  # semicolons understood: the real columns
