"""Fit preparation: the one path from a manifest frame to what training starts from.

Every trainer (the tagger's :meth:`~multitag.tagger.estimator.MultiTaskTagger.prepare_fit`,
the study's :func:`~multitag.research.study.load_data`, the embedder's
:func:`~multitag.embedding.evaluate.default_split` and :meth:`Embedder.fit
<multitag.embedding.model.Embedder.fit>`) goes through the same steps, here:

1. :func:`check_frame`: the columns it needs are there; the index is reset (row ``i`` is
   ``frame.iloc[i]`` everywhere after).
2. :func:`fit_rows`: the tasks inferred from the label columns
   (:func:`~multitag.data.tasks.infer_tasks`) and their encoded targets.
3. :meth:`FitRows.split`: a seeded split stratified on the task with the most classes
   (:func:`~multitag.data.manifest.default_stratify`), copies of a photo (the same content
   digest, :func:`~multitag.core.digest.photo_digests`) on one side, optionally a test part
   first, unusable rows left out.
4. :class:`FeatureStore`: an encoder's features (or frozen-prefix activations) read from and
   added to the on-disk feature cache, keyed by
   :func:`~multitag.vision.extraction.encoder_cache_id`, so every trainer that uses the same
   encoder reads the same cache entries.

The same frame, tasks, fractions and seed give the same rows whatever the trainer.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from multitag.core.digest import photo_digests
from multitag.core.runtime import feature_cache_folder
from multitag.data.manifest import default_stratify, split_indices
from multitag.data.tasks import Task, encode_all, infer_tasks
from multitag.vision.extraction import (
    FeatureResult,
    encoder_cache_id,
    extract_features,
    extract_prefix,
    fill_cache,
)
from multitag.vision.features import Encoder

__all__ = ["FeatureStore", "FitRows", "RowSplit", "check_frame", "fit_rows"]


def check_frame(frame: pd.DataFrame, columns: Sequence[str] = ("id", "path")) -> pd.DataFrame:
    """``frame`` with its index reset, after checking it has ``columns`` (a ValueError names
    the first one missing)."""
    for col in columns:
        if col not in frame.columns:
            raise ValueError(f"the frame needs an {col!r} column; use load_manifest()")
    return frame.reset_index(drop=True)


@dataclass
class RowSplit:
    """Row indices (into the checked frame) of each part; ``test`` is empty unless asked for.
    Rows left out as unusable are in no part."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class FitRows:
    """A checked frame (index reset), its tasks and encoded targets; :meth:`split` divides
    its rows."""

    frame: pd.DataFrame
    tasks: list[Task]
    targets: dict[str, np.ndarray]

    def digests(self) -> np.ndarray:
        """The content digest of every row's photo (``""`` where unreadable)."""
        return np.asarray(photo_digests(self.frame["path"]), dtype=object)

    def split(
        self,
        val_fraction: float,
        seed: int = 0,
        *,
        test_fraction: float = 0.0,
        digests: Sequence[str] | None = None,
        group_copies: bool = True,
        exclude: Collection[int] = (),
    ) -> RowSplit:
        """Split the rows, stratified on the task with the most classes and seeded.

        ``group_copies``: rows whose photos have the same content digest stay on one side
        (``digests``: those digests when already computed, e.g.
        :attr:`FeatureResult.digests <multitag.vision.extraction.FeatureResult>`; else read
        from the photos; without a ``path`` column there are none to group). With
        ``test_fraction`` the test rows are split off first, then ``val_fraction`` of all rows
        from the rest. ``exclude``: rows (unreadable photos) dropped from every part after
        splitting, so they do not move the others."""
        frame = self.frame
        strat = default_stratify(self.tasks)
        groups = None
        if group_copies and digests is not None:
            groups = np.asarray(digests, dtype=object)
        elif group_copies and "path" in frame.columns:
            groups = self.digests()
        if test_fraction:
            rest, test = split_indices(frame, strat, test_fraction, seed, groups=groups)
            train, val = split_indices(
                frame.iloc[rest].reset_index(drop=True),
                strat,
                val_fraction / (1 - test_fraction),
                seed,
                groups=None if groups is None else groups[rest],
            )
            train, val = rest[train], rest[val]
        else:
            train, val = split_indices(frame, strat, val_fraction, seed, groups=groups)
            test = np.zeros(0, dtype=np.int64)
        bad = np.asarray(sorted(exclude), dtype=np.int64)
        return RowSplit(
            *(np.setdiff1d(np.asarray(part, np.int64), bad) for part in (train, val, test))
        )


