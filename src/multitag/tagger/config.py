"""The settings of a :class:`~multitag.tagger.estimator.MultiTaskTagger`, in five groups.

Each group is a small dataclass that is itself a scikit-learn estimator for its parameters,
so nested names work: ``tagger.get_params(deep=True)`` lists ``features__backbone``,
``tagger.set_params(training__epochs=3)`` sets one field, ``sklearn.base.clone`` copies them.

============  =====================================================  ===================
group         what it sets                                           class
============  =====================================================  ===================
features      what the frozen encoder computes per photo             :class:`FeatureConfig`
heads         the heads on those features                            :class:`HeadConfig`
labels        how label columns become tasks                         :class:`LabelConfig`
training      how the heads (and backbone) train                     :class:`TrainConfig`
runtime       where and how fast it runs (no effect on the model)    :class:`RuntimeConfig`
============  =====================================================  ===================

:func:`from_flat` is the one place that knows which flat name (a CLI flag, a ``params``
entry of ``config.json``) belongs to which group; :func:`to_flat` goes back.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from multitag.core.params import ParamsMixin
from multitag.data.detail import Detail
from multitag.data.framing import Framing
from multitag.data.views import resolve_views
from multitag.multitask.heads import HEAD_TYPES
from multitag.training.loop import TrainConfig
from multitag.vision import backbones


@dataclass
class FeatureConfig(ParamsMixin):
    """What the encoder computes per photo (``MultiTaskTagger(features=...)``).

    Parameters
    ----------
    backbone : str, default "tf_efficientnet_lite0"
        A registered backbone (``multitag backbones``) or any timm name.
    weights : str or None, default "auto"
        ``"auto"``, ``"package"``, ``"hub"``, a state-dict file, or ``None`` (random init).
    image_size : int, optional
        Square network input; ``None`` = the backbone's pretrained size.
    framing : {"auto", "none"} or Framing or dict, default "auto"
        ``"auto"`` crops every photo to its product and centres it on the catalogue's canvas,
        measured on training photos (:mod:`multitag.data.framing`); ``"none"`` squashes only.
    detail : "auto", "none", int, Detail or dict, default "auto"
        Bring photos sharper than the training photos down to their level of detail before
        the square resize; ``"auto"`` measures it on the training photos
        (:mod:`multitag.data.detail`); an int brings every framed photo above that many
        pixels down to it.
    stages : sequence of int, optional
        Backbone stages whose pooled outputs join the features; ``None`` = every stage.
    colour_bins : int, default 6
        Bins per channel of the colour histograms (0 = no colour features).
    grid_stages : sequence of int or "auto", default "auto"
        Stages also pooled on a 3x2 grid (``"auto"``: the stride-8 and stride-16 stages).
    views : "auto", "none" or sequence of str, default "auto"
        Extra views of every training photo (``"flip"``, ``"jpeg60"``, ``"grey"``,
        ``"down2"``; :mod:`multitag.data.views`) whose cached features the heads also train
        on, labelled like the photo: one more extraction pass each and more head-training
        rows (docs/robustness.md). Frozen backbones only; ``"auto"`` is ``["flip",
        "jpeg60"]`` for a frozen backbone and none while fine-tuning.
    view_fraction : float, default 1.0
        Share of the training rows (a seeded sample, the same for every view) that get the
        extra ``views``: below 1 a view costs that share of an encoder pass and of the added
        head-training rows.
    flip_invariant : bool, default False
        Average every feature with its mirror-image feature before the heads
        (:meth:`~multitag.vision.features.Encoder.mirror_index`), so a photo and its mirror
        image get the same tags.
    """

    backbone: str = backbones.DEFAULT_BACKBONE
    weights: str | None = "auto"
    image_size: int | None = None
    framing: str | Mapping | Framing = "auto"
    detail: str | int | Mapping | Detail | None = "auto"
    stages: Sequence[int] | None = None
    colour_bins: int = 6
    grid_stages: Sequence[int] | str = "auto"
    views: Sequence[str] | str | None = "auto"
    view_fraction: float = 1.0
    flip_invariant: bool = False

    def validate(self) -> None:
        resolve_views(self.views, frozen=True)  # names checked before any photo is read
        if isinstance(self.view_fraction, bool) or not 0 < self.view_fraction <= 1:
            raise ValueError(
                f"features.view_fraction must be in (0, 1], not {self.view_fraction!r}"
            )
        if not isinstance(self.flip_invariant, bool):
            raise ValueError(
                f"features.flip_invariant must be True or False, not {self.flip_invariant!r}"
            )


@dataclass
class HeadConfig(ParamsMixin):
    """The heads on the encoder's features (``MultiTaskTagger(heads=...)``).

    Parameters
    ----------
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
    head_sets : int, default 1
        Head sets fitted from seeds ``seed, seed+1, ...`` on the same features, their
        probabilities averaged (:class:`~multitag.multitask.heads.AveragedHeadSets`); one
        encoder pass whatever the number. Not to be confused with
        :class:`~multitag.tagger.ensemble.TaggerEnsemble` (whole models, one encoder each).
    prior_shift : {"none", "auto"}, default "none"
        ``"auto"`` shifts each multi-class task's decisions towards rare classes where a
        cross-fitted gain says it helps (:mod:`multitag.multitask.prior_shift`).
    """

    head: str = "linear"
    trunk: int = 1024
    hidden: int = 512
    dropout: float = 0.2
    input_dropout: float = 0.2
    head_sets: int = 1
    prior_shift: str = "none"

    def validate(self) -> None:
        if self.head not in HEAD_TYPES:
            raise ValueError(f"heads.head must be one of {HEAD_TYPES}, not {self.head!r}")
        n = self.head_sets
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(
                f"heads.head_sets: the number of head sets to average, an int >= 1, not {n!r}"
            )
        if self.prior_shift not in ("none", "auto"):
            raise ValueError(
                f"heads.prior_shift must be 'none' or 'auto' (choose a per-task shift towards "
                f"frequent or rare classes on the val split), not {self.prior_shift!r}"
            )


@dataclass
class LabelConfig(ParamsMixin):
    """How label columns become tasks (``MultiTaskTagger(labels=...)``,
    :func:`~multitag.data.tasks.infer_tasks`).

    Parameters
    ----------
    multilabel : mapping or sequence of str, optional
        Multi-label columns (a mapping gives each its own delimiter).
    delimiter : str, default "|"
        Delimiter inside multi-label cells.
    min_count : int, default 5
        Classes rarer than this are folded into ``other`` or dropped (``rare``).
    rare : {"other", "drop"}, default "other"
        What happens to rare classes.
    """

    multilabel: Mapping[str, str] | Sequence[str] | None = None
    delimiter: str = "|"
    min_count: int = 5
    rare: str = "other"

    def validate(self) -> None:
        if self.rare not in ("other", "drop"):
            raise ValueError(f"labels.rare must be 'other' or 'drop', not {self.rare!r}")


@dataclass
class RuntimeConfig(ParamsMixin):
    """Where and how fast a tagger runs; none of it changes the model
    (``MultiTaskTagger(runtime=...)``).

    Parameters
    ----------
    cache_dir : path, "default" or None, default "default"
        Feature cache folder (``"default"``: ``$MULTITAG_CACHE/features``; ``None``: no cache).
    engine : {"auto", "torch", "openvino"}, default "auto"
        Inference engine of the frozen encoder (:mod:`multitag.vision.engines`).
    workers : int, optional
        Decode threads; ``None`` = one per core.
    progress : bool, default True
        Show progress bars.
    """

    cache_dir: str | os.PathLike | None = "default"
    engine: str = "auto"
    workers: int | None = None
    progress: bool = True

    def validate(self) -> None:
        pass


#: the tagger's groups, in constructor order: name -> settings class
GROUPS: dict[str, type] = {
    "features": FeatureConfig,
    "heads": HeadConfig,
    "labels": LabelConfig,
    "training": TrainConfig,
    "runtime": RuntimeConfig,
}

#: named head-training schedules, as flat training settings (:func:`from_flat`, ``multitag
#: train --schedule``). ``"thorough"`` is :class:`TrainConfig`'s defaults with a refit from
#: scratch; ``"quick"`` trains in 4x bigger batches at twice the rate for fewer epochs, and
#: (with ``refit=True``) refits warm for a few epochs: a fraction of the cost for a small
#: loss of accuracy (docs/demo.md, "The quick schedule", says what it costs).
SCHEDULES: dict[str, dict[str, object]] = {
    "thorough": {
        "epochs": 25, "batch_size": 512, "lr": 2e-3, "patience": 6,
        "refit_epochs": None, "refit_lr_factor": 0.25,
    },
    "quick": {
        "epochs": 12, "batch_size": 2048, "lr": 4e-3, "patience": 4,
        "refit_epochs": 3, "refit_lr_factor": 0.25,
    },
}  # fmt: skip


def schedule(name: str) -> dict[str, object]:
    """The flat training settings of schedule ``name`` (:data:`SCHEDULES`), a copy."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, not {name!r}")
    return dict(SCHEDULES[name])


