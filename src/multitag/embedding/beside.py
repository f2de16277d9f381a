"""An embedder trained beside a fitted tagger, on the tagger's own cached encoder features.

The tagger's model directory can hold an embedding layer too (:meth:`Embedder.save`), so one
encoder pass gives tags and embedding (:func:`~multitag.embedding.model.encode_model_dir`,
the catalogue's similar-items index). :func:`fit_beside` trains that layer on the features
the tagger was trained on: it shares the tagger's encoder object and feature-cache key, so
training reads the cache and never runs the backbone again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from multitag.embedding.model import Embedder


def fit_beside(
    tagger, frame: pd.DataFrame, same: Sequence[str], rows: np.ndarray | None = None, **params
) -> Embedder:
    """An :class:`Embedder` over ``tagger``'s encoder (frozen backbone, same preprocessing
    and cache), trained on ``rows`` of ``frame`` (default: all) for the ``same`` columns;
    ``params`` are the embedder's (``epochs``, ``dim``, ...). Save it into the tagger's model
    directory with ``embedder.save(model_dir)``."""
    features, training = tagger.settings("features"), tagger.settings("training")
    run = tagger.settings("runtime")
    if training.freeze != "all":
        raise ValueError(
            f"the tagger fine-tuned its backbone (freeze={training.freeze!r}): its features are "
            "not the cached frozen ones; train the embedder with `multitag embed train`"
        )
    enc = tagger.net_.encoder
    emb = Embedder(
        list(same),
        backbone=features.backbone,
        weights=features.weights,
        image_size=enc.preprocessing.image_size,
        framing=enc.preprocessing.framing or "none",
        detail=enc.preprocessing.detail or "none",
        stages=enc.stages,
        colour_bins=enc.colour_bins,
        grid_stages=enc.grid_stages,
        cache_dir=tagger.feature_cache_dir(),
        precision=training.precision,
        engine=run.engine,
        workers=run.workers,
        progress=run.progress,
        **params,
    )
    emb.encoder_ = enc  # the same encoder: the same cache key, so a cache read
    return emb.fit(frame, rows=rows)
