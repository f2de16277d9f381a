"""Prior shift: a per-task tau chosen on val rows, kept only where it helps out of fold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multitag import MultiTaskTagger
from multitag.multitask import prior_shift
from multitag.multitask.prior_shift import PriorShiftedHeads, choose_tau, log_prior
from multitag.tagger.config import HeadConfig, from_flat

from .conftest import requires_fashion

TASKS = ["gender", "articleType", "season"]


def _ambiguous_heads(n: int = 600, seed: int = 0):
    """Labels 80 % class 0; the 'head' leans to class 1 on a third of the class-0 rows."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    p1 = np.where(y == 1, 0.8, 0.1)
    lean = (y == 0) & (rng.random(n) < 1 / 3)
    p1[lean] = 0.55
    return np.stack([1 - p1, p1], 1), y


def test_a_shift_towards_rare_classes_is_chosen_where_they_lose_close_calls():
    """The usual case of a cross-entropy head: a rare class loses the rows it nearly wins."""
    rng = np.random.default_rng(2)
    y = (rng.random(600) < 0.2).astype(int)  # class 1 is rare
    p1 = np.where(y == 1, 0.45, 0.1)  # its rows lean to class 1, not enough to win
    p1[(y == 1) & (rng.random(600) < 0.3)] = 0.8
    proba = np.stack([1 - p1, p1], 1)
    tau, gain = choose_tau(proba, y, log_prior(y, 2))
    assert tau > 0 and gain > 0.05


def test_a_shift_towards_the_frequent_class_is_chosen_where_it_helps():
    proba, y = _ambiguous_heads()
    prior = log_prior(y, 2)
    tau, gain = choose_tau(proba, y, prior)
    assert tau < 0 and gain > 0.05  # frequent class 0 wins the 0.45 / 0.55 rows
    shifted = (np.log(proba) - tau * prior).argmax(1)
    assert (shifted == y).mean() > (proba.argmax(1) == y).mean()


def test_no_shift_where_the_heads_are_already_right():
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.3).astype(int)
    proba = np.where(y[:, None] == np.arange(2), 0.9, 0.1)
    assert choose_tau(proba, y, log_prior(y, 2)) == (0.0, 0.0)


def test_mismatched_shapes_are_named():
    proba, y = _ambiguous_heads(50)
    with pytest.raises(ValueError, match=r"proba \(50, 2\), labels \(49,\)"):
        choose_tau(proba, y[:49], log_prior(y, 2))


def test_an_unknown_prior_shift_is_refused(fashion_frame):
    with pytest.raises(ValueError, match="prior_shift must be 'none' or 'auto'.*'always'"):
        MultiTaskTagger(["gender"], heads=HeadConfig(prior_shift="always")).fit(fashion_frame)


@requires_fashion
@pytest.mark.slow
def test_auto_records_every_task_and_shifts_only_where_cross_fitting_gains(
    fashion_frame, cache_dir
):
    kwargs = dict(image_size=96, epochs=8, min_count=3, cache_dir=cache_dir, progress=False)
    tagger = MultiTaskTagger(TASKS, **from_flat(dict(kwargs, prior_shift="auto")))
    tagger.fit(fashion_frame)
    assert set(tagger.prior_shift_) == set(TASKS)
    for shift in tagger.prior_shift_.values():
        assert shift["tau"] in prior_shift.TAUS
        assert shift["tau"] == 0 or shift["cross_fitted_gain"] > 0
    plain = MultiTaskTagger(TASKS, **from_flat(kwargs)).fit(fashion_frame)
    assert plain.prior_shift_ == {}
    assert not isinstance(plain.net_.heads, PriorShiftedHeads)


@requires_fashion
@pytest.mark.slow
def test_a_shifted_tagger_predicts_the_shifted_argmax_and_reloads_exactly(
    fashion_frame, cache_dir, tmp_path, monkeypatch
):
    """Force a shift on articleType (the data decides whether one is kept; this checks that a
    kept one is applied, saved and reloaded)."""
    priors = []  # one per multi-class task, in the tagger's task order

    def forced(proba, labels, prior, **_):
        priors.append(prior)
        return -0.5, 0.01

    kwargs = dict(image_size=96, epochs=8, min_count=3, cache_dir=cache_dir, progress=False)
    plain = MultiTaskTagger(TASKS, **from_flat(kwargs)).fit(fashion_frame)
    monkeypatch.setattr(prior_shift, "choose_tau", forced)
    tagger = MultiTaskTagger(TASKS, **from_flat(dict(kwargs, prior_shift="auto")))
    tagger.fit(fashion_frame)
    assert isinstance(tagger.net_.heads, PriorShiftedHeads)
    assert tagger.prior_shift_["articleType"] == {"tau": -0.5, "cross_fitted_gain": 0.01}

    paths = fashion_frame["path"].tolist()[:48]
    before = plain.predict_proba(paths)["proba"]["articleType"]
    after = tagger.predict_proba(paths)["proba"]["articleType"]
    # same seed, same heads underneath: the shift is exactly p * prior^0.5, renormalised
    assert [t.name for t in tagger.tasks_] == TASKS  # all multi-class
    expected = before * np.exp(0.5 * priors[TASKS.index("articleType")])
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-6)

    reloaded = MultiTaskTagger.load(tagger.save(tmp_path / "model"))
    assert isinstance(reloaded.net_.heads, PriorShiftedHeads)
    assert reloaded.prior_shift_ == tagger.prior_shift_
    again, now = reloaded.predict_proba(paths)["proba"], tagger.predict_proba(paths)["proba"]
    for name in TASKS:
        np.testing.assert_array_equal(again[name], now[name])

    ort = pytest.importorskip("onnxruntime")
    from multitag.tagger.export import export_onnx
    from multitag.vision.features import iter_batches

    onnx_path = export_onnx(reloaded, tmp_path / "shifted.onnx")
    size = reloaded.net_.encoder.preprocessing.image_size
    ((_, images, _),) = list(iter_batches(paths[:8], size, batch_size=8, workers=0))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"images": images.numpy()})))
    with torch.inference_mode():
        want = reloaded.net_.float().eval()(images)[0]["articleType"].numpy()
    (output,) = [n for n in names if "articleType" in n]
    np.testing.assert_allclose(got[output], want, atol=1e-4)