def fit_rows(
    frame: pd.DataFrame,
    tasks: Sequence[str],
    *,
    columns: Sequence[str] = ("id", "path"),
    **task_options,
) -> FitRows:
    """Check ``frame`` (:func:`check_frame` with ``columns``), infer the ``tasks`` from its
    label columns (``task_options``: :func:`~multitag.data.tasks.infer_tasks`'s
    ``multilabel``, ``delimiter``, ``min_count``, ``rare``) and encode their targets."""
    frame = check_frame(frame, columns)
    inferred = infer_tasks(frame, list(tasks), **task_options)
    return FitRows(frame, inferred, encode_all(frame, inferred))


@dataclass
class FeatureStore:
    """An encoder's features through the on-disk feature cache, as every trainer reads them.

    ``cache_dir``: an estimator's setting (:func:`~multitag.core.runtime.feature_cache_folder`:
    ``"default"`` = the default cache's ``features/``, ``None`` = no cache, else a folder).
    ``backbone``, ``weights``, ``precision`` and ``engine`` join the encoder's settings in the
    cache key (:func:`~multitag.vision.extraction.encoder_cache_id`), so the tagger and an
    embedder on the same encoder share entries."""

    encoder: Encoder
    backbone: str
    weights: object = "auto"
    precision: str = "auto"
    engine: str = "auto"
    cache_dir: str | os.PathLike | None = "default"
    workers: int | None = None
    progress: bool = True

    @property
    def folder(self) -> Path | None:
        """The cache folder (``None``: no cache)."""
        return feature_cache_folder(self.cache_dir)

    def cache_id(self) -> dict:
        """What keys this encoder's cached features."""
        return encoder_cache_id(
            self.encoder, self.backbone, self.weights, self.precision, self.engine
        )

    def features(
        self, paths: Sequence[str | os.PathLike], *, view: str | None = None, view_seed: int = 0
    ) -> FeatureResult:
        """Features of ``paths`` (an extra ``view`` of each when given), from the cache where
        there, encoded and added to it where not; unreadable photos listed in ``errors``."""
        return extract_features(
            self.encoder, list(paths), **self._extraction(), view=view, view_seed=view_seed
        )

    def fill(self, paths: Sequence[str | os.PathLike]) -> dict[int, str]:
        """Encode the photos of ``paths`` not yet in the cache and store them, without reading
        the features back (:func:`~multitag.vision.extraction.fill_cache`); ``{row: reason}``
        for unreadable ones."""
        return fill_cache(self.encoder, list(paths), **self._extraction())

    def prefix(
        self, paths: Sequence[str | os.PathLike], block: int
    ) -> tuple[torch.Tensor, torch.Tensor, dict[int, str]]:
        """The frozen prefix's outputs up to ``block`` (what fine-tuning above it trains on),
        cached like features: ``(activations, prefix features, errors)``."""
        return extract_prefix(self.encoder, list(paths), block, **self._extraction())

    def _extraction(self) -> dict:
        """The cache and runtime settings every extraction from this store passes on."""
        folder = self.folder
        return {
            "cache_dir": folder,
            "encoder_id": self.cache_id() if folder else None,
            "precision": self.precision,
            "engine": self.engine,
            "workers": self.workers,
            "progress": self.progress,
        }
