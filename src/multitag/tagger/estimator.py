"""``MultiTaskTagger``: the scikit-learn-style estimator for multi-task image tagging.

``fit`` takes a manifest frame (``id``, ``path`` and label columns), ``predict_proba`` /
``predict`` / ``tag`` take image paths, ``save`` / ``load`` round-trip a model directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from multitag.core import runtime
from multitag.core.params import ParamsMixin
from multitag.core.progress import bar
from multitag.data.detail import resolve_detail
from multitag.data.framing import Framing, resolve_framing
from multitag.data.photo_profile import photo_profile
from multitag.data.validate import ValidationReport, validate
from multitag.data.views import check_views
from multitag.multitask.heads import HeadEnsemble, MultiTaskHeads, probabilities
from multitag.multitask.net import TaggerNet
from multitag.training.loop import History, TrainConfig, fit_heads
from multitag.training.prepare import FeatureStore, check_frame, fit_rows
from multitag.vision import backbones
from multitag.vision.encoder_spec import EncoderSpec
from multitag.vision.engines import inference_precision, release_runner, runner_for
from multitag.vision.extraction import (
    FeatureResult,
    encode_batches,
    encoder_cache_id,
    extract_features,
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

    Parameters are stored as given; fitted state ends in ``_``. ``freeze="all"`` (default)
    trains heads on cached backbone features (the fast path); docs/architecture.md shows the
    pipeline and BENCHMARKS.md what each choice measured.

    Parameters
    ----------
    tasks : sequence of str, optional
        Label columns to learn; ``None`` = every column but ``id`` and ``path``.
    backbone : str, default "tf_efficientnet_lite0"
        A registered backbone (``multitag backbones``) or any timm name.
    weights : str or None, default "auto"
        ``"auto"``, ``"package"``, ``"hub"``, a state-dict file, or ``None`` (random init).
    image_size : int, optional
        Square network input; ``None`` = the backbone's pretrained size.
    framing : {"auto", "none"} or Framing or dict, default "auto"
        ``"auto"`` crops every photo to its product and centres it on the catalogue's canvas,
        measured on training photos (:mod:`multitag.data.framing`); ``"none"`` squashes only.
    detail : "auto", "none" or int, default "auto"
        Bring photos with more pixels than the training photos down to their level of detail
        before the square resize (:mod:`multitag.data.detail`); an int sets the pixel count.
    stages : sequence of int, optional
        Backbone stages whose pooled outputs join the features; ``None`` = every stage.
    colour_bins : int, default 6
        Bins per channel of the colour histograms (0 = no colour features).
    grid_stages : sequence of int or "auto", default "auto"
        Stages also pooled on a 3x2 grid (``"auto"``: the stride-8 and stride-16 stages).
    views : sequence of str, optional
        Extra views of every training photo (``"flip"``, ``"jpeg60"``, ``"grey"``,
        ``"down2"``; :mod:`multitag.data.views`) whose cached features the heads also train
        on, labelled like the photo: one more extraction pass each and more head-training
        rows (docs/robustness.md). Frozen backbones only.
    flip_invariant : bool, default False
        Average every feature with its mirror-image feature before the heads
        (:meth:`~multitag.vision.features.Encoder.mirror_index`), so a photo and its mirror
        image get the same tags.
    freeze : str, default "all"
        ``"all"`` trains heads only; a stage name such as ``"blocks.5"`` also fine-tunes every
        stage after it (:mod:`multitag.training.finetune`).
    finetune_epochs : int, optional
        Fine-tuning epochs; ``None`` = ``min(epochs, 5)``.
    finetune_lr : float, default 5e-4
        Backbone learning rate when fine-tuning.
    head : {"linear", "mlp"}, default "linear"
        One linear layer per task on the shared trunk, or a hidden layer per task.
    trunk : int, default 1024
        Width of the shared trunk (0 = none).
    hidden : int, default 512
        Hidden width of ``"mlp"`` heads.
    dropout : float, default 0.2
        Dropout inside the trunk and heads.
    input_dropout : float, default 0.2
        Dropout on the standardised features before the trunk.
    ensemble : int, default 1
        Head sets fitted from seeds ``seed, seed+1, ...`` on the same features, their
        probabilities averaged (:class:`~multitag.multitask.heads.HeadEnsemble`); not to be
        confused with :class:`~multitag.tagger.ensemble.TaggerEnsemble` (whole models).
    prior_shift : {"none", "auto"}, default "none"
        ``"auto"`` shifts each multi-class task's decisions towards rare classes where a
        cross-fitted gain says it helps (:mod:`multitag.multitask.prior_shift`).
    refit : bool, default False
        Frozen backbones: once each head set has chosen its epochs on the val split, train it
        again on train + val for that many epochs. ``val_proba_`` keeps the scores of the heads
        before it, ``refit_`` records epochs and rows, ``split_`` lists every row as trained on.
    multilabel : mapping or sequence of str, optional
        Multi-label columns (a mapping gives each its own delimiter).
    delimiter : str, default "|"
        Delimiter inside multi-label cells.
    min_count : int, default 5
        Classes rarer than this are folded into ``other`` or dropped (``rare``).
    rare : {"other", "drop"}, default "other"
        What happens to rare classes.
    val_fraction : float, default 0.2
        Validation share of the stratified split (copies of a photo stay on one side).
    epochs : int, default 25
        Maximum head-training epochs (early stopping on the val score).
    batch_size : int, default 512
        Head-training batch size.
    lr : float, default 2e-3
        Head learning rate (AdamW, one-cycle schedule).
    class_weight : {"none", "sqrt", "balanced"}, default "none"
        Loss weights per class.
    label_smoothing : float, default 0.1
        Label smoothing of the multi-class losses.
    patience : int, default 6
        Epochs without a better val score before training stops.
    seed : int, default 0
        Seed of the split, initialisation and batch order.
    cache_dir : path, "default" or None, default "default"
        Feature cache folder (``"default"``: ``$MULTITAG_CACHE/features``; ``None``: no cache).
    precision : {"auto", "bf16", "fp32"}, default "auto"
        Training and inference precision (``"auto"``: bf16 where the CPU has it).
    engine : {"auto", "torch", "openvino"}, default "auto"
        Inference engine of the frozen encoder (:mod:`multitag.vision.engines`).
    workers : int, optional
        Decode threads; ``None`` = one per core.
    progress : bool, default True
        Show progress bars.

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
    """

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        *,
        backbone: str = backbones.DEFAULT_BACKBONE,
        weights: str | None = "auto",
        image_size: int | None = None,
        framing: str | Mapping | Framing = "auto",
        detail: str | int | None = "auto",
        stages: Sequence[int] | None = None,
        colour_bins: int = 6,
        grid_stages: Sequence[int] | str = "auto",
        views: Sequence[str] | None = None,
        flip_invariant: bool = False,
        freeze: str = "all",
        finetune_epochs: int | None = None,
        finetune_lr: float = 5e-4,
        head: str = "linear",
        trunk: int = 1024,
        hidden: int = 512,
        dropout: float = 0.2,
        input_dropout: float = 0.2,
        ensemble: int = 1,
        prior_shift: str = "none",
        refit: bool = False,
        multilabel: Mapping[str, str] | Sequence[str] | None = None,
        delimiter: str = "|",
        min_count: int = 5,
        rare: str = "other",
        val_fraction: float = 0.2,
        epochs: int = 25,
        batch_size: int = 512,
        lr: float = 2e-3,
        class_weight: str = "none",
        label_smoothing: float = 0.1,
        patience: int = 6,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = "default",
        precision: str = "auto",
        engine: str = "auto",
        workers: int | None = None,
        progress: bool = True,
    ) -> None:
        self.tasks = tasks
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.framing = framing
        self.detail = detail
        self.stages = stages
        self.colour_bins = colour_bins
        self.grid_stages = grid_stages
        self.views = views
        self.flip_invariant = flip_invariant
        self.freeze = freeze
        self.finetune_epochs = finetune_epochs
        self.finetune_lr = finetune_lr
        self.head = head
        self.trunk = trunk
        self.hidden = hidden
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.ensemble = ensemble
        self.prior_shift = prior_shift
        self.refit = refit
        self.multilabel = multilabel
        self.delimiter = delimiter
        self.min_count = min_count
        self.rare = rare
        self.val_fraction = val_fraction
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.class_weight = class_weight
        self.label_smoothing = label_smoothing
        self.patience = patience
        self.seed = seed
        self.cache_dir = cache_dir
        self.precision = precision
        self.engine = engine
        self.workers = workers
        self.progress = progress

    # ------------------------------------------------------------------ fitting
    def _train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            patience=self.patience,
            class_weight=self.class_weight,
            label_smoothing=self.label_smoothing,
            seed=self.seed,
            precision=self.precision,
        )

    def encoder_spec(self) -> EncoderSpec:
        """The encoder these parameters describe."""
        return EncoderSpec(
            self.backbone,
            self.weights,
            self.image_size,
            self.stages,
            self.colour_bins,
            self.grid_stages,
        )

    def _build_encoder(
        self, weights, framing: Framing | None = None, detail: int | None = None
    ) -> Encoder:
        return self.encoder_spec().build(framing, detail, weights=weights)

    def feature_cache_dir(self) -> Path | None:
        """Where cached features live: ``cache_dir``; ``"default"`` = ``$MULTITAG_CACHE``
        (or ``~/.cache/multitag``) + ``/features``; ``None`` = no cache."""
        from multitag.core.runtime import feature_cache_folder

        return feature_cache_folder(self.cache_dir)

    def encoder_id(self) -> dict:
        """What identifies cached features, see
        :func:`~multitag.vision.extraction.encoder_cache_id`."""
        return encoder_cache_id(
            self.net_.encoder, self.backbone, self.weights, self.precision, self.engine
        )

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
            self._fit_sets_batched(feats.features, targets, train_rows, val_rows)
        else:
            heads.fit_scaler(feats.features[train_rows])
            self.history_ = fit_heads(
                heads,
                feats.features,
                targets,
                self.tasks_,
                train_rows,
                val_rows,
                self._train_config(),
                progress=self.progress,
            )
            if self.freeze != "all":
                from multitag.training.finetune import fine_tune

                fine_tune(self, frame, targets, train_rows, val_rows)
                feats.features = self.__dict__.pop("finetuned_features_", feats.features)
            self.member_histories_ = [self.history_]
            if self.ensemble > 1:  # more members on the final (frozen or tuned) features
                self._fit_members(heads, feats.features, targets, train_rows, val_rows)
        self.prior_shift_ = {}
        if self.prior_shift == "auto" and len(val_rows):
            self._fit_prior_shift(feats.features, targets, train_rows, val_rows)
        self.refit_ = None
        self.__dict__.pop("val_proba_", None)
        trained, held = train_rows, val_rows
        if self.refit and len(val_rows):
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
        if not self.tasks:
            raise ValueError("tasks: name at least one label column to learn, e.g. ['gender']")
        if self.finetune_epochs is not None and self.finetune_epochs < 1:
            raise ValueError(
                f"finetune_epochs must be >= 1 (or None for min(epochs, 5)), "
                f"not {self.finetune_epochs}"
            )
        if not self.finetune_lr > 0:
            raise ValueError(f"finetune_lr must be > 0, not {self.finetune_lr}")
        n = self.ensemble
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(
                f"ensemble: the number of head sets to average, an int >= 1, not {self.ensemble!r}"
            )
        if not isinstance(self.refit, bool):
            raise ValueError(f"refit must be True or False, not {self.refit!r}")
        if self.refit and self.freeze != "all":
            raise ValueError(
                f"refit=True retrains the heads on frozen features; with freeze={self.freeze!r} "
                "the fine-tuned backbone would need its own refit. Use freeze='all' or "
                "refit=False."
            )
        if not isinstance(self.flip_invariant, bool):
            raise ValueError(f"flip_invariant must be True or False, not {self.flip_invariant!r}")
        if check_views(self.views) and self.freeze != "all":
            raise ValueError(
                f"views={list(self.views)} adds cached features of extra views to frozen-feature "
                f"training; with freeze={self.freeze!r} the backbone changes and they would not "
                "match. Use freeze='all' or views=None."
            )
        if self.prior_shift not in ("none", "auto"):
            raise ValueError(
                f"prior_shift must be 'none' or 'auto' (choose a per-task shift towards "
                f"frequent or rare classes on the val split), not {self.prior_shift!r}"
            )

    def prepare_fit(
        self, frame: pd.DataFrame, validation: ValidationReport | None = None
    ) -> FitData:
        """Everything ``fit`` does before training: check the parameters and the frame,
        infer the tasks, build the encoder and untrained heads (``net_``), extract (or read
        cached) features and split the rows, copies of a photo on one side. Sets
        ``tasks_``, ``net_`` and ``validation_``."""
        self._check_params()
        frame = check_frame(frame)
        report = validation or validate(
            frame, list(self.tasks), decode=False, progress=self.progress
        )
        if not report.ok:
            raise ValueError("cannot train:\n  " + "\n  ".join(report.problems()))
        rows = fit_rows(
            frame,
            list(self.tasks),
            multilabel=self.multilabel,
            delimiter=self.delimiter,
            min_count=self.min_count,
            rare=self.rare,
        )
        self.tasks_ = rows.tasks
        paths = frame["path"].tolist()
        framing = resolve_framing(self.framing, paths, self.seed)
        detail = resolve_detail(self.detail, paths, framing, self.seed)
        self.photo_profile_ = photo_profile(paths, self.seed)
        encoder = self._build_encoder(self.weights, framing, detail)
        heads = self.new_heads(encoder.out_dim, self.seed, encoder)
        self.net_ = TaggerNet(encoder, heads, self.tasks_)
        if inference_precision(self.precision, self.engine) == "int8":
            # int8 features need the calibration photos first: the same split, made early
            digests = rows.digests()
            early = rows.split(self.val_fraction, self.seed, digests=digests).train
            encoder.calibration = Calibration.sample(
                [paths[i] for i in early], digests[early], seed=self.seed
            )
        feats = FeatureStore(
            encoder,
            self.backbone,
            self.weights,
            self.precision,
            self.engine,
            self.feature_cache_dir(),
            self.workers,
            self.progress,
        ).features(paths)
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
        split = rows.split(self.val_fraction, self.seed, digests=digests, exclude=bad)
        if len(split.train) == 0:
            raise ValueError("no usable training rows: every image is missing or unreadable")
        if getattr(encoder, "calibration", None) is None:  # saved: what --precision int8 uses
            encoder.calibration = Calibration.sample(
                [paths[i] for i in split.train], digests[split.train], seed=self.seed
            )
        return FitData(frame, feats, rows.targets, digests, split.train, split.val)

    def _add_views(self, data: FitData) -> None:
        """Append one row per training row and extra view (:mod:`multitag.data.views`) to
        ``data``: the view's cached features, the row's labels, its index added to the training
        rows. Validation rows stay the photos as they are, so epochs and scores are chosen on
        them. Sets ``views_`` (what ``config.json`` records)."""
        views = check_views(self.views)
        self.views_ = None
        if not views:
            return
        train = data.train_rows
        paths = data.frame["path"].iloc[train].tolist()
        blocks, sources, added = [data.features.features], [np.arange(len(data.frame))], {}
        cache = self.feature_cache_dir()
        for view in views:
            res = extract_features(
                self.net_.encoder,
                paths,
                cache_dir=cache,
                encoder_id=self.encoder_id() if cache else None,
                precision=self.precision,
                engine=self.engine,
                workers=self.workers,
                progress=self.progress,
                view=view,
                view_seed=self.seed,
            )
            ok = np.setdiff1d(np.arange(len(train)), list(res.errors))
            blocks.append(res.features[ok])
            sources.append(train[ok])
            added[view] = int(len(ok))
        start = len(data.frame)
        data.features.features = np.concatenate(blocks)
        source = np.concatenate(sources)
        data.targets = {name: t[source] for name, t in data.targets.items()}
        data.train_rows = np.concatenate([train, np.arange(start, len(source))])
        self.views_ = {"views": views, "seed": self.seed, "rows": added}

    def new_heads(self, in_dim: int, seed: int, encoder: Encoder | None = None) -> MultiTaskHeads:
        """Heads initialised from ``seed`` alone (not from whatever used the global RNG);
        mirror-symmetric with ``flip_invariant`` (the layout of ``encoder``, default ``net_``'s)."""
        encoder = encoder or self.net_.encoder
        mirror = encoder.mirror_index() if self.flip_invariant else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MultiTaskHeads(
                in_dim,
                self.tasks_,
                self.head,
                self.hidden,
                self.dropout,
                input_dropout=self.input_dropout,
                trunk=self.trunk,
                mirror=mirror,
            )

    def _batched(self) -> bool:
        """Whether the head sets train together as one batched model: frozen backbone and
        linear heads (:func:`~multitag.training.head_sets.can_batch`)."""
        return self.freeze == "all" and self.head == "linear"

    def _fit_sets_batched(self, features, targets, train_rows, val_rows, run_epochs=None):
        """Train all ``ensemble`` head sets from seeds ``seed, seed+1, ...`` at once
        (:func:`~multitag.training.head_sets.fit_head_sets`); with ``run_epochs``, a refit.
        Sets ``history_`` / ``member_histories_`` (not for a refit); returns the heads."""
        from multitag.training.head_sets import fit_head_sets

        seeds = [self.seed + i for i in range(self.ensemble)]
        members = [self.new_heads(features.shape[1], s) for s in seeds]
        histories = fit_head_sets(
            members, features, targets, self.tasks_, train_rows, val_rows,
            self._train_config(), seeds, run_epochs=run_epochs, progress=self.progress,
        )  # fmt: skip
        heads = members[0] if len(members) == 1 else HeadEnsemble(members, self.tasks_)
        if run_epochs is None:
            self.history_, self.member_histories_ = histories[0], histories
            self.net_.heads = heads
        return heads

    def _fit_members(self, first, features, targets, train_rows, val_rows) -> None:
        """Fit members 2..n from seeds ``seed+1, ...``; the heads become their ensemble."""
        members = [first]
        for i in range(1, self.ensemble):
            member, history = self.fit_head_set(
                features, targets, train_rows, val_rows, self.seed + i, self.progress
            )
            self.member_histories_.append(history)
            members.append(member)
        self.net_.heads = HeadEnsemble(members, self.tasks_)

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
                self._train_config(), [seed], progress=progress,
                run_epochs=None if run_epochs is None else [run_epochs],
            )  # fmt: skip
            return heads, history
        heads.fit_scaler(features[train_rows])
        config = self._train_config()
        config.seed = seed
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
            features, targets, rows, rows[:0], seed, self.progress, run_epochs=epochs
        )[0]

    def refit_heads(self, features, targets, train_rows, val_rows) -> np.ndarray:
        """Retrain every head set from its seed on train + val rows for the epochs it chose
        on val (``refit=True``); a prior shift chosen before stays. Returns the rows used."""
        from multitag.multitask.prior_shift import PriorShiftedHeads

        rows = np.union1d(train_rows, val_rows)
        epochs = [h.best_epoch + 1 for h in self.member_histories_]
        if self._batched():
            new = self._fit_sets_batched(features, targets, rows, rows[:0], run_epochs=epochs)
        else:
            members = [
                self.refit_head_set(features, targets, train_rows, val_rows, self.seed + i, n)
                for i, n in enumerate(epochs)
            ]
            new = members[0] if len(members) == 1 else HeadEnsemble(members, self.tasks_)
        if isinstance(self.net_.heads, PriorShiftedHeads):
            self.net_.heads.base = new
        else:
            self.net_.heads = new
        self.refit_ = {
            "epochs": epochs,
            "rows_before": int(len(train_rows)),
            "rows_after": int(len(rows)),
            "val_rows": int(len(val_rows)),
        }
        return rows

    def _fit_prior_shift(self, features, targets, train_rows, val_rows) -> None:
        """Choose each multi-class task's prior shift on the val rows (see ``prior_shift``)."""
        from multitag.multitask.prior_shift import PriorShiftedHeads, choose_shifts

        shifts = choose_shifts(
            self.tasks_,
            self.predict_proba_features(features[val_rows]),
            {k: v[val_rows] for k, v in targets.items()},
            {k: v[train_rows] for k, v in targets.items()},
            seed=self.seed,
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
        if use_cache and self.feature_cache_dir() and self.freeze == "all":
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
            runner_for(self.net_.encoder, self.engine, self.precision)
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
                workers=self.workers,
                precision=self.precision,
                engine=self.engine,
                device=device,
                progress=self.progress,
                description="tagging",
            ):
                if feats is None:
                    yield rows, errs, None
                    continue
                probs, _, feats = net.from_features(feats.to(device), imagenet=False)
                yield rows, errs, (probs, logits, feats)
            return
        precision = runtime.resolve_precision(self.precision, device)
        prep = net.encoder.preprocessing
        loader = iter_batches(
            paths,
            prep.image_size,
            batch_size,
            self.workers,
            framing=prep.framing,
            detail=prep.detail,
        )
        n = len(paths)
        with bar("tagging", n, enabled=self.progress and n > batch_size) as pbar:
            for idx, images, errs in loader:
                out = None
                if images is not None:
                    with runtime.autocast(precision, device):
                        out = net(images.to(device))
                yield idx.numpy(), errs, out
                pbar.advance(len(idx) + len(errs))

    @torch.inference_mode()
    def _predict_from_cache(self, paths, return_features: bool) -> dict:
        res = extract_features(
            self.net_.encoder,
            list(paths),
            cache_dir=self.feature_cache_dir(),
            encoder_id=self.encoder_id(),
            precision=self.precision,
            engine=self.engine,
            workers=self.workers,
            progress=self.progress,
        )
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
        params = {k: v for k, v in config.get("params", {}).items() if k in cls().get_params()}
        params.update(backbone=backbone["name"], weights=backbone["weights"])
        # a Framing / dict setting is not a JSON scalar; its measured value is in preprocessing
        # (None before framing existed: squash-resize only); likewise detail
        preprocessing = saved.net.encoder.preprocessing
        params.setdefault("framing", preprocessing.framing or "none")
        params.setdefault("detail", preprocessing.detail or "none")
        # and flip_invariant (off before it existed): what the saved heads do, whatever the default
        params.setdefault("flip_invariant", bool(config["heads"].get("flip_invariant", False)))
        tagger = cls(**params)
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

    def train_config(self) -> dict:
        return asdict(self._train_config())

    def __repr__(self) -> str:
        return f"MultiTaskTagger(tasks={self.tasks!r}, backbone={self.backbone!r})"


__all__ = ["MultiTaskTagger", "TaggerNet", "History"]