#: flat names of earlier versions -> today's (``config.json`` of older models, old scripts)
RENAMED = {"ensemble": "head_sets"}


@functools.cache
def group_of() -> dict[str, str]:
    """Every flat parameter name -> the group it belongs to."""
    return {f.name: group for group, cls in GROUPS.items() for f in fields(cls)}


def from_flat(flat: Mapping[str, object], *, strict: bool = True) -> dict[str, ParamsMixin]:
    """Group flat settings: ``{"backbone": "x", "epochs": 3}`` ->
    ``{"features": FeatureConfig(backbone="x"), "training": TrainConfig(epochs=3)}``, the
    keyword arguments of :class:`~multitag.tagger.estimator.MultiTaskTagger` (every group,
    defaults where a name is not given). Old names (``ensemble``) are read as today's.
    ``strict`` refuses unknown names; otherwise they are ignored (a ``config.json`` written
    by another version)."""
    owner = group_of()
    grouped: dict[str, dict] = {group: {} for group in GROUPS}
    unknown = []
    for name, value in flat.items():
        name = RENAMED.get(name, name)
        if name in owner:
            grouped[owner[name]][name] = value
        else:
            unknown.append(name)
    if unknown and strict:
        raise ValueError(f"unknown tagger settings {sorted(unknown)}; known: {sorted(owner)}")
    return {group: GROUPS[group](**values) for group, values in grouped.items()}


