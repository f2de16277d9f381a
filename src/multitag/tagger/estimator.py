"""``MultiTaskTagger``: the scikit-learn-style estimator for multi-task image tagging.

``fit`` takes a manifest frame (``id``, ``path`` and label columns), ``predict_proba`` /
``predict`` / ``tag`` take image paths, ``save`` / ``load`` round-trip a model directory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from multitag.core import runtime
from multitag.core.params import ParamsMixin
from multitag.core.progress import bar
from multitag.data.detail import Detail, resolve_detail
from multitag.data.framing import Framing, resolve_framing
from multitag.data.photo_profile import photo_profile
from multitag.data.validate import ValidationReport, validate
from multitag.data.views import check_views, resolve_views, viewed_rows
from multitag.multitask.heads import AveragedHeadSets, MultiTaskHeads, probabilities
from multitag.multitask.net import TaggerNet
from multitag.tagger.config import (
    GROUPS,
    FeatureConfig,
    HeadConfig,
    LabelConfig,
    RuntimeConfig,
    from_flat,
    group_of,
)
from multitag.training.loop import History, TrainConfig, fit_heads
from multitag.training.prepare import FeatureStore, check_frame, fit_rows
from multitag.vision.encoder_spec import EncoderSpec
from multitag.vision.engines import inference_precision, release_runner, runner_for
from multitag.vision.extraction import (
    FeatureResult,
    encode_batches,
)
from multitag.vision.features import Encoder, iter_batches
from multitag.vision.quantize import Calibration


@dataclass
class FitData:
    """What training starts from (:meth:`MultiTaskTagger.prepare_fit`): the frame (index
    reset), features of every row, encoded targets, photo digests and the row split (rows
    whose image is missing or unreadable are in neither)."""

    frame: pd.DataFrame
    features: FeatureResult
    targets: dict[str, np.ndarray]
    digests: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray


class MultiTaskTagger(ParamsMixin):
    """One pretrained backbone, one head per task, trained together (scikit-learn style).

    Parameters are stored as given and checked in ``fit``; fitted state ends in ``_``. The
    settings come in five groups (:mod:`multitag.tagger.config`), each a small estimator of
    its own, so nested names work: ``set_params(training__epochs=3)``,
    ``get_params(deep=True)["features__backbone"]``. ``training.freeze="all"`` (default)
    trains heads on cached backbone features (the fast path); docs/architecture.md shows the
    pipeline and BENCHMARKS.md what each choice measured.

    Parameters
    ----------
    tasks : sequence of str, optional
        Label columns to learn; ``None`` = every column but ``id`` and ``path``.
    features : FeatureConfig, optional
        What the encoder computes per photo: backbone, weights, input size, framing, detail,
        stages, colour bins, grid stages, extra views, flip invariance
        (:class:`~multitag.tagger.config.FeatureConfig`); ``None`` = its defaults.
    heads : HeadConfig, optional
        The heads: type, trunk, widths, dropouts, head sets averaged, prior shift
        (:class:`~multitag.tagger.config.HeadConfig`); ``None`` = its defaults.
    labels : LabelConfig, optional
        How label columns become tasks: multi-label columns, delimiter, rare classes
        (:class:`~multitag.tagger.config.LabelConfig`); ``None`` = its defaults.
    training : TrainConfig, optional
        Freezing and fine-tuning, epochs, batch size, learning rates, loss weights, early
        stopping, the val split, refit, seed and precision
        (:class:`~multitag.training.loop.TrainConfig`); ``None`` = its defaults.
    runtime : RuntimeConfig, optional
        Feature cache, inference engine, decode threads, progress bars; none of it changes
        the model (:class:`~multitag.tagger.config.RuntimeConfig`); ``None`` = its defaults.

    Attributes
    ----------
    tasks_ : list of Task
        The schema of every learnt task (classes in output order).
    net_ : torch.nn.Module
        Encoder and heads: uint8 images in, per-task probabilities out.
    history_ : History
        Head-training curves (val score per epoch, best epoch).
    split_ : dict
        Training and validation rows (ids and photo digests).

    Examples
    --------
    >>> from multitag.tagger.config import FeatureConfig, TrainConfig
    >>> tagger = MultiTaskTagger(
    ...     ["gender", "articleType"],
    ...     features=FeatureConfig(image_size=128),
    ...     training=TrainConfig(epochs=10),
    ... )
    >>> tagger.set_params(training__epochs=5).settings("training").epochs
    5
    """

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        *,
        features: FeatureConfig | None = None,
        heads: HeadConfig | None = None,
        labels: LabelConfig | None = None,
        training: TrainConfig | None = None,
        runtime: RuntimeConfig | None = None,
    ) -> None:
        self.tasks = tasks
        self.features = features
        self.heads = heads
        self.labels = labels
        self.training = training
        self.runtime = runtime

    # ------------------------------------------------------------------ settings
    def settings(self, group: str):
        """The ``group`` settings in effect (:data:`~multitag.tagger.config.GROUPS`): as
        given, or the group's defaults where it was left ``None``."""
        value = getattr(self, group)
        return GROUPS[group]() if value is None else value

    @property
    def _features_cfg(self) -> FeatureConfig:
        return self.settings("features")

    @property
    def _heads_cfg(self) -> HeadConfig:
        return self.settings("heads")

    @property
    def _labels_cfg(self) -> LabelConfig:
        return self.settings("labels")

    @property
    def _training_cfg(self) -> TrainConfig:
        return self.settings("training")

    @property
    def _runtime_cfg(self) -> RuntimeConfig:
        return self.settings("runtime")

    def get_params(self, deep: bool = True) -> dict:
        """scikit-learn's ``get_params``; ``deep`` also lists every group's fields
        (``features__backbone``, ...), a group left ``None`` with its defaults."""
        params = super().get_params(deep=False)
        if deep:
            for group in GROUPS:
                for name, value in self.settings(group).get_params().items():
                    params[f"{group}__{name}"] = value
        return params

    def set_params(self, **params) -> MultiTaskTagger:
        """scikit-learn's ``set_params``; a nested name (``training__epochs=3``) on a group
        left ``None`` first gives it that group's defaults."""
        for group in {key.split("__", 1)[0] for key in params if "__" in key}:
            if group in GROUPS and getattr(self, group, None) is None:
                setattr(self, group, GROUPS[group]())
        return super().set_params(**params)

    def __setattr__(self, name: str, value) -> None:
        # a flat setting assigned here would be silently ignored: say where it lives
        group = group_of().get(name)
        if group is not None:
            raise AttributeError(
                f"MultiTaskTagger has no {name!r}: it is a {group} setting, "
                f"set it with set_params({group}__{name}=...)"
            )
        super().__setattr__(name, value)

    # ------------------------------------------------------------------ fitting
    def encoder_spec(self) -> EncoderSpec:
        """The encoder these parameters describe."""
        return EncoderSpec(
            self._features_cfg.backbone,
            self._features_cfg.weights,
            self._features_cfg.image_size,
            self._features_cfg.stages,
            self._features_cfg.colour_bins,
            self._features_cfg.grid_stages,
        )

    def _build_encoder(
        self, weights, framing: Framing | None = None, detail: Detail | None = None
    ) -> Encoder:
        return self.encoder_spec().build(framing, detail, weights=weights)

    def feature_cache_dir(self) -> Path | None:
        """Where cached features live: ``cache_dir``; ``"default"`` = ``$MULTITAG_CACHE``
        (or ``~/.cache/multitag``) + ``/features``; ``None`` = no cache."""
        from multitag.core.runtime import feature_cache_folder

        return feature_cache_folder(self._runtime_cfg.cache_dir)

    def _feature_store(self, encoder: Encoder) -> FeatureStore:
        """``encoder``'s features through this tagger's feature cache and runtime settings
        (one place for what every extraction passes on)."""
        features, run = self._features_cfg, self._runtime_cfg
        return FeatureStore(
            encoder, features.backbone, features.weights, self._training_cfg.precision,
            run.engine, run.cache_dir, run.workers, run.progress,
        )  # fmt: skip

    def encoder_id(self) -> dict:
        """What identifies cached features, see
        :func:`~multitag.vision.extraction.encoder_cache_id`."""
        return self._feature_store(self.net_.encoder).cache_id()

    def fit(
        self, frame: pd.DataFrame, *, validation: ValidationReport | None = None
    ) -> MultiTaskTagger:
        """Train on a manifest frame with ``id``, ``path`` and the task columns.

        Runs the same checks as ``multitag validate`` first: rows whose image is missing or
        unreadable are skipped and reported in ``validation_``; duplicate ids or an empty
        task stop training with a message naming them.
        """
        data = self.prepare_fit(frame, validation)
        self._add_views(data)  # extra views' rows after the frame's rows; val rows unchanged
        frame, feats, targets = data.frame, data.features, data.targets
        train_rows, val_rows, heads = data.train_rows, data.val_rows, self.net_.heads
        if self._batched():  # every head set at once (training/head_sets.py)
            self.fit_head_sets(feats.features, targets, train_rows, val_rows)
        else:
            heads.fit_scaler(feats.features[train_rows])
            self.history_ = fit_heads(
                heads,
                feats.features,
                targets,
                self.tasks_,
                train_rows,
                val_rows,
                self._training_cfg,
                progress=self._runtime_cfg.progress,
            )
            if self._training_cfg.freeze != "all":
                from multitag.training.finetune import fine_tune

                fine_tune(self, frame, targets, train_rows, val_rows)
                feats.features = self.__dict__.pop("finetuned_features_", feats.features)
            self.member_histories_ = [self.history_]
            # more head sets on the final (frozen or tuned) features
            if self._heads_cfg.head_sets > 1:
                self._fit_members(heads, feats.features, targets, train_rows, val_rows)
        self.prior_shift_ = {}
        if self._heads_cfg.prior_shift == "auto" and len(val_rows):
            self._fit_prior_shift(feats.features, targets, train_rows, val_rows)
        self.refit_ = None
        self.__dict__.pop("val_proba_", None)
        trained, held = train_rows, val_rows
        if self._training_cfg.refit and len(val_rows):
            self.val_proba_ = self.predict_proba_features(feats.features[val_rows])
            trained = self.refit_heads(feats.features, targets, train_rows, val_rows)
            held = val_rows[:0]
        trained = trained[trained < len(frame)]  # the photos, not their extra views
        self.split_ = {  # saved as split.csv: which photos this model has seen
            "train_ids": frame["id"].iloc[trained].tolist(),
            "val_ids": frame["id"].iloc[held].tolist(),
            "train_digests": data.digests[trained].tolist(),
            "val_digests": data.digests[held].tolist(),
        }
        self.val_features_ = feats.features[val_rows]
        self.val_paths_ = frame["path"].iloc[val_rows].tolist()
        self.val_targets_ = {k: v[val_rows] for k, v in targets.items()}
        return self

    def _check_params(self) -> None:
        """Every group's own checks (:mod:`multitag.tagger.config`), then the ones that
        involve two groups."""
        if not self.tasks:
            raise ValueError("tasks: name at least one label column to learn, e.g. ['gender']")
        for group in GROUPS:
            config = self.settings(group)
            if not isinstance(config, GROUPS[group]):
                raise ValueError(
                    f"{group} must be a {GROUPS[group].__name__} (multitag.tagger.config) or "
                    f"None, not {type(config).__name__}"
                )
            config.validate()
        views, freeze = self._features_cfg.views, self._training_cfg.freeze
        if views not in ("auto", "none") and check_views(views) and freeze != "all":
            raise ValueError(
                f"features.views={list(views)} adds cached features of extra views to "
                f"frozen-feature training; with training.freeze={freeze!r} the backbone "
                "changes and they would not match. Use freeze='all' or views=None."
            )

    def prepare_fit(
        self, frame: pd.DataFrame, validation: ValidationReport | None = None
    ) -> FitData:
        """Everything ``fit`` does before training: check the parameters and the frame,
        infer the tasks, build the encoder and untrained heads (``net_``), extract (or read
        cached) features and split the rows, copies of a photo on one side. Sets
        ``tasks_``, ``net_`` and ``validation_``."""
        self._check_params()
        features, labels = self._features_cfg, self._labels_cfg
        training, run = self._training_cfg, self._runtime_cfg
        frame = check_frame(frame)
        report = validation or validate(
            frame, list(self.tasks), decode=False, progress=run.progress
        )
        if not report.ok:
            raise ValueError("cannot train:\n  " + "\n  ".join(report.problems()))
        rows = fit_rows(
            frame,
            list(self.tasks),
            multilabel=labels.multilabel,
            delimiter=labels.delimiter,
            min_count=labels.min_count,
            rare=labels.rare,
        )
        self.tasks_ = rows.tasks
        paths = frame["path"].tolist()
        framing = resolve_framing(features.framing, paths, training.seed)
        detail = resolve_detail(features.detail, paths, framing, training.seed)
        self.photo_profile_ = photo_profile(paths, training.seed)
        encoder = self._build_encoder(features.weights, framing, detail)
        heads = self.new_heads(encoder.out_dim, training.seed, encoder)
        self.net_ = TaggerNet(encoder, heads, self.tasks_)
        if inference_precision(training.precision, run.engine) == "int8":
            # int8 features need the calibration photos first: the same split, made early
            digests = rows.digests()
            early = rows.split(training.val_fraction, training.seed, digests=digests).train
            encoder.calibration = Calibration.sample(
                [paths[i] for i in early], digests[early], seed=training.seed
            )
        feats = self._feature_store(encoder).features(paths)
        bad = report.bad_rows | set(feats.errors)
        for row, reason in feats.errors.items():
            if row not in report.bad_rows:
                report.unreadable.append(
                    {
                        "row": row,
                        "id": frame["id"][row],
                        "path": frame["path"][row],
                        "reason": reason,
                    }
                )
        self.validation_ = report
        digests = np.asarray(feats.digests, dtype=object) if feats.digests else rows.digests()
        # copies of a photo (same digest) stay together; unusable rows are in neither part
        split = rows.split(training.val_fraction, training.seed, digests=digests, exclude=bad)
        if len(split.train) == 0:
            raise ValueError("no usable training rows: every image is missing or unreadable")
        if getattr(encoder, "calibration", None) is None:  # saved: what --precision int8 uses
            encoder.calibration = Calibration.sample(
                [paths[i] for i in split.train], digests[split.train], seed=training.seed
            )
        return FitData(frame, feats, rows.targets, digests, split.train, split.val)

    def _add_views(self, data: FitData) -> None:
        """Append one row per training row and extra view (:mod:`multitag.data.views`) to
        ``data``: the view's cached features, the row's labels, its index added to the training
        rows. With ``view_fraction`` < 1 only a seeded sample of the training rows gets the
        views. Validation rows stay the photos as they are, so epochs and scores are chosen on
        them. Sets ``views_`` (what ``config.json`` records)."""
        views = resolve_views(self._features_cfg.views, self._training_cfg.freeze == "all")
        self.views_ = None
        if not views:
            return
        fraction, train = self._features_cfg.view_fraction, data.train_rows
        viewed = viewed_rows(train, fraction, self._training_cfg.seed)
        paths = data.frame["path"].iloc[viewed].tolist()
        blocks, sources, added = [data.features.features], [np.arange(len(data.frame))], {}
        store = self._feature_store(self.net_.encoder)
        for view in views:
            res = store.features(paths, view=view, view_seed=self._training_cfg.seed)
            ok = np.setdiff1d(np.arange(len(viewed)), list(res.errors))
            blocks.append(res.features[ok])
            sources.append(viewed[ok])
            added[view] = int(len(ok))
        start = len(data.frame)
        data.features.features = np.concatenate(blocks)
        source = np.concatenate(sources)
        data.targets = {name: t[source] for name, t in data.targets.items()}
        data.train_rows = np.concatenate([train, np.arange(start, len(source))])
        self.views_ = {"views": views, "seed": self._training_cfg.seed, "rows": added}
        if fraction < 1:
            self.views_["fraction"] = fraction

    def new_heads(self, in_dim: int, seed: int, encoder: Encoder | None = None) -> MultiTaskHeads:
        """Heads initialised from ``seed`` alone (not from whatever used the global RNG);
        mirror-symmetric with ``flip_invariant`` (the layout of ``encoder``, default ``net_``'s)."""
        encoder = encoder or self.net_.encoder
        mirror = encoder.mirror_index() if self._features_cfg.flip_invariant else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MultiTaskHeads(
                in_dim,
                self.tasks_,
                self._heads_cfg.head,
                self._heads_cfg.hidden,
                self._heads_cfg.dropout,
                input_dropout=self._heads_cfg.input_dropout,
                trunk=self._heads_cfg.trunk,
                mirror=mirror,
            )

    def _batched(self) -> bool:
        """Whether the head sets train together as one batched model: frozen backbone and
        linear heads (:func:`~multitag.training.head_sets.can_batch`)."""
        return self._training_cfg.freeze == "all" and self._heads_cfg.head == "linear"

    def fit_head_sets(self, features, targets, train_rows, val_rows, run_epochs=None):
        """Train every head set (``heads.head_sets``, seeds ``seed, seed+1, ...``) at once on
        precomputed ``features`` as one batched model
        (:func:`~multitag.training.head_sets.fit_head_sets`; linear heads on a frozen
        backbone): what :meth:`fit` does after extraction. With ``run_epochs`` (one count per
        set), a refit that runs exactly that many epochs. Otherwise sets ``history_`` /
        ``member_histories_`` and the tagger's heads. Returns the heads."""
        from multitag.training.head_sets import fit_head_sets

        if not self._batched():
            raise ValueError(
                "fit_head_sets trains linear heads on a frozen backbone (heads.head='linear', "
                "training.freeze='all'); use fit() for other heads"
            )
        seeds = [self._training_cfg.seed + i for i in range(self._heads_cfg.head_sets)]
        members = [self.new_heads(features.shape[1], s) for s in seeds]
        histories = fit_head_sets(
            members, features, targets, self.tasks_, train_rows, val_rows,
            self._training_cfg, seeds, run_epochs=run_epochs, progress=self._runtime_cfg.progress,
        )  # fmt: skip
        heads = members[0] if len(members) == 1 else AveragedHeadSets(members, self.tasks_)
        if run_epochs is None:
            self.history_, self.member_histories_ = histories[0], histories
            self.net_.heads = heads
        return heads

    def _fit_members(self, first, features, targets, train_rows, val_rows) -> None:
        """Fit members 2..n from seeds ``seed+1, ...``; the heads become their ensemble."""
        members = [first]
        for i in range(1, self._heads_cfg.head_sets):
            member, history = self.fit_head_set(
                features,
                targets,
                train_rows,
                val_rows,
                self._training_cfg.seed + i,
                self._runtime_cfg.progress,
            )
            self.member_histories_.append(history)
            members.append(member)
        self.net_.heads = AveragedHeadSets(members, self.tasks_)

    def fit_head_set(
        self,
        features,
        targets,
        train_rows,
        val_rows,
        seed: int,
        progress: bool,
        run_epochs: int | None = None,
    ) -> tuple[MultiTaskHeads, History]:
        """A fresh set of heads, initialised and trained from ``seed`` on ``train_rows``
        (best epoch on ``val_rows``, or exactly ``run_epochs``): one ensemble member, one
        learning-curve point, or one refitted member."""
        heads = self.new_heads(features.shape[1], seed)
        if self._batched():  # the trainer fit uses, so one set here equals fit's set
            from multitag.training.head_sets import fit_head_sets

            [history] = fit_head_sets(
                [heads], features, targets, self.tasks_, train_rows, val_rows,
                self._training_cfg, [seed], progress=progress,
                run_epochs=None if run_epochs is None else [run_epochs],
            )  # fmt: skip
            return heads, history
        heads.fit_scaler(features[train_rows])
        config = replace(self._training_cfg, seed=seed)
        history = fit_heads(
            heads, features, targets, self.tasks_, train_rows, val_rows, config,
            progress=progress, run_epochs=run_epochs,
        )  # fmt: skip
        return heads, history

    def refit_head_set(self, features, targets, train_rows, val_rows, seed: int, epochs: int):
        """One head set trained from ``seed`` on train + val rows for exactly ``epochs``
        epochs of the schedule (no rows left to score): one refitted member."""
        rows = np.union1d(train_rows, val_rows)
        return self.fit_head_set(
            features, targets, rows, rows[:0], seed, self._runtime_cfg.progress, run_epochs=epochs
        )[0]

    def refit_heads(self, features, targets, train_rows, val_rows) -> np.ndarray:
        """Train every head set again on train + val rows (``refit=True``): from its seed for
        the epochs it chose on val, or warm (``refit_epochs``) from its fitted weights. A prior
        shift chosen before stays. Returns the rows used."""
        from multitag.multitask.prior_shift import PriorShiftedHeads

        rows = np.union1d(train_rows, val_rows)
        training = self._training_cfg
        if training.warm_refit:
            new = self._warm_refit(features, targets, rows)
            epochs = [training.refit_epochs] * self._heads_cfg.head_sets
        else:
            epochs = [h.best_epoch + 1 for h in self.member_histories_]
            new = self._refit_from_scratch(features, targets, train_rows, val_rows, epochs)
        if isinstance(self.net_.heads, PriorShiftedHeads):
            self.net_.heads.base = new
        else:
            self.net_.heads = new
        # photos, not the rows of their extra views (added to the training rows, val has none)
        view_rows = sum((getattr(self, "views_", None) or {}).get("rows", {}).values())
        self.refit_ = {
            "epochs": epochs,
            "rows_before": int(len(train_rows)) - view_rows,
            "rows_after": int(len(rows)) - view_rows,
            "val_rows": int(len(val_rows)),
        }
        if view_rows:
            self.refit_["view_rows"] = int(view_rows)
        if training.warm_refit:  # what a warm refit adds: it went on from the fitted weights
            self.refit_.update(warm=True, lr=training.lr * training.refit_lr_factor)
        return rows

    def _refit_from_scratch(self, features, targets, train_rows, val_rows, epochs) -> nn.Module:
        """Every head set trained again from its seed on train + val for ``epochs`` (one
        count per set); returns the new heads."""
        rows = np.union1d(train_rows, val_rows)
        if self._batched():
            return self.fit_head_sets(features, targets, rows, rows[:0], run_epochs=epochs)
        members = [
            self.refit_head_set(
                features, targets, train_rows, val_rows, self._training_cfg.seed + i, n
            )
            for i, n in enumerate(epochs)
        ]
        return members[0] if len(members) == 1 else AveragedHeadSets(members, self.tasks_)

    def _fitted_members(self) -> list[MultiTaskHeads]:
        """The fitted head sets under any prior shift and averaging, in seed order."""
        from multitag.multitask.prior_shift import PriorShiftedHeads

        heads = self.net_.heads
        heads = heads.base if isinstance(heads, PriorShiftedHeads) else heads
        return list(heads.members) if isinstance(heads, AveragedHeadSets) else [heads]

    def _warm_refit(self, features, targets, rows: np.ndarray) -> nn.Module:
        """Copies of the fitted head sets trained on from their weights and scaler on ``rows``
        for ``refit_epochs`` epochs at ``refit_lr_factor`` of the peak rate
        (:meth:`~multitag.training.loop.TrainConfig.warm_refit_config`); returns the new
        heads, the fitted ones untouched."""
        import copy

        members = [copy.deepcopy(m) for m in self._fitted_members()]
        config, progress = self._training_cfg.warm_refit_config(), self._runtime_cfg.progress
        seeds = [config.seed + i for i in range(len(members))]
        if self._batched():
            from multitag.training.head_sets import fit_head_sets

            fit_head_sets(
                members, features, targets, self.tasks_, rows, rows[:0], config, seeds,
                run_epochs=[config.epochs] * len(members), warm_start=True, progress=progress,
            )  # fmt: skip
        else:
            for member, seed in zip(members, seeds):
                fit_heads(
                    member, features, targets, self.tasks_, rows, rows[:0],
                    replace(config, seed=seed), progress=progress, run_epochs=config.epochs,
                )  # fmt: skip
        return members[0] if len(members) == 1 else AveragedHeadSets(members, self.tasks_)

    def _fit_prior_shift(self, features, targets, train_rows, val_rows) -> None:
        """Choose each multi-class task's prior shift on the val rows (see ``prior_shift``)."""
        from multitag.multitask.prior_shift import PriorShiftedHeads, choose_shifts

        shifts = choose_shifts(
            self.tasks_,
            self.predict_proba_features(features[val_rows]),
            {k: v[val_rows] for k, v in targets.items()},
            {k: v[train_rows] for k, v in targets.items()},
            seed=self._training_cfg.seed,
        )
        self.prior_shift_ = {
            n: {k: s[k] for k in ("tau", "cross_fitted_gain")} for n, s in shifts.items()
        }
        bias = {name: s["bias"] for name, s in shifts.items() if s["tau"]}
        if bias:
            self.net_.heads = PriorShiftedHeads(self.net_.heads, bias)

    # --------------------------------------------------------------- inference
    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise RuntimeError("this MultiTaskTagger is not fitted: call fit() or load() first")

    @torch.inference_mode()
    def predict_proba(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        batch_size: int = 64,
        return_features: bool = False,
        use_cache: bool = False,
    ) -> dict:
        """Per-task probabilities for ``paths``.

        Returns ``{"proba": {task: (n, C)}, "imagenet": (n, 1000) or None,
        "errors": {row: reason}, "features": (n, D) if asked}``; rows of unreadable images are
        zero and listed in ``errors``. ``use_cache`` reads/fills the feature cache (frozen
        backbones only): worth it when the same images were just used for training.
        """
        self._check_fitted()
        if use_cache and self.feature_cache_dir() and self._training_cfg.freeze == "all":
            return self._predict_from_cache(paths, return_features)
        device = runtime.default_device()
        net = self.net_.eval().to(device)
        n = len(paths)
        proba = {t.name: np.zeros((n, t.n_classes), np.float32) for t in self.tasks_}
        imagenet = np.zeros((n, 1000), np.float32) if net.encoder.with_imagenet else None
        features = np.zeros((n, net.encoder.out_dim), np.float32) if return_features else None
        errors: dict[int, str] = {}
        for rows, errs, out in self._run_net(net, paths, batch_size, device):
            errors.update(errs)
            if out is None:
                continue
            probs, logits, feats = out
            for name, p in probs.items():
                proba[name][rows] = p.float().cpu().numpy()
            if imagenet is not None and logits is not None:
                imagenet[rows] = logits.float().softmax(-1).cpu().numpy()
            if features is not None:
                features[rows] = feats.float().cpu().numpy()
        out = {"proba": proba, "imagenet": imagenet, "errors": errors}
        if return_features:
            out["features"] = features
        return out

    def warm_up(self) -> MultiTaskTagger:
        """Prepare the inference engine now (OpenVINO converts the encoder in a few seconds),
        so a service's first request does not pay for it."""
        self._check_fitted()
        if hasattr(self.net_, "from_features"):
            runner_for(self.net_.encoder, self._runtime_cfg.engine, self._training_cfg.precision)
        return self

    def release_engine(self) -> MultiTaskTagger:
        """Free the inference engine (OpenVINO's compiled encoder, most of a loaded model's
        memory); the next prediction rebuilds it in a second or two from the conversion
        cache. For batch jobs that run several models one after another."""
        if hasattr(self, "net_"):
            release_runner(self.net_.encoder)
        return self

    def _run_net(self, net: nn.Module, paths, batch_size: int, device: torch.device):
        """Per batch of ``paths``: ``(rows, errors, (probs, imagenet logits, features) or None)``.

        Hard sharing runs the encoder on the inference engine (the shared loop,
        :func:`~multitag.vision.extraction.encode_batches`, which also gives the ImageNet
        logits) and the heads in PyTorch; soft / cross-stitch sharing (per-task columns) runs
        the whole net in PyTorch.
        """
        if hasattr(net, "from_features"):
            for rows, errs, feats, logits in encode_batches(
                net.encoder,
                paths,
                batch_size=batch_size,
                workers=self._runtime_cfg.workers,
                precision=self._training_cfg.precision,
                engine=self._runtime_cfg.engine,
                device=device,
                progress=self._runtime_cfg.progress,
                description="tagging",
            ):
                if feats is None:
                    yield rows, errs, None
                    continue
                probs, _, feats = net.from_features(feats.to(device), imagenet=False)
                yield rows, errs, (probs, logits, feats)
            return
        precision = runtime.resolve_precision(self._training_cfg.precision, device)
        prep = net.encoder.preprocessing
        loader = iter_batches(
            paths,
            prep.image_size,
            batch_size,
            self._runtime_cfg.workers,
            framing=prep.framing,
            detail=prep.detail,
        )
        n = len(paths)
        with bar("tagging", n, enabled=self._runtime_cfg.progress and n > batch_size) as pbar:
            for idx, images, errs in loader:
                out = None
                if images is not None:
                    with runtime.autocast(precision, device):
                        out = net(images.to(device))
                yield idx.numpy(), errs, out
                pbar.advance(len(idx) + len(errs))

    def cache_features(self, paths: Sequence[str | os.PathLike]) -> dict[int, str]:
        """Encode the photos of ``paths`` not yet in the feature cache and store them, in one
        pass (on Ray under ``--engine ray``), so that ``predict_proba(..., use_cache=True)``
        over them in chunks afterwards runs the heads only. Returns ``{row: reason}`` for
        unreadable photos. Nothing to do without a cache or with a fine-tuned backbone (whose
        predictions do not read the cache)."""
        self._check_fitted()
        cache = self.feature_cache_dir()
        if cache is None or self._training_cfg.freeze != "all":
            return {}
        return self._feature_store(self.net_.encoder).fill(paths)

    @torch.inference_mode()
    def _predict_from_cache(self, paths, return_features: bool) -> dict:
        res = self._feature_store(self.net_.encoder).features(paths)
        probs, imagenet, _ = self.net_.eval().from_features(torch.as_tensor(res.features))
        rows = [i for i in res.errors]
        out = {
            "proba": {k: v.float().numpy() for k, v in probs.items()},
            "imagenet": None if imagenet is None else imagenet.float().softmax(-1).numpy(),
            "errors": res.errors,
        }
        for arr in [*out["proba"].values(), out["imagenet"]]:
            if arr is not None and rows:
                arr[rows] = 0
        if return_features:
            out["features"] = res.features
        return out

    def predict_proba_features(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Per-task probabilities from precomputed encoder features."""
        self._check_fitted()
        heads = self.net_.heads.eval()
        with torch.no_grad():
            logits = heads(torch.as_tensor(features, dtype=torch.float32))
        return {t.name: probabilities(t, logits[t.name]).numpy() for t in self.tasks_}

    def predict(self, paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
        """Top-1 label per task (multi-label: labels with probability >= 0.5, ``|``-joined)."""
        from multitag.tagger.batch import top1_frame

        return top1_frame(self, paths)

    # -------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (no pickle)."""
        from multitag.tagger.persistence import save_tagger

        self._check_fitted()
        return save_tagger(self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> MultiTaskTagger:
        """Rebuild a tagger saved by :meth:`save`; predictions are identical."""
        from multitag.tagger.persistence import load_saved

        saved = load_saved(directory)
        config = saved.config
        backbone = config["backbone"]
        # flat names, as saved (models from before the groups too): from_flat groups them
        params = dict(config.get("params", {}))
        tasks = params.pop("tasks", None)
        params.update(backbone=backbone["name"], weights=backbone["weights"])
        # a Framing / dict setting is not a JSON scalar; its measured value is in preprocessing
        # (None before framing existed: squash-resize only); likewise detail
        preprocessing = saved.net.encoder.preprocessing
        params.setdefault("framing", preprocessing.framing or "none")
        params.setdefault("detail", preprocessing.detail or "none")
        # and flip_invariant (off before it existed): what the saved heads do, whatever the default
        params.setdefault("flip_invariant", bool(config["heads"].get("flip_invariant", False)))
        tagger = cls(tasks, **from_flat(params, strict=False))
        tagger.tasks_ = saved.tasks
        tagger.net_ = saved.net
        tagger.prior_shift_ = config["heads"].get("prior_shift", {})
        tagger.refit_ = config.get("training", {}).get("refit")
        tagger.views_ = config.get("training", {}).get("views")
        tagger.config_ = config
        tagger.photo_profile_ = config.get("training_photos")
        if saved.split is not None:
            tagger.split_ = saved.split
        return tagger

    def __repr__(self) -> str:
        return f"MultiTaskTagger(tasks={self.tasks!r}, backbone={self._features_cfg.backbone!r})"


__all__ = ["MultiTaskTagger", "TaggerNet", "History"]
