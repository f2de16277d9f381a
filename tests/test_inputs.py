"""The one input resolver: every manifest format, folders, trees and loose files give the same
rows; unusable inputs are reported (never opened), duplicate ids and shared stems are visible."""

from __future__ import annotations

import os
import threading

import pandas as pd
import pytest

from multitag.data.images import iter_image_files
from multitag.data.inputs import resolve_inputs
from tests.conftest import make_image

COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 160, 30)}
FORMATS = ("csv", "tsv", "parquet", "jsonl", "semicolon")


def write_manifest(frame: pd.DataFrame, path) -> None:
    """``frame`` as ``path`` (the format from the suffix; ``.semi.csv``: ``;``-separated)."""
    name = str(path)
    if name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    elif name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True)
    elif name.endswith(".tsv"):
        frame.to_csv(path, sep="\t", index=False)
    else:
        frame.to_csv(path, sep=";" if ".semi" in name else ",", index=False)


def manifest_name(fmt: str) -> str:
    return "m.semi.csv" if fmt == "semicolon" else f"m.{fmt}"


@pytest.fixture
def photos(tmp_path):
    """Nine real JPEGs under ``img/`` and their labels (``id``, relative ``path``, ``colour``)."""
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(9):
        colour = list(COLOURS)[i % 3]
        make_image(tmp_path / "img" / f"{i}.jpg", colour=COLOURS[colour])
        rows.append({"id": str(i), "path": f"img/{i}.jpg", "colour": colour})
    return tmp_path, pd.DataFrame(rows)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_manifest_format_finds_the_path_column(photos, fmt):
    root, frame = photos
    manifest = root / manifest_name(fmt)
    write_manifest(frame, manifest)
    found = resolve_inputs([manifest])
    assert found.frame["id"].tolist() == frame["id"].tolist()
    assert found.frame["path"].tolist() == [str(root / p) for p in frame["path"]]
    assert found.frame["colour"].tolist() == frame["colour"].tolist()
    assert not found.skipped and not found.notes


@pytest.mark.parametrize("column", ["filepath", "file", "photo"])
def test_path_column_names_and_images_folder(photos, column):
    root, frame = photos
    frame = frame.rename(columns={"path": column})
    frame[column] = frame[column].str.removeprefix("img/")  # relative to --images
    write_manifest(frame, root / "m.csv")
    path_col = column if column == "photo" else None  # auto-detected names need no option
    found = resolve_inputs([root / "m.csv"], root / "img", path_col=path_col)
    assert found.frame["path"].tolist() == [str(root / "img" / f"{i}.jpg") for i in range(9)]
    write_manifest(frame.drop(columns=[column]), root / "ids.csv")  # ids only: <images>/<id>.jpg
    found = resolve_inputs([root / "ids.csv"], root / "img")
    assert found.frame["path"].tolist() == [str(root / "img" / f"{i}.jpg") for i in range(9)]


def test_missing_and_empty_rows_are_reported_not_fatal(photos):
    root, frame = photos
    frame.loc[2, "path"] = "img/nope.jpg"
    frame.loc[4, "path"] = ""
    write_manifest(frame, root / "m.tsv")
    found = resolve_inputs([root / "m.tsv"])
    assert len(found.frame) == 7 and "2" not in set(found.frame["id"])
    missing, empty = found.skipped
    assert missing.kind == "missing" and missing.source == "m.tsv line 4" and missing.id == "2"
    assert "file not found" in missing.reason and missing.path == str(root / "img/nope.jpg")
    assert (
        empty.kind == "empty-cell" and "'path'" in empty.reason and empty.source == "m.tsv line 6"
    )
    rejects = found.skipped_frame()
    assert rejects["id"].tolist() == ["2", "4"]
    assert "2 input(s) skipped (1 missing, 1 empty-cell)" in "\n".join(found.summary())
    # check_files=False keeps the rows (validate and fit report them with their row)
    assert len(resolve_inputs([root / "m.tsv"], check_files=False).frame) == 8