def to_flat(groups: Mapping[str, ParamsMixin]) -> dict[str, object]:
    """The inverse of :func:`from_flat`: one flat dict of every group's fields."""
    return {k: v for config in groups.values() for k, v in config.get_params().items()}


def flat_settings(tagger) -> dict[str, object]:
    """Every setting in effect of a :class:`~multitag.tagger.estimator.MultiTaskTagger`, by
    flat name (what ``config.json`` records under ``params``)."""
    return to_flat({group: tagger.settings(group) for group in GROUPS})


def set_runtime(tagger, **values) -> None:
    """Set runtime settings (``progress``, ``workers``, ``engine``) on whatever tags: a
    :class:`~multitag.tagger.estimator.MultiTaskTagger` or a
    :class:`~multitag.tagger.ensemble.TaggerEnsemble` through its ``runtime`` group, a tagger
    with flat settings (:class:`~multitag.catalog.backbone_tagger.BackboneTagger`) directly."""
    if hasattr(tagger, "settings"):
        tagger.set_params(**{f"runtime__{name}": value for name, value in values.items()})
    else:
        for name, value in values.items():
            setattr(tagger, name, value)


__all__ = [
    "FeatureConfig",
    "HeadConfig",
    "LabelConfig",
    "TrainConfig",
    "RuntimeConfig",
    "GROUPS",
    "SCHEDULES",
    "schedule",
    "from_flat",
    "to_flat",
    "flat_settings",
    "set_runtime",
]
