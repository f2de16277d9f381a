"""The saved-model directory: ``config.json`` (everything to rebuild) + ``model.safetensors``.

No pickle anywhere: weights are safetensors, the rest is JSON. Loading builds the architecture
from the config with random weights, then loads every tensor strictly, so a reloaded model
gives identical predictions and needs no network or weights package.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import safetensors
import torch
from safetensors.torch import load_model, save_model

import multitag
from multitag.core import integrity
from multitag.core.faults import kill_point
from multitag.core.io import atomic_path, remove_stale_temps, write_json
from multitag.core.locks import writer_lock
from multitag.data.tasks import Task
from multitag.multitask.heads import AveragedHeadSets, MultiTaskHeads
from multitag.multitask.net import TaggerNet
from multitag.multitask.prior_shift import PriorShiftedHeads
from multitag.tagger.config import flat_settings
from multitag.vision.encoder_spec import encoder_from_config, encoder_section
from multitag.vision.features import FEATURE_VERSION, Preprocessing
from multitag.vision.quantize import Calibration

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
#: ``id,split`` of every training and validation row, so later steps can tell which photos a
#: model has seen (:mod:`multitag.tagger.held_out`)
SPLIT = "split.csv"
#: ``config.json`` kind of a :class:`~multitag.tagger.ensemble.TaggerEnsemble` directory
ENSEMBLE_KIND = "multitag-ensemble"


def library_versions() -> dict:
    return {
        "multitag": multitag.__version__,
        "torch": torch.__version__,
        "timm": importlib.metadata.version("timm"),
        "safetensors": safetensors.__version__,
    }


def save_tagger(tagger, directory: str | os.PathLike) -> Path:
    """Save a fitted :class:`~multitag.tagger.estimator.MultiTaskTagger` (one writer per directory).

    ``config.json`` goes last and records the SHA-256 of every file saved beside it
    (:mod:`multitag.core.integrity`): a save killed half-way loads as a one-line error, not as
    new weights under an old description.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with writer_lock(directory, "model", folder=True):
        remove_stale_temps(directory)  # e.g. half a weights file from a killed save
        return _save_tagger(tagger, directory)


def _save_tagger(tagger, directory: Path) -> Path:
    net = tagger.net_
    enc = net.encoder
    features, heads = tagger.settings("features"), tagger.settings("heads")
    training = tagger.settings("training")
    config = {
        "format_version": FORMAT_VERSION,
        "kind": "multitag-tagger",
        "backbone": encoder_section(enc, features.backbone, features.weights),
        "preprocessing": {
            **enc.preprocessing.to_dict(),
            "resize": _resize_steps(enc.preprocessing),
            "input": "uint8 RGB NCHW",
        },
        # what the training photos look like: evaluate warns about photos that differ
        "training_photos": getattr(tagger, "photo_profile_", None),
        "heads": {
            "type": heads.head,
            "trunk": heads.trunk,
            "hidden": heads.hidden,
            "dropout": heads.dropout,
            "input_dropout": heads.input_dropout,
            "head_sets": heads.head_sets,
            "flip_invariant": bool(features.flip_invariant),
            "prior_shift": getattr(tagger, "prior_shift_", {}),
        },
        "tasks": [t.to_dict() for t in tagger.tasks_],
        "training": {
            "freeze": training.freeze,
            **training.loop_record(),
            "history": tagger.history_.to_dict() if hasattr(tagger, "history_") else None,
            "refit": getattr(tagger, "refit_", None),
            # extra views of the training photos the heads also learnt from (multitag.data.views)
            "views": getattr(tagger, "views_", None),
        },
        # every setting by its flat name (multitag.tagger.config.from_flat reads them back)
        "params": {
            k: v
            for k, v in {"tasks": tagger.tasks, **flat_settings(tagger)}.items()
            if isinstance(v, (str, int, float, bool, list, type(None)))
        },
        "precision": training.precision,
        # the training photos that calibrate the int8 encoder (multitag.vision.quantize)
        "calibration": _calibration_dict(enc),
        "versions": library_versions(),
    }
    if hasattr(net, "sharing_config"):  # soft / cross-stitch models (multitag.multitask.sharing)
        config["sharing"] = net.sharing_config()
    with atomic_path(directory / WEIGHTS) as tmp:
        save_model(net, str(tmp), metadata={"format": "multitag", "format_version": "1"})
    kill_point("model.save.weights")
    if getattr(tagger, "split_", None):
        _write_split(tagger.split_, directory / SPLIT)
    else:  # not one left by an earlier model saved here
        (directory / SPLIT).unlink(missing_ok=True)
    files = [WEIGHTS] + ([SPLIT] if (directory / SPLIT).is_file() else [])
    write_json(directory / CONFIG, integrity.seal(config, directory, files))
    return directory


def _calibration_dict(encoder) -> dict | None:
    calibration = getattr(encoder, "calibration", None)
    return calibration.to_dict() if calibration is not None else None


