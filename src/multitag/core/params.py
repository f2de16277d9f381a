"""scikit-learn's parameter convention for multitag's estimators: constructor arguments are
stored unchanged under their own names, so ``get_params`` can read them back."""

from __future__ import annotations

import inspect


class ParamsMixin:
    """``get_params()``: the constructor's arguments as currently set."""

    def get_params(self) -> dict:
        """Constructor parameters (scikit-learn convention)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}