def test_special_files_are_skipped_unopened(photos, tmp_path):
    root, _ = photos
    os.mkfifo(root / "img" / "pipe.jpg")  # opening it would block forever
    (root / "img" / "dir.jpg").mkdir()
    make_image(root / "img" / "dir.jpg" / "inner.png")
    (root / "img" / "phone.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (root / "img" / "notes.txt").write_text("not a photo")
    (root / "img" / ".DS_Store").write_bytes(b"\x00")  # hidden: silently not an input
    os.symlink(root / "gone.jpg", root / "img" / "broken.jpg")
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(r=resolve_inputs([root / "img"])))
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the resolver blocked on the FIFO"
    found = result["r"]
    assert sorted(found.frame["id"]) == sorted([str(i) for i in range(9)] + ["inner"])
    reasons = {os.path.basename(s.path): (s.kind, s.reason) for s in found.skipped}
    assert reasons["pipe.jpg"][0] == "not-regular" and "FIFO" in reasons["pipe.jpg"][1]
    assert reasons["phone.HEIC"][0] == "unsupported" and "HEIC" in reasons["phone.HEIC"][1]
    assert reasons["notes.txt"][0] == "not-image"
    assert reasons["broken.jpg"][0] == "missing" and "symbolic link" in reasons["broken.jpg"][1]
    assert ".DS_Store" not in reasons
    listed = {f.name for f in iter_image_files([root / "img"])}  # the library listing, too
    assert "pipe.jpg" not in listed and "inner.png" in listed
    # named directly, and as a manifest row, the FIFO is reported the same way
    (root / "notes.md").write_text("# not a photo")  # (a .txt named directly is a CSV)
    named = [root / "img" / n for n in ("pipe.jpg", "0.jpg", "phone.HEIC")]
    found = resolve_inputs([*named, root / "notes.md", root / "img" / "dir.jpg" / "inner.png"])
    assert found.frame["id"].tolist() == ["0", "inner"]
    assert [s.kind for s in found.skipped] == ["not-regular", "unsupported", "not-image"]
    os.mkfifo(root / "pipe.csv")
    with pytest.raises(ValueError, match="pipe.csv: the manifest is a FIFO"):
        resolve_inputs([root / "pipe.csv"])
    (root / "fifo.csv").write_text("id,path\np,img/pipe.jpg\nd,img/dir.jpg\nok,img/1.jpg\n")
    found = resolve_inputs([root / "fifo.csv"])
    assert found.frame["id"].tolist() == ["ok"]
    assert [s.reason.split(",")[0] for s in found.skipped] == [
        "is a FIFO (named pipe)",
        "is a directory",
    ]


def test_same_stem_in_two_folders_gets_distinct_ids(tmp_path, monkeypatch):
    for folder in ("a", "b"):
        (tmp_path / "photos" / folder).mkdir(parents=True)
        make_image(tmp_path / "photos" / folder / "10102.jpg")
    make_image(tmp_path / "photos" / "top.jpg")  # a loose image: a plain folder, not a tree
    found = resolve_inputs([tmp_path / "photos"])
    assert found.frame["id"].tolist() == ["a/10102.jpg", "b/10102.jpg", "top"]
    monkeypatch.chdir(tmp_path / "photos")  # `multitag tag MODEL .`: the same ids
    assert resolve_inputs(["."]).frame["id"].tolist() == ["a/10102.jpg", "b/10102.jpg", "top"]
    monkeypatch.chdir(tmp_path)
    assert "2 files share the name '10102': their ids are a/10102.jpg, b/10102.jpg" in found.notes
    assert not found.duplicate_ids
    # named directly (and once more through the folder): the path as given tells them apart
    named = [tmp_path / "photos/a/10102.jpg", tmp_path / "photos/b/10102.jpg"]
    found = resolve_inputs([*named, tmp_path / "photos"])
    assert sorted(found.frame["id"]) == sorted([*map(str, named), "top"])


