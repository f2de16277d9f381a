"""refit=True: heads trained again on train + val for the epochs val chose."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from multitag import MultiTaskTagger
from multitag.cli.main import app
from multitag.evaluation.report import evaluate_split
from multitag.multitask.prior_shift import PriorShiftedHeads
from multitag.research.learning_curve import learning_curve
from multitag.tagger.config import TrainConfig, from_flat
from multitag.tagger.held_out import held_out_rows

from .conftest import FASHION, requires_fashion

TASKS = ["gender", "articleType", "season"]


def _kwargs(cache_dir) -> dict:
    return dict(image_size=96, epochs=6, min_count=3, cache_dir=cache_dir, progress=False)


@requires_fashion
@pytest.mark.slow
def test_refit_retrains_every_head_set_on_all_rows_and_reports_the_heads_before_it(
    fashion_frame, cache_dir, tmp_path, monkeypatch
):
    from multitag.multitask import prior_shift

    monkeypatch.setattr(prior_shift, "choose_tau", lambda *a, **k: (0.3, 0.01))  # keep a shift
    kwargs = dict(_kwargs(cache_dir), head_sets=2, prior_shift="auto")
    plain = MultiTaskTagger(TASKS, **from_flat(kwargs)).fit(fashion_frame)
    tagger = MultiTaskTagger(TASKS, **from_flat(dict(kwargs, refit=True))).fit(fashion_frame)

    # the same head sets chose the epochs; each was trained again on every usable row
    n_train, n_val = len(plain.split_["train_ids"]), len(plain.split_["val_ids"])
    assert tagger.refit_ == {
        "epochs": [h.best_epoch + 1 for h in plain.member_histories_],
        "rows_before": n_train,
        "rows_after": n_train + n_val,
        "val_rows": n_val,
        # photos above; the rows of their extra views (views="auto": flip, jpeg60) apart
        "view_rows": 2 * n_train,
    }
    assert sorted(tagger.split_["train_ids"]) == sorted(
        plain.split_["train_ids"] + plain.split_["val_ids"]
    )
    assert tagger.split_["val_ids"] == [] and plain.refit_ is None
    # what `train` reports is the heads before the refit, scored on rows they did not see
    report, before = evaluate_split(tagger), evaluate_split(plain)
    for name in TASKS:
        assert report["tasks"][name]["weighted_f1"] == before["tasks"][name]["weighted_f1"]
    assert report["split"]["n_train"] == n_train and report["split"]["refit"] == tagger.refit_
    # ... while the saved heads are new ones, still shifted by the prior chosen before
    assert isinstance(tagger.net_.heads, PriorShiftedHeads)
    assert tagger.prior_shift_ == plain.prior_shift_
    now = tagger.predict_proba_features(tagger.val_features_)
    assert any(not np.allclose(now[n], tagger.val_proba_[n]) for n in TASKS)
    fit_on_val = (now["articleType"].argmax(1) == tagger.val_targets_["articleType"]).mean()
    assert fit_on_val >= (tagger.val_proba_["articleType"].argmax(1)
                          == tagger.val_targets_["articleType"]).mean()  # fmt: skip

    reloaded = MultiTaskTagger.load(tagger.save(tmp_path / "model"))
    assert reloaded.settings("training").refit and reloaded.refit_ == tagger.refit_
    paths = fashion_frame["path"].tolist()[:32]
    again, want = reloaded.predict_proba(paths)["proba"], tagger.predict_proba(paths)["proba"]
    for name in TASKS:
        np.testing.assert_array_equal(again[name], want[name])
    # nothing of its training manifest is held out any more, and the message says why
    with pytest.raises(ValueError, match="every row of the manifest.*unless it was trained with"):
        held_out_rows(reloaded, fashion_frame)


def test_refit_is_refused_where_it_cannot_apply(fashion_frame, cache_dir):
    with pytest.raises(
        ValueError, match=r"training\.refit=True retrains the heads on frozen features"
    ):
        MultiTaskTagger(TASKS, training=TrainConfig(refit=True, freeze="blocks.5")).fit(
            fashion_frame
        )
    with pytest.raises(ValueError, match=r"training\.refit must be True or False, not 'yes'"):
        MultiTaskTagger(TASKS, training=TrainConfig(refit="yes")).fit(fashion_frame)
    with pytest.raises(ValueError, match="learning_curve scores every size on the val split"):
        tagger = MultiTaskTagger(TASKS, **from_flat(dict(_kwargs(cache_dir), refit=True)))
        learning_curve(tagger, fashion_frame)


@requires_fashion
def test_cli_train_refit_says_what_its_scores_are(fashion_frame, cache_dir, tmp_path):
    csv = tmp_path / "styles.csv"
    fashion_frame.drop(columns=["path"]).to_csv(csv, index=False)
    model = tmp_path / "model"
    r = CliRunner().invoke(
        app,
        [
            "train", "--data", str(csv), "--images", str(FASHION / "images"), "--tasks",
            "gender,articleType", "--out", str(model), "--image-size", "96", "--epochs", "4",
            "--min-count", "3", "--cache-dir", str(cache_dir), "--refit",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "before the heads were trained again on all" in " ".join(r.output.split())
    config = json.loads((model / "config.json").read_text())
    assert config["params"]["refit"] is True
    assert config["training"]["refit"]["rows_after"] == len(fashion_frame)
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["split"]["refit"] == config["training"]["refit"]