def _write_split(split: dict, path: Path) -> None:
    parts = []
    for name in ("train", "val"):
        ids = split[f"{name}_ids"]
        digests = split.get(f"{name}_digests") or [""] * len(ids)
        parts.append(pd.DataFrame({"id": ids, "split": name, "digest": digests}))
    with atomic_path(path) as tmp:
        pd.concat(parts).to_csv(tmp, index=False)


def _read_split(path: Path) -> dict | None:
    """``{"train_ids", "val_ids", "train_digests", "val_digests"}`` from ``split.csv``
    (digests empty for a split saved without them); ``None`` for a model saved without."""
    if not path.is_file():
        return None
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "digest" not in rows.columns:
        rows["digest"] = ""
    out = {}
    for name in ("train", "val"):
        part = rows[rows["split"] == name]
        out[f"{name}_ids"] = part["id"].tolist()
        out[f"{name}_digests"] = part["digest"].tolist() if part["digest"].all() else []
    return out


def read_config(directory: str | os.PathLike) -> dict:
    """The ``config.json`` of a model directory, with a clear error when it is not one."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a multitag model directory (no {CONFIG}); "
            "create one with `multitag train ... --out DIR`"
        )
    config = integrity.read_json(path)
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format version {config['format_version']} is newer than this multitag "
            f"understands ({FORMAT_VERSION}); upgrade multitag"
        )
    return config


def _resize_steps(prep: Preprocessing) -> str:
    """The preprocessing steps in words, for people reading ``config.json``."""
    steps = ["reframe (multitag.data.framing.reframe)"] if prep.framing is not None else []
    if prep.detail is not None:
        steps.append(
            "down to the training photos' detail when sharper (multitag.data.detail.match_detail)"
        )
    return ", then ".join([*steps, "squash, bicubic"])


def tagger_preprocessing(directory: str | os.PathLike) -> Preprocessing | None:
    """The input preprocessing (size, normalisation, framing, detail) of the tagger saved in
    ``directory``; ``None`` when it holds none (no model yet, or an embedder only)."""
    if not (Path(directory) / CONFIG).is_file():
        return None
    config = read_config(directory)
    if config.get("kind", "multitag-tagger") != "multitag-tagger":
        return None
    return Preprocessing.from_dict(config["preprocessing"])


@dataclass
class SavedTagger:
    """What a tagger's model directory holds, rebuilt: its config, tasks, network (weights
    loaded and checked) and training split (``None`` when not recorded)."""

    config: dict
    tasks: list[Task]
    net: torch.nn.Module
    split: dict | None


def load_saved(directory: str | os.PathLike) -> SavedTagger:
    """Read a tagger's model directory: the estimator
    (:meth:`~multitag.tagger.estimator.MultiTaskTagger.load`) sets itself up from it."""
    directory = Path(directory)
    config = read_config(directory)
    if config.get("kind") == ENSEMBLE_KIND:
        raise ValueError(
            f"{directory} is an ensemble of taggers (`multitag combine`): only `tag` and "
            "`evaluate` take it; for a catalogue, the explorer or ONNX export pass one of its "
            "member-i directories (in Python: TaggerEnsemble.load)"
        )
    bb = config["backbone"]
    if bb.get("feature_version", 3) != FEATURE_VERSION:
        raise ValueError(
            f"{directory} was saved with feature layout v{bb.get('feature_version', 3)}; this "
            f"multitag computes v{FEATURE_VERSION}: retrain it with `multitag train`"
        )
    encoder = encoder_from_config(config)
    encoder.calibration = Calibration.from_dict(config.get("calibration"))
    tasks = [Task.from_dict(t) for t in config["tasks"]]
    h = config["heads"]

    def new_heads() -> MultiTaskHeads:
        return MultiTaskHeads(
            encoder.out_dim,
            tasks,
            h["type"],
            h["hidden"],
            h["dropout"],
            input_dropout=0.0,
            trunk=h.get("trunk", 0),
            mirror=encoder.mirror_index() if h.get("flip_invariant") else None,
        )

    n = int(h.get("head_sets", h.get("ensemble", 1)))  # "ensemble" before it was renamed
    heads = AveragedHeadSets([new_heads() for _ in range(n)], tasks) if n > 1 else new_heads()
    shifted = {name: s for name, s in h.get("prior_shift", {}).items() if s["tau"]}
    if shifted:  # the biases themselves are buffers in the weights file
        sizes = {t.name: t.n_classes for t in tasks}
        heads = PriorShiftedHeads(heads, {name: torch.zeros(sizes[name]) for name in shifted})
    if "sharing" in config:
        from multitag.multitask.sharing import SharedTaggerNet, build_sharing

        sh = config["sharing"]
        sharing = build_sharing(
            sh["kind"], encoder, sh["block"], heads, sh.get("groups"), sh.get("weight", 0.0)
        )
        net = SharedTaggerNet(encoder, sharing, tasks)
    else:
        net = TaggerNet(encoder, heads, tasks)
    integrity.verify(directory, config, CONFIG)
    try:
        load_model(net, str(directory / WEIGHTS), strict=True)
    except (safetensors.SafetensorError, OSError, RuntimeError) as err:
        raise integrity.unreadable(directory / WEIGHTS, err) from None
    return SavedTagger(config, tasks, net.eval(), _read_split(directory / SPLIT))