def test_folder_per_class_tree_and_file_list(tmp_path):
    for cls in ("red", "blue"):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        for i in range(2):
            make_image(tmp_path / "tree" / cls / f"{i}.png", colour=COLOURS[cls])
    make_image(tmp_path / "tree" / "red" / "only.png")
    tree = resolve_inputs([tmp_path / "tree"]).frame  # 0.png and 1.png are in both classes
    assert tree["id"].tolist() == ["blue/0.png", "blue/1.png", "red/0.png", "red/1.png", "only"]
    assert tree["label"].tolist() == ["blue", "blue", "red", "red", "red"]
    files = [tmp_path / "tree" / "red" / "0.png", tmp_path / "tree" / "blue" / "1.png"]
    loose = resolve_inputs(files).frame
    assert loose["id"].tolist() == ["0", "1"] and "label" not in loose.columns


def test_duplicate_ids_are_reported_and_can_be_dropped_visibly(photos):
    root, frame = photos
    frame.loc[3, "id"] = "0"
    write_manifest(frame, root / "m.csv")
    found = resolve_inputs([root / "m.csv"])
    assert found.duplicate_ids == ["0"] and "duplicate id '0' on 2 rows" in found.notes[0]
    unique = found.unique_ids()
    assert len(unique.frame) == 8 and unique.skipped[-1].kind == "duplicate-id"
    assert "first used for" in unique.skipped[-1].reason


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("", {}, "m.csv: the manifest is empty"),
        ("id,colour\n1,red\n", {}, "no path column (path, filepath, file): give --images DIR"),
        ("sku,colour\n1,red\n", {"images": "."}, "no id column 'id' and no path column"),
        ("id,path\n1,a.jpg\n", {"id_col": "sku"}, "id column 'sku' (given by --id-col)"),
        ("id,path\n1,a.jpg\n", {"path_col": "img"}, "no column 'img' (given by --path-col)"),
        ('id,path\n1,"a.jpg\n', {}, "m.csv: malformed table"),
    ],
)
def test_errors_name_the_file_and_the_option(tmp_path, content, args, message):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(ValueError, match="m.csv") as err:
        resolve_inputs([tmp_path / "m.csv"], **args)
    assert message in str(err.value)


def test_nothing_usable_and_missing_arguments(tmp_path):
    (tmp_path / "x.heic").write_bytes(b"heic")
    with pytest.raises(ValueError, match=r"no usable images in .*x.heic: HEIC photos"):
        resolve_inputs([tmp_path / "x.heic"])
    with pytest.raises(FileNotFoundError, match="nothing.jpg: no such file or folder"):
        resolve_inputs([tmp_path / "nothing.jpg"])


PHOTO_COMMANDS = [
    "validate", "train", "evaluate", "tag", "combine", "learning-curve", "embed train",
    "embed evaluate", "index build", "index add", "catalog build",
]  # fmt: skip


@pytest.mark.parametrize("name", PHOTO_COMMANDS)
def test_every_photo_command_has_the_same_input_options(name):
    """One declaration (cli_common) of --images / --id-col / --path-col / --ext everywhere."""
    import typer

    from multitag.cli.main import app

    group = typer.main.get_command(app)
    command = group
    for part in name.split():
        command = command.commands[part]
    options = {p.opts[0]: p for p in command.params if p.opts[0].startswith("--")}
    reference = {p.opts[0]: p for p in group.commands["tag"].params}
    for opt in ("--images", "--id-col", "--path-col", "--ext"):
        assert opt in options, f"{name} lacks {opt}"
        assert options[opt].help == reference[opt].help
        assert options[opt].default == reference[opt].default


def test_study_config_takes_the_same_input_settings():
    from multitag.research.study import StudyConfig

    cfg = StudyConfig.from_dict({"data": "m.csv", "id_col": "sku", "path_col": "photo"})
    assert (cfg.id_col, cfg.path_col, cfg.ext) == ("sku", "photo", ".jpg")


def test_tagging_resolve_inputs_still_returns_the_frame(photos):
    from multitag.tagger.batch import resolve_inputs as old_resolve

    root, frame = photos
    write_manifest(frame, root / "m.parquet")
    rows = old_resolve([root / "m.parquet", root / "img" / "0.jpg"])
    assert isinstance(rows, pd.DataFrame) and len(rows) == 10
    assert rows["id"].tolist()[-1] == "0" and rows["colour"].tolist()[-1] == ""
