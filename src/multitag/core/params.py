"""scikit-learn's parameter convention for multitag's estimators.

Constructor arguments are stored unchanged under their own names, so scikit-learn's
``get_params`` / ``set_params`` / ``clone`` / ``repr`` work on them as on any estimator.
"""

from __future__ import annotations

from sklearn.base import BaseEstimator


class ParamsMixin(BaseEstimator):
    """``get_params``, ``set_params`` and ``sklearn.base.clone`` support (scikit-learn's
    ``BaseEstimator``): fitted state ends in ``_`` and is not a parameter."""
