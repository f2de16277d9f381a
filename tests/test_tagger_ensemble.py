"""Ensembles of taggers (two backbones) on real images: averaged probabilities, save/reload,
`multitag combine` + `tag` / `evaluate`, clear errors."""

from __future__ import annotations

import collections
import gc
import json
import shutil
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from typer.testing import CliRunner

from multitag import MultiTaskTagger, TaggerEnsemble
from multitag.cli.main import app
from multitag.core.io import read_table_any
from multitag.evaluation.report import evaluate_frame
from multitag.tagger.export import export_onnx
from multitag.tagger.held_out import held_out_rows, training_keys
from multitag.tagger.loading import load_any_tagger, load_tagger
from multitag.vision import engines
from tests.conftest import FASHION, make_image, requires_fashion

pytestmark = [requires_fashion, pytest.mark.slow]
runner = CliRunner()


@pytest.fixture(scope="module")
def second_tagger(trained_tagger, fashion_frame):
    """Another backbone (MobileNetV2, no ImageNet head) on the same rows and tasks."""
    tagger = clone(trained_tagger).set_params(features__backbone="mobilenetv2_100")
    return tagger.fit(fashion_frame)


@pytest.fixture(scope="module")
def saved_members(trained_tagger, second_tagger, tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    return trained_tagger.save(root / "lite0"), second_tagger.save(root / "mnv2")


def test_probabilities_are_the_weighted_mean_of_the_members(
    trained_tagger, second_tagger, fashion_frame
):
    paths = fashion_frame.path.tolist()[:32]
    a = trained_tagger.predict_proba(paths)
    b = second_tagger.predict_proba(paths)
    ens = TaggerEnsemble([trained_tagger, second_tagger], weights=[3, 1])
    out = ens.predict_proba(paths)
    for t in ens.tasks_:
        expected = 0.75 * a["proba"][t.name] + 0.25 * b["proba"][t.name]
        np.testing.assert_allclose(out["proba"][t.name], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["proba"][t.name].sum(1), 1, rtol=1e-4)
        # the members disagree somewhere, so the average is not a copy of either
        assert not np.allclose(a["proba"][t.name], b["proba"][t.name])
    np.testing.assert_array_equal(out["imagenet"], a["imagenet"])  # Lite0's ImageNet head
    only_second = TaggerEnsemble([trained_tagger, second_tagger], weights=[0, 1])
    np.testing.assert_allclose(
        only_second.predict_proba(paths)["proba"]["gender"], b["proba"]["gender"], atol=1e-6
    )
    labels = ens.predict(paths[:8])
    assert list(labels.columns) == ["id", "path", *[t.name for t in ens.tasks_]]
    assert set(labels["gender"]) <= set(ens.tasks_[0].classes)


@pytest.mark.skipif(not engines.openvino_available(), reason="openvino missing")
def test_release_engines_frees_each_member_after_its_pass(
    trained_tagger, second_tagger, fashion_frame, monkeypatch
):
    """Batch jobs (the CLI) free each member's compiled engine after its pass: the same
    probabilities, and the engine is really collected (its callback made a cycle once)."""
    # engines of their own: other tests' live copies of these models would share them
    monkeypatch.setattr(engines, "_RUNNERS", weakref.WeakKeyDictionary())
    monkeypatch.setattr(engines, "_BY_CONTENT", collections.OrderedDict())
    paths = fashion_frame.path.tolist()[:24]
    ens = TaggerEnsemble([trained_tagger, second_tagger])
    kept = ens.predict_proba(paths)
    runners = [weakref.ref(engines._RUNNERS[m.net_.encoder][1]) for m in ens.members]
    ens.release_engines = True
    released = ens.predict_proba(paths)
    for name, p in kept["proba"].items():
        np.testing.assert_array_equal(p, released["proba"][name])
    gc.collect()
    assert all(m.net_.encoder not in engines._RUNNERS for m in ens.members)
    assert all(r() is None for r in runners)  # nothing else holds them: memory is back
    assert not engines.release_runner(trained_tagger.net_.encoder)  # nothing left to free


def test_save_reload_identical(saved_members, fashion_frame, tmp_path):
    ens = TaggerEnsemble.from_dirs(saved_members)
    ens.save(tmp_path / "ens")
    cfg = json.loads((tmp_path / "ens/config.json").read_text())
    assert cfg["kind"] == "multitag-ensemble" and cfg["members"] == ["member-0", "member-1"]
    reloaded = load_any_tagger(tmp_path / "ens")
    assert isinstance(reloaded, TaggerEnsemble) and reloaded.weights == [0.5, 0.5]
    assert [m.settings("features").backbone for m in reloaded.members] == [
        "tf_efficientnet_lite0",
        "mobilenetv2_100",
    ]
    paths = fashion_frame.path.tolist()[:24]
    a, b = ens.predict_proba(paths), reloaded.predict_proba(paths)
    for name in a["proba"]:
        np.testing.assert_array_equal(a["proba"][name], b["proba"][name])
    assert isinstance(load_any_tagger(saved_members[0]), MultiTaskTagger)
    with pytest.raises(ValueError, match="is an ensemble of taggers.*pass one of its member-i"):
        load_tagger(tmp_path / "ens")
    # saving a smaller ensemble over it leaves no stale member folder behind
    (tmp_path / "ens/member-notes").mkdir()  # not a member folder: left alone
    TaggerEnsemble([reloaded.members[1]]).save(tmp_path / "ens")
    assert sorted(p.name for p in (tmp_path / "ens").glob("member-*")) == [
        "member-0", "member-notes"]  # fmt: skip
    member = load_any_tagger(tmp_path / "ens").members[0]
    assert member.settings("features").backbone == "mobilenetv2_100"


def test_cli_combine_then_tag_and_evaluate(saved_members, fashion_frame, tmp_path):
    out = tmp_path / "ens"
    r = runner.invoke(app, ["combine", str(out), *map(str, saved_members)])
    assert r.exit_code == 0, r.output
    assert "ensemble of 2 taggers" in r.output
    # the members are named (not swallowed as console markup), framed ones said so
    said = " ".join(r.output.split())
    assert "TaggerEnsemble([tf_efficientnet_lite0 framed, mobilenetv2_100 framed]" in said
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in fashion_frame.path[:6]:
        shutil.copy(p, folder)
    (folder / "broken.jpg").write_bytes(Path(fashion_frame.path[0]).read_bytes()[:300])
    tags_file = tmp_path / "tags.parquet"
    r = runner.invoke(app, ["tag", str(out), str(folder), "--out", str(tags_file)])
    assert r.exit_code == 0, r.output
    tags = read_table_any(tags_file)
    assert len(tags) == 6 and "articleType_top" in tags.columns
    rejects = pd.read_csv(tags_file.with_name("tags.rejects.csv"))
    assert list(rejects.id) == ["broken"]
    manifest = tmp_path / "styles.csv"
    fashion_frame.head(40).drop(columns=["path"]).to_csv(manifest, index=False)
    r = runner.invoke(
        app,
        ["evaluate", str(out), "--data", str(manifest), "--images", str(FASHION / "images"),
         "--json", str(tmp_path / "m.json")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["n_images"] == 40 and report["tasks"]["masterCategory"]["accuracy"] > 0.8


def test_clear_errors(trained_tagger, second_tagger, fashion_frame, cache_dir, saved_members):
    other = clone(trained_tagger).set_params(tasks=["gender", "season"], training__epochs=2)
    other.fit(fashion_frame)
    with pytest.raises(ValueError, match=r"member 1 tags \['gender', 'season'\]"):
        TaggerEnsemble([trained_tagger, other])
    with pytest.raises(ValueError, match="one non-negative number per member"):
        TaggerEnsemble([trained_tagger, second_tagger], weights=[1])
    with pytest.raises(ValueError, match="member 1 is not fitted"):
        TaggerEnsemble([trained_tagger, MultiTaskTagger()])
    ens = TaggerEnsemble([trained_tagger, second_tagger])
    with pytest.raises(ValueError, match="no single feature space"):
        ens.predict_proba(fashion_frame.path.tolist()[:2], return_features=True)
    with pytest.raises(ValueError, match="exports member by member"):
        export_onnx(ens, Path("x.onnx"))
    r = runner.invoke(app, ["combine", str(saved_members[0]), *map(str, saved_members)])
    assert r.exit_code != 0 and "holds a saved tagger" in r.output
    assert (saved_members[0] / "model.safetensors").is_file()  # the member is untouched
    assert not (saved_members[0] / "member-0").exists()
    assert evaluate_frame(ens, fashion_frame.head(20))["n_images"] == 20


def test_cli_combine_with_a_prior_shift_on_held_out_photos(saved_members, fashion_frame, tmp_path):
    from multitag.data.manifest import load_manifest
    from multitag.multitask.prior_shift import TAUS

    full = load_manifest(FASHION / "styles.csv", FASHION / "images")
    held_out = full[~full["id"].isin(fashion_frame["id"])]
    held_out = held_out[held_out["articleType"].isin(set(fashion_frame["articleType"]))]
    held_out = held_out.sort_values("id").groupby("articleType").head(25)
    manifest = tmp_path / "held_out.csv"
    held_out.drop(columns=["path"]).to_csv(manifest, index=False)
    out = tmp_path / "ens"
    r = runner.invoke(
        app,
        ["combine", str(out), *map(str, saved_members), "--prior-shift-data", str(manifest),
         "--images", str(FASHION / "images")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "prior shift articleType: tau" in r.output
    ens = load_any_tagger(out)
    tasks = [t.name for t in ens.tasks_ if t.kind == "multiclass"]
    assert list(ens.prior_shift_) == tasks
    for name, shift in ens.prior_shift_.items():
        assert shift["tau"] in TAUS and (shift["tau"] == 0 or shift["cross_fitted_gain"] > 0)
        n_classes = next(t.n_classes for t in ens.tasks_ if t.name == name)
        assert len(shift["bias"]) == (n_classes if shift["tau"] else 0)

    # a kept shift multiplies the averaged probabilities by exp(bias) and renormalises
    paths = fashion_frame.path.tolist()[:16]
    plain = TaggerEnsemble(ens.members).predict_proba(paths)["proba"]["articleType"]
    bias = np.linspace(-4, 4, plain.shape[1])  # strong enough to change some answers
    ens.prior_shift_ = {"articleType": {"tau": -0.5, "cross_fitted_gain": 0.01, "bias": bias}}
    expected = plain * np.exp(bias)
    expected /= expected.sum(1, keepdims=True)
    got = ens.predict_proba(paths)["proba"]["articleType"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    ens.prior_shift_["articleType"]["bias"] = bias.tolist()
    ens.save(tmp_path / "forced")
    again = load_any_tagger(tmp_path / "forced").predict_proba(paths)["proba"]["articleType"]
    np.testing.assert_array_equal(again, got)

    def choices(shifts):
        return {name: (s["tau"], s["cross_fitted_gain"]) for name, s in shifts.items()}

    # refitting a shifted ensemble chooses on the plain average again, not on the shifted one
    # (gender: a task these small members get wrong at times, so a shift changes its score)
    n_gender = next(t.n_classes for t in ens.tasks_ if t.name == "gender")
    ens.prior_shift_["gender"] = {"tau": 1.0, "cross_fitted_gain": 0.01,
                                  "bias": np.linspace(-4, 4, n_gender).tolist()}  # fmt: skip
    refit = ens.fit_prior_shift(held_out).prior_shift_
    assert choices(refit) == choices(load_any_tagger(out).prior_shift_)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['articleType'\]"):
        ens.fit_prior_shift(held_out.drop(columns=["articleType"]))


def _saved_before_integrity(model_dir: Path) -> None:
    """Make ``model_dir`` look saved by a multitag without integrity records (files then edited
    are not refused: nothing records what they were)."""
    config = json.loads((model_dir / "config.json").read_text())
    config.pop("integrity", None)
    (model_dir / "config.json").write_text(json.dumps(config))


def test_prior_shift_and_evaluate_leave_out_photos_a_member_trained_on(
    trained_tagger, saved_members, fashion_frame, tmp_path
):
    """Every saved tagger records its split (split.csv), so `combine --prior-shift-data` and
    `evaluate --held-out` given the training manifest use its validation rows only."""
    split = trained_tagger.split_
    assert load_tagger(saved_members[0]).split_ == split
    assert len(split["train_digests"]) == len(split["train_ids"])
    assert not set(split["train_digests"]) & set(split["val_digests"])  # copies stay together
    # photos are matched by content: a val photo byte-identical to a training one is seen
    train_photos = set(split["train_digests"])
    n_val = sum(d not in train_photos for d in split["val_digests"])
    n_train = len(fashion_frame) - n_val
    assert n_train >= len(split["train_ids"]) and n_val
    manifest = tmp_path / "train_manifest.csv"
    fashion_frame.drop(columns=["path"]).to_csv(manifest, index=False)
    images = ["--images", str(FASHION / "images")]
    out = tmp_path / "ens"
    r = runner.invoke(
        app, ["combine", str(out), *map(str, saved_members), "--prior-shift-data", str(manifest),
              *images],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"prior shift fitted on: {n_val} row(s) no model trained on ({n_train} row" in r.output
    assert load_any_tagger(out).members[1].split_ == split  # members keep their split

    # a copy of a training photo under a new id is seen; another catalogue's photo whose id
    # collides with a training id is not
    photo = tmp_path / "copy.jpg"
    first_train = fashion_frame.set_index("id").loc[split["train_ids"][0]]
    shutil.copy(first_train["path"], photo)
    other = make_image(tmp_path / "other.jpg", size=(60, 80), colour=(10, 200, 40))
    probe = pd.DataFrame({"id": ["copy", split["train_ids"][1]], "path": [str(photo), str(other)]})
    rows = held_out_rows(trained_tagger, probe)
    assert rows.n_seen == 1 and rows.frame["path"].tolist() == [str(other)]

    def evaluate(*extra):
        args = ["evaluate", str(out), "--data", str(manifest), *images, *extra]
        return runner.invoke(app, [*args, "--json", str(tmp_path / "m.json")])

    r = evaluate()
    assert r.exit_code == 0 and f"{n_train} of {len(fashion_frame)} row(s) were in" in r.output
    assert json.loads((tmp_path / "m.json").read_text())["n_images"] == len(fashion_frame)
    r = evaluate("--held-out")
    assert r.exit_code == 0 and f"scoring: {n_val} row(s) no model trained on" in r.output
    assert json.loads((tmp_path / "m.json").read_text())["n_images"] == n_val

    # only photos the members trained on: nothing honest to fit on, said before any work
    seen_only = tmp_path / "seen.csv"
    fashion_frame[fashion_frame["id"].isin(split["train_ids"])].drop(columns=["path"]).to_csv(
        seen_only, index=False
    )
    r = runner.invoke(
        app, ["combine", str(tmp_path / "e2"), *map(str, saved_members), "--prior-shift-data",
              str(seen_only), *images],
    )  # fmt: skip
    assert r.exit_code != 0 and "every row of the prior-shift data" in r.output
    assert not (tmp_path / "e2").exists()

    # a split.csv without digests (saved by an earlier version): matched by id instead
    by_id = tmp_path / "by_id"
    shutil.copytree(saved_members[0], by_id)
    old_split = pd.read_csv(by_id / "split.csv", dtype=str).drop(columns=["digest"])
    old_split.to_csv(by_id / "split.csv", index=False)
    _saved_before_integrity(by_id)  # that version did not record file hashes either
    assert training_keys(load_tagger(by_id)) == ("id", set(split["train_ids"]))
    assert held_out_rows(load_tagger(by_id), probe).frame["id"].tolist() == ["copy"]

    # a member saved before split.csv existed: nothing can be left out, and the output says so
    old = tmp_path / "old"
    shutil.copytree(saved_members[1], old)
    (old / "split.csv").unlink()
    _saved_before_integrity(old)
    assert not hasattr(load_tagger(old), "split_")
    ens = TaggerEnsemble.from_dirs([saved_members[0], old])
    ens.fit_prior_shift(fashion_frame)
    assert ens.prior_shift_rows_.n_seen == 0 and len(ens.prior_shift_rows_.frame) == len(
        fashion_frame
    )
    assert "does not record its training split" in ens.prior_shift_rows_.summary("fitted on")
