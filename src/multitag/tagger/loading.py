"""Load whatever tagger a model directory holds: one tagger, or an ensemble of taggers."""

from __future__ import annotations

import os

from multitag.tagger.ensemble import TaggerEnsemble
from multitag.tagger.estimator import MultiTaskTagger
from multitag.tagger.persistence import ENSEMBLE_KIND, read_config


def load_tagger(directory: str | os.PathLike) -> MultiTaskTagger:
    """Rebuild a :class:`~multitag.tagger.estimator.MultiTaskTagger` from a model directory."""
    return MultiTaskTagger.load(directory)


def load_any_tagger(directory: str | os.PathLike) -> MultiTaskTagger | TaggerEnsemble:
    """The tagger saved in ``directory``: a
    :class:`~multitag.tagger.estimator.MultiTaskTagger`, or a
    :class:`~multitag.tagger.ensemble.TaggerEnsemble` for an ensemble directory."""
    if read_config(directory).get("kind") == ENSEMBLE_KIND:
        return TaggerEnsemble.load(directory)
    return load_tagger(directory)
