"""The estimators follow scikit-learn's parameter convention: get_params / set_params / clone."""

from __future__ import annotations

import pytest
from sklearn.base import clone

from multitag.embedding.model import Embedder
from multitag.tagger.estimator import MultiTaskTagger


@pytest.mark.parametrize("cls", [MultiTaskTagger, Embedder])
def test_get_set_params_and_clone(cls):
    est = cls(seed=3)
    params = est.get_params()
    assert params["seed"] == 3
    assert est.set_params(seed=7) is est and est.seed == 7
    copy = clone(est)
    assert type(copy) is cls and copy is not est
    assert copy.get_params() == est.get_params()
    with pytest.raises(ValueError, match="no_such"):
        est.set_params(no_such=1)


def test_tagger_params_are_all_documented():
    """Every constructor argument has a numpydoc entry (the docstring is the reference)."""
    doc = MultiTaskTagger.__doc__
    missing = [name for name in MultiTaskTagger().get_params() if f"\n    {name} :" not in doc]
    assert not missing
