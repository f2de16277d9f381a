"""Manifests, task inference, masking, rare classes, splits and validation (unit level)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from multitag.data.derive import keyword_tags
from multitag.data.manifest import load_manifest, read_folder_tree, split_indices
from multitag.data.tasks import Task, encode_all, infer_tasks
from multitag.data.validate import validate
from tests.conftest import make_image, requires_fashion


def _frame(n=40):
    return pd.DataFrame(
        {
            "id": [str(i) for i in range(n)],
            "colour": (["red", "blue", ""] * n)[:n],
            "tags": (["a|b", "b", "", "c|a"] * n)[:n],
            "kind": (["x", "y"] * n)[: n - 2] + ["rare1", "rare2"],
        }
    )


def test_infer_kinds_and_rare_folding():
    tasks = {t.name: t for t in infer_tasks(_frame(), ["colour", "tags", "kind"], min_count=3)}
    assert tasks["colour"].kind == "multiclass" and tasks["colour"].classes == ["blue", "red"]
    assert tasks["tags"].kind == "multilabel" and tasks["tags"].classes == ["a", "b", "c"]
    kind = tasks["kind"]
    assert kind.classes == ["x", "y", "other"] and kind.folded == ["rare1", "rare2"]
    assert kind.encode(["rare1", "x", ""]).tolist() == [2, 0, -1]


def test_rare_drop_marks_rows_missing():
    (kind,) = infer_tasks(_frame(), ["kind"], min_count=3, rare="drop")
    assert kind.dropped == ["rare1", "rare2"] and kind.other is None
    assert kind.encode(["rare1", "x"]).tolist() == [-1, 0]


def test_blank_is_missing_only_for_its_task():
    frame = _frame(6)
    tasks = infer_tasks(frame, ["colour", "tags"], min_count=1)
    targets = encode_all(frame, tasks)
    assert targets["colour"].tolist() == [1, 0, -1, 1, 0, -1]
    assert (targets["tags"][2] == -1).all()  # row 2 blank for tags...
    assert targets["colour"][3] == 1  # ...but row 3 keeps its colour though its tags differ
    assert targets["tags"][0].tolist() == [1, 1, 0]


def test_named_multilabel_with_custom_delimiter():
    frame = pd.DataFrame({"id": ["1", "2", "3"], "t": ["a;b", "b", "a"]})
    (t,) = infer_tasks(frame, ["t"], multilabel={"t": ";"}, min_count=1)
    assert t.kind == "multilabel" and t.delimiter == ";"
    assert t.encode(["a;b"]).tolist() == [[1, 1]]


def test_task_errors_name_the_problem():
    with pytest.raises(ValueError, match="not in the manifest"):
        infer_tasks(_frame(), ["nope"])
    with pytest.raises(ValueError, match="no labels"):
        infer_tasks(pd.DataFrame({"id": ["1"], "e": [""]}), ["e"])


def test_task_roundtrip_dict():
    (t,) = infer_tasks(_frame(), ["kind"], min_count=3)
    assert Task.from_dict(t.to_dict()).encode(["rare2"]).tolist() == [2]


def test_split_is_stratified_reproducible_and_order_independent():
    frame = pd.DataFrame(
        {"id": [f"{i:03d}" for i in range(100)], "y": ["a"] * 50 + ["b"] * 40 + ["c"] * 9 + ["d"]}
    )
    (task,) = infer_tasks(frame, ["y"], min_count=1)
    tr, va = split_indices(frame, task, 0.2, seed=1)
    assert len(va) == 10 + 8 + 2 and set(tr) | set(va) == set(range(100))
    assert "d" not in set(frame.y.iloc[va])  # a singleton class stays in train
    shuffled = frame.sample(frac=1, random_state=3).reset_index(drop=True)
    _, va2 = split_indices(shuffled, task, 0.2, seed=1)
    assert set(frame.id.iloc[va]) == set(shuffled.id.iloc[va2])
    _, va3 = split_indices(frame, task, 0.2, seed=2)
    assert set(va3) != set(va)


@requires_fashion
def test_split_keeps_copies_of_a_photo_on_one_side(fashion_frame, tmp_path):
    """The catalogue holds byte-identical photos under several ids; grouped by content
    digest, every copy lands on the side of its smallest id, and stratification holds."""
    import shutil

    from multitag.tagger.held_out import photo_digests

    base = fashion_frame.iloc[:120]
    copies = []
    for i, row in enumerate(base.iloc[:40].itertuples()):
        copy = tmp_path / f"copy{i}.jpg"
        shutil.copy(row.path, copy)
        copies.append({**row._asdict(), "id": f"z{i:03d}", "path": str(copy)})
    frame = pd.concat([base, pd.DataFrame(copies)[base.columns]], ignore_index=True)
    (task,) = infer_tasks(frame, ["articleType"], min_count=1)
    digests = photo_digests(frame["path"])
    side = lambda val: pd.Series(np.isin(np.arange(len(frame)), val))  # noqa: E731
    _, plain = split_indices(frame, task, 0.3, seed=4)
    straddle = side(plain).groupby(digests).nunique().gt(1).sum()
    assert straddle > 0  # by id alone, copies fall on both sides
    tr, va = split_indices(frame, task, 0.3, seed=4, groups=digests)
    assert set(tr) | set(va) == set(range(len(frame))) and not set(tr) & set(va)
    is_val = side(va)
    assert is_val.groupby(digests).nunique().max() == 1
    for i in range(40):  # each copy follows the original (its smaller id)
        assert is_val[i] == is_val[120 + i]
    assert 0.2 < is_val.mean() < 0.4
    with pytest.raises(ValueError, match="groups has 3 entries for 160 rows"):
        split_indices(frame, task, 0.3, groups=["a", "b", "c"])


def test_manifest_paths_and_errors(tmp_path):
    (tmp_path / "img").mkdir()
    make_image(tmp_path / "img" / "1.jpg")
    csv = tmp_path / "m.csv"
    csv.write_text("id,colour\n1,red\n2,\n")
    frame = load_manifest(csv, tmp_path / "img")
    assert frame.path.tolist() == [str(tmp_path / "img/1.jpg"), str(tmp_path / "img/2.jpg")]
    assert frame.colour.tolist() == ["red", ""]
    with pytest.raises(ValueError, match="id column 'sku'"):
        load_manifest(csv, tmp_path / "img", id_col="sku")
    pq = tmp_path / "m.parquet"
    pd.DataFrame({"id": [1], "file": ["img/1.jpg"]}).to_parquet(pq)
    assert load_manifest(pq, tmp_path, path_col="file").path[0] == str(tmp_path / "img/1.jpg")


def test_folder_tree(tmp_path):
    for cls in ("red", "blue"):
        (tmp_path / cls).mkdir()
        make_image(tmp_path / cls / "a.png")
    frame = read_folder_tree(tmp_path)
    assert sorted(frame.label) == ["blue", "red"] and frame.id.tolist()[0] == "blue/a.png"


def test_validate_reports_everything(tmp_path):
    make_image(tmp_path / "1.jpg")
    (tmp_path / "2.jpg").write_bytes(b"not an image")
    csv = tmp_path / "m.csv"
    csv.write_text("id,colour,empty\n1,red,\n2,blue,\n3,red,\n1,red,\n")
    frame = load_manifest(csv, tmp_path)
    report = validate(frame, ["colour", "empty"], progress=False)
    assert [p["id"] for p in report.missing_files] == ["3"]
    assert [p["id"] for p in report.unreadable] == ["2"]
    assert report.duplicate_ids == ["1"] and report.empty_tasks == ["empty"]
    assert not report.ok and report.bad_rows == {1, 2}
    text = "\n".join(report.problems())
    assert "row 2 id=3" in text and "duplicate" in text and "'empty'" in text


def test_keyword_tags():
    cells = keyword_tags(["Men Navy Striped Shirt", "Printed Check Kurta", "Plain bag"])
    assert cells == ["striped", "checked|printed", ""]
    assert np.all([isinstance(c, str) for c in cells])


@requires_fashion
def test_validate_finds_identical_images_with_conflicting_labels(fashion_frame, tmp_path):
    """Real photos: a re-saved copy is not identical pixels; an exact copy is, and its
    conflicting colour label is reported by row, id and value, per task."""
    import shutil

    real = fashion_frame.head(20).reset_index(drop=True)
    src = Path(real.loc[0, "path"])
    shutil.copy(src, tmp_path / "copy_same.jpg")  # identical pixels, same labels
    shutil.copy(src, tmp_path / "copy_conflict.jpg")  # identical pixels, another colour
    Image.open(src).save(tmp_path / "resaved.jpg", quality=70)  # different pixels
    extra = pd.DataFrame(
        [real.loc[0]] * 3, columns=real.columns
    ).assign(id=["c1", "c2", "c3"], path=[str(tmp_path / n) for n in
         ("copy_same.jpg", "copy_conflict.jpg", "resaved.jpg")])  # fmt: skip
    extra.loc[extra.index[1], "baseColour"] = "Fluorescent Green"
    frame = pd.concat([real, extra], ignore_index=True)
    report = validate(frame, ["articleType", "baseColour"], progress=False)
    assert [0, 20, 21] in report.duplicate_images and all(
        22 not in g for g in report.duplicate_images
    )
    assert "articleType" not in report.label_conflicts
    (conflict,) = [c for c in report.label_conflicts["baseColour"] if 21 in c["rows"]]
    assert conflict["ids"][1:] == ["c1", "c2"] and "Fluorescent Green" in conflict["labels"]
    summary = report.conflict_summary()["baseColour"]
    assert summary["conflicting"] >= 1 and 0 < summary["share"] <= 1
    text = "\n".join(report.problems())
    assert "id=c2: 'Fluorescent Green'" in text and "'baseColour'" in text
    assert report.ok  # conflicts are reported, never fatal
