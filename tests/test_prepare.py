"""One fit-preparation path (multitag.training.prepare): the tagger, the study and the embedder
split the same rows as their own code did before (golden rows recorded from it), and read
each other's cached features."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.synthetic import TASKS, synthetic_frame

GOLDEN = json.loads((Path(__file__).parent / "golden" / "fit_split.json").read_text())
COPIES = [3, 10, 17, 40, 41, 77]  # rows whose photo is copied byte for byte under a new id


def golden_frame(root: Path) -> pd.DataFrame:
    """96 generated photos + 6 byte-identical copies under new ids (the golden's frame)."""
    frame = synthetic_frame(root / "photos", n=96)
    extra = []
    for k, src in enumerate(COPIES):
        row = frame.iloc[src].to_dict()
        dst = root / "photos" / f"copy-{k}.jpg"
        shutil.copyfile(row["path"], dst)
        extra.append({**row, "id": str(5000 + k), "path": str(dst)})
    return pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)


@pytest.fixture(scope="module")
def frame(tmp_path_factory) -> pd.DataFrame:
    return golden_frame(tmp_path_factory.mktemp("golden"))


def assert_rows(name: str, **parts) -> None:
    """The rows of each split part are the golden's ``name`` rows."""
    for part, rows in parts.items():
        assert np.asarray(rows).tolist() == GOLDEN[name][part], (name, part)


def shards(cache: Path) -> list[Path]:
    return sorted(cache.rglob("shard-*.keys.npy"))


def test_copies_of_a_photo_stay_on_one_side(frame):
    from multitag.training.prepare import fit_rows

    rows = fit_rows(frame, TASKS)
    split = rows.split(0.5, seed=1)
    digests = rows.digests()
    for part, other in ((split.train, split.val), (split.val, split.train)):
        assert not set(digests[part]) & set(digests[other])
    assert len(split.test) == 0 and len(split.train) + len(split.val) == len(frame)
    loose = rows.split(0.5, seed=1, group_copies=False)
    assert set(digests[loose.train]) & set(digests[loose.val])  # the grouping is what did it


def test_excluded_rows_leave_the_others_where_they_were(frame):
    from multitag.training.prepare import fit_rows

    rows = fit_rows(frame, TASKS)
    full = rows.split(0.3, seed=2, test_fraction=0.2)
    cut = rows.split(0.3, seed=2, test_fraction=0.2, exclude={0, 5, 50})
    for part in ("train", "val", "test"):
        want = np.setdiff1d(getattr(full, part), [0, 5, 50])
        assert getattr(cut, part).tolist() == want.tolist()


def test_check_frame_names_the_missing_column(frame):
    from multitag.training.prepare import check_frame

    with pytest.raises(ValueError, match="'path' column"):
        check_frame(frame.drop(columns=["path"]))
    shuffled = frame.iloc[::-1]
    assert check_frame(shuffled).index.tolist() == list(range(len(frame)))


def test_tagger_prepare_fit_splits_and_caches_as_before(frame, tmp_path):
    from multitag import MultiTaskTagger
    from multitag.embedding.model import Embedder
    from multitag.tagger.config import from_flat

    cache = tmp_path / "cache"
    params = dict(image_size=64, epochs=1, cache_dir=cache, engine="torch", progress=False)
    tagger = MultiTaskTagger(TASKS, **from_flat({"val_fraction": 0.2, **params}))
    data = tagger.prepare_fit(frame)
    assert_rows("tagger", train=data.train_rows, val=data.val_rows)
    for name, target in data.targets.items():
        assert target.tolist() == GOLDEN["tagger"]["targets"][name]
    assert data.digests.tolist() == tagger.prepare_fit(frame).digests.tolist()
    written = shards(cache)
    assert written  # the first fit encoded and cached; the second one read it back

    # a missing photo is in neither part and does not move the others
    gone = {**frame.iloc[5].to_dict(), "id": "9999", "path": str(tmp_path / "gone.jpg")}
    missing = pd.concat([frame, pd.DataFrame([gone])], ignore_index=True)
    data = MultiTaskTagger(TASKS, **from_flat({"val_fraction": 0.25, **params})).prepare_fit(
        missing
    )
    assert_rows("tagger_missing", train=data.train_rows, val=data.val_rows)

    # an embedder on the same encoder reads the tagger's cache entries: no new shard
    emb = Embedder(["articleType"], image_size=64, cache_dir=cache, engine="torch", progress=False)
    emb.encoder_ = emb.build_encoder(frame["path"].tolist())
    assert emb.encoder_id() == tagger.encoder_id()
    got = emb.features(frame["path"].tolist())
    assert shards(cache) == written and not got.errors
    np.testing.assert_array_equal(got.features, data.features.features[: len(frame)])


@pytest.mark.parametrize(
    ("same", "seed", "name"),
    [
        (["articleType"], 0, "embed_articleType"),
        (["articleType", "baseColour"], 0, "embed_articleType+baseColour"),
        (["articleType"], 3, "embed_articleType_seed3"),
    ],
)
def test_embedder_split_as_before(frame, same, seed, name):
    from multitag.embedding.evaluate import default_split

    train, val = default_split(frame, same, seed=seed)
    assert_rows(name, train=train, val=val)


def test_study_split_as_before(frame, tmp_path):
    from multitag.research.study import StudyConfig, load_data

    frame.to_csv(tmp_path / "m.csv", index=False)
    base = {"data": str(tmp_path / "m.csv"), "tasks": TASKS, "min_count": 2}
    for name, extra in (
        ("study_group_copies_True", {}),
        ("study_group_copies_False", {"group_copies": False}),
        ("study_subset60_seed2", {"subset": 60, "seed": 2}),
    ):
        data = load_data(StudyConfig.from_dict({**base, **extra}))
        assert data.frame["id"].tolist() == GOLDEN[name]["ids"], name
        assert_rows(name, train=data.train, val=data.val, test=data.test)
