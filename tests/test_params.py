"""The estimators follow scikit-learn's parameter convention: get_params / set_params / clone,
the tagger's settings grouped in config objects whose fields are nested parameters."""

from __future__ import annotations

import dataclasses

import pytest
from sklearn.base import clone

from multitag.embedding.model import Embedder
from multitag.tagger import config
from multitag.tagger.config import (
    GROUPS,
    FeatureConfig,
    HeadConfig,
    RuntimeConfig,
    TrainConfig,
    from_flat,
)
from multitag.tagger.estimator import MultiTaskTagger


def test_embedder_get_set_params_and_clone():
    est = Embedder(seed=3)
    assert est.get_params()["seed"] == 3
    assert est.set_params(seed=7) is est and est.seed == 7
    copy = clone(est)
    assert type(copy) is Embedder and copy is not est
    assert copy.get_params() == est.get_params()
    with pytest.raises(ValueError, match="no_such"):
        est.set_params(no_such=1)


def test_tagger_nested_params_set_and_clone():
    tagger = MultiTaskTagger(["gender"], features=FeatureConfig(backbone="mobilenetv2_100"))
    params = tagger.get_params(deep=True)
    assert params["features__backbone"] == "mobilenetv2_100"
    assert params["training__epochs"] == TrainConfig().epochs  # a group left None: defaults
    assert tagger.training is None  # stored as given
    assert tagger.set_params(training__epochs=3, heads__head_sets=2) is tagger
    assert tagger.settings("training").epochs == 3 and tagger.settings("heads").head_sets == 2
    assert MultiTaskTagger().settings("training").epochs == 25  # no shared default changed

    copy = clone(tagger)
    assert type(copy) is MultiTaskTagger and copy is not tagger
    assert copy.get_params(deep=True) == tagger.get_params(deep=True)
    assert copy.features is not tagger.features  # groups are cloned, not shared
    copy.set_params(features__image_size=64)
    assert tagger.settings("features").image_size is None

    with pytest.raises(ValueError, match="no_such"):
        tagger.set_params(no_such=1)
    with pytest.raises(ValueError, match="no_such"):
        tagger.set_params(training__no_such=1)


def test_a_flat_setting_on_the_tagger_says_where_it_lives():
    """No flat backdoor: a flat name is no constructor argument, and assigning one (which
    would be silently ignored) names its group."""
    with pytest.raises(TypeError, match="epochs"):
        MultiTaskTagger(["gender"], epochs=3)
    tagger = MultiTaskTagger(["gender"])
    with pytest.raises(AttributeError, match=r"set_params\(runtime__progress=...\)"):
        tagger.progress = False


def test_from_flat_groups_every_name_once():
    grouped = from_flat({"backbone": "x", "epochs": 3, "ensemble": 2, "progress": False})
    assert set(grouped) == set(GROUPS)
    assert grouped["features"].backbone == "x"
    assert grouped["training"].epochs == 3
    assert grouped["heads"] == HeadConfig(head_sets=2)  # the old name of head_sets
    assert grouped["runtime"] == RuntimeConfig(progress=False)
    with pytest.raises(ValueError, match=r"unknown tagger settings \['epoch'\]"):
        from_flat({"epoch": 3})
    assert from_flat({"epoch": 3}, strict=False)["training"] == TrainConfig()
    names = [f.name for cls in GROUPS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names))  # one group per name
    flat = config.to_flat(grouped)
    assert from_flat(flat) == grouped


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(training=TrainConfig(epochs=0)), r"^training\.epochs must be >= 1, not 0$"),
        (dict(training=TrainConfig(lr=0)), r"^training\.lr must be > 0, not 0$"),
        (dict(heads=HeadConfig(head_sets=0)), r"^heads\.head_sets: .* not 0$"),
        (dict(heads=HeadConfig(head="deep")), r"^heads\.head must be one of .* not 'deep'$"),
        (dict(training=TrainConfig(class_weight="x")), r"^training\.class_weight must be one"),
        (dict(features=FeatureConfig(flip_invariant=1)), r"^features\.flip_invariant must be"),
        (dict(features=FeatureConfig(view_fraction=0)), r"^features\.view_fraction must be"),
        (dict(features=FeatureConfig(view_fraction=1.5)), r"^features\.view_fraction must be"),
        (dict(training=FeatureConfig()), r"^training must be a TrainConfig .* not FeatureConfig$"),
    ],
)
def test_fit_checks_each_setting_by_its_group_and_name(settings, message):
    tagger = MultiTaskTagger(["gender"], **settings)
    with pytest.raises(ValueError, match=message):
        tagger.fit(None)


def test_tagger_settings_are_all_documented():
    """Every constructor argument and every field of every group has a numpydoc entry (the
    docstrings are the reference)."""
    classes = {MultiTaskTagger: MultiTaskTagger().get_params(deep=False), **{
        cls: cls().get_params() for cls in GROUPS.values()
    }}  # fmt: skip
    missing = [
        f"{cls.__name__}.{name}"
        for cls, params in classes.items()
        for name in params
        if f"\n    {name} :" not in cls.__doc__
    ]
    assert not missing
