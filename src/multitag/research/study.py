"""Transfer-learning study: backbones x freeze points x sharing strategies x loss balancing.

``run_study(config, out_dir)`` trains every run of the grid on one fixed split, one JSON per
finished run under ``out_dir/runs/`` (a re-run skips them: resumable), then writes the table
(``study.csv`` / ``study.json``) and a self-contained HTML report
(:mod:`multitag.research.study_report`).

Per (backbone, freeze point) the frozen prefix runs once over the images (cached on disk);
every run warm-starts its heads on the frozen network's features, then fine-tunes the upper
stages with :func:`multitag.training.finetune.train_sharing`. ``freeze: all`` = heads only.
``sharing: single`` = one hard-sharing network per task (the single-task baselines).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from multitag.core import runtime
from multitag.core.io import write_json, write_table
from multitag.data.inputs import resolve_inputs
from multitag.evaluation.metrics import multiclass_metrics
from multitag.multitask.balancing import build_balancer
from multitag.multitask.heads import MultiTaskHeads, probabilities
from multitag.multitask.sharing import build_sharing
from multitag.training.finetune import FineTuneConfig, StageData, predict_logits, train_sharing
from multitag.training.loop import TrainConfig, fit_heads
from multitag.training.prepare import FeatureStore, fit_rows
from multitag.vision.encoder_spec import EncoderSpec
from multitag.vision.features import Encoder, iter_batches

SHARINGS = ("single", "hard", "soft", "cross_stitch")


@dataclass
class StudyConfig:
    """The YAML file's keys (see ``examples/study.yaml``)."""

    data: str
    images: str | None = None
    id_col: str | None = None  # the manifest columns, as --id-col / --path-col / --ext
    path_col: str | None = None
    ext: str = ".jpg"
    tasks: list[str] = field(default_factory=list)
    grid: list[dict] = field(default_factory=list)
    backbones: list[str] = field(default_factory=lambda: ["tf_efficientnet_lite0"])
    freeze: list[str] = field(default_factory=lambda: ["blocks.4"])
    sharing: list[str] = field(default_factory=lambda: ["hard"])
    balancing: list[str] = field(default_factory=lambda: ["equal"])
    groups: list[list[str]] | None = None
    soft_weight: float = 1e-3
    image_size: int = 64
    epochs: int = 2
    batch_size: int = 64
    lr: float = 5e-4
    head_lr: float = 1e-3
    warm_epochs: int = 15
    trunk: int = 0
    subset: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    min_count: int = 5
    budget_minutes: float | None = None
    seed: int = 0
    group_copies: bool = True  # copies of a photo (same content digest) on one side of a split
    cache_dir: str | None = None
    precision: str = "auto"
    threads: int | None = None  # torch threads; 1 is faster on a busy 2-core machine

    @classmethod
    def load(cls, path: str | os.PathLike) -> StudyConfig:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        base = Path(path).resolve().parent
        cfg = cls.from_dict(raw)
        for key in ("data", "images", "cache_dir"):  # relative to the YAML file
            value = getattr(cfg, key)
            if value and not Path(value).is_absolute():
                setattr(cfg, key, str((base / value).resolve()))
        return cfg

    @classmethod
    def from_dict(cls, raw: dict) -> StudyConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"study config: unknown keys {unknown}; known: {sorted(known)}")
        if "data" not in raw:
            raise ValueError("study config: 'data' (the manifest CSV) is required")
        return cls(**raw)

    def runs(self) -> list[dict]:
        """Every run of the grid, once each, in order (``grid`` blocks, else the top lists)."""
        blocks = self.grid or [{}]
        out: list[dict] = []
        for block in blocks:
            unknown = set(block) - {"backbones", "freeze", "sharing", "balancing"}
            if unknown:
                raise ValueError(f"study grid block: unknown keys {sorted(unknown)}")
            for bb in block.get("backbones", self.backbones):
                for fz in block.get("freeze", self.freeze):
                    for sh in block.get("sharing", self.sharing):
                        if sh not in SHARINGS:
                            raise ValueError(f"sharing {sh!r}: use one of {SHARINGS}")
                        for bal in block.get("balancing", self.balancing):
                            if sh == "single" or fz == "all":
                                bal = "equal"  # one task / no fine-tuning: nothing to balance
                            if fz == "all":
                                sh = "hard"
                            run = {"backbone": bb, "freeze": fz, "sharing": sh, "balancing": bal}
                            if run not in out:
                                out.append(run)
        return out


def run_id(run: dict) -> str:
    return "__".join(str(run[k]) for k in ("backbone", "freeze", "sharing", "balancing"))


# ------------------------------------------------------------------------------ data
@dataclass
class StudyData:
    frame: pd.DataFrame
    tasks: list
    targets: dict
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    features: np.ndarray | None = None  # the frozen network's features (current backbone)
    skipped: pd.DataFrame | None = None  # inputs left out (missing, not regular files, ...)


def load_data(cfg: StudyConfig) -> StudyData:
    """The manifest, a seeded subset, the tasks and a fixed stratified train/val/test split."""
    found = resolve_inputs(
        [cfg.data], cfg.images, id_col=cfg.id_col, path_col=cfg.path_col, ext=cfg.ext
    )
    frame = found.frame
    missing = [t for t in cfg.tasks if t not in frame.columns]
    if missing:
        raise ValueError(f"{cfg.data}: no column(s) {missing}; columns: {list(frame.columns)}")
    if cfg.subset and cfg.subset < len(frame):
        frame = frame.sample(n=cfg.subset, random_state=cfg.seed)
    rows = fit_rows(frame.sort_values("id"), cfg.tasks, min_count=cfg.min_count)
    split = rows.split(
        cfg.val_fraction,
        cfg.seed,
        test_fraction=cfg.test_fraction,
        group_copies=cfg.group_copies,
    )
    data = StudyData(rows.frame, rows.tasks, rows.targets, split.train, split.val, split.test)
    data.skipped = found.skipped_frame()
    return data


def split_fingerprint(data: StudyData) -> str:
    """A digest of which ids are in the val and test splits: finished runs of a study
    directory are only comparable with new ones on the same split."""
    ids = data.frame["id"].astype(str).to_numpy()
    text = ",".join(sorted(ids[data.val])) + "|" + ",".join(sorted(ids[data.test]))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _encoder(backbone: str, cfg: StudyConfig) -> Encoder:
    return EncoderSpec(backbone, image_size=cfg.image_size, with_imagenet=False).build()


# ------------------------------------------------------------------------------ one run
def _metrics(tasks, targets, logits, rows) -> dict:
    out = {}
    for t in tasks:
        proba = probabilities(t, logits[t.name].float()).numpy()
        m = multiclass_metrics(targets[t.name][rows], proba, t.classes)
        out[t.name] = {"weighted_f1": m["weighted_f1"], "accuracy": m["accuracy"]}
    return out


@torch.inference_mode()
def _inference_ms(encoder: Encoder, model, block: int, images: torch.Tensor, precision) -> float:
    """Milliseconds per image, images -> logits (best of 3 batches, bf16 where fast)."""
    device = torch.device("cpu")
    precision = runtime.resolve_precision(precision, device)
    encoder.eval()
    model.eval()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        with runtime.autocast(precision, device):
            if block < 0:
                model(encoder(images)[0])
            else:
                model(*encoder.forward_until(images, block))
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(images)


def warm_start(cfg, data, encoder: Encoder, feats: np.ndarray) -> tuple[MultiTaskHeads, float]:
    """Heads for every task trained on the frozen network's features (also the 'all' run)."""
    torch.manual_seed(cfg.seed)
    heads = MultiTaskHeads(encoder.out_dim, data.tasks, "linear", 256, 0.2, 0.0, cfg.trunk)
    heads.fit_scaler(feats[data.train])
    history = fit_heads(
        heads,
        feats,
        data.targets,
        data.tasks,
        data.train,
        data.val,
        TrainConfig(epochs=cfg.warm_epochs, patience=4, seed=cfg.seed),
        progress=False,
    )
    return heads.eval(), history.seconds


def _heads_for(heads: MultiTaskHeads, tasks, cfg) -> MultiTaskHeads:
    """A copy of the warm-started heads restricted to ``tasks`` (heads are per task when
    ``trunk`` is 0, so a single-task network starts from the same head as the multi-task one)."""
    if len(tasks) == len(heads.task_names):
        return copy.deepcopy(heads)
    if cfg.trunk:
        raise ValueError("single-task baselines need trunk: 0 (a shared trunk couples the heads)")
    sub = MultiTaskHeads(len(heads.mean), tasks, "linear", 256, 0.2, 0.0, 0)
    state = heads.state_dict()
    sub.load_state_dict({k: state[k] for k in sub.state_dict()})
    return sub


def _train_one(cfg, data, encoder, block, stage, warm, task_subset, sharing, balancing, ckpt):
    """Fine-tune from the warm-started heads; returns (model, encoder, test logits, info)."""
    tasks = [t for t in data.tasks if t.name in task_subset]
    encoder = copy.deepcopy(encoder)
    heads = _heads_for(warm, tasks, cfg)
    start = time.perf_counter()
    if block < 0:
        with torch.no_grad():
            logits = heads.eval()(torch.as_tensor(data.features[data.test]))
        info = {
            "train_seconds": time.perf_counter() - start,
            "trainable_params": sum(p.numel() for p in heads.parameters()),
        }
        return heads, encoder, logits, info
    model = build_sharing(sharing, encoder, block, heads, cfg.groups, cfg.soft_weight)
    balancer = build_balancer(balancing, [t.name for t in tasks])
    ft = FineTuneConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        head_lr=cfg.head_lr,
        patience=max(cfg.epochs, 1),
        precision=cfg.precision,
        seed=cfg.seed,
    )
    history = train_sharing(
        model,
        stage,
        data.targets,
        tasks,
        data.train,
        data.val,
        ft,
        balancer,
        checkpoint_dir=ckpt,
        progress=False,
    )
    logits = predict_logits(model, stage, data.test, precision=cfg.precision)
    info = {
        "train_seconds": history.seconds,  # summed over resumes of a killed run
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "history": history.to_dict(),
        "balancer_weights": balancer.weights(),
        "sharing_report": model.report(),
    }
    return model, encoder, logits, info


def run_one(cfg, data, run, encoder, block, stage, warm, sample, ckpt_root) -> dict:
    """Train and evaluate one grid point; single-task runs train one network per task."""
    task_sets = (
        [[t.name] for t in data.tasks]
        if run["sharing"] == "single"
        else [[t.name for t in data.tasks]]
    )
    sharing = "hard" if run["sharing"] == "single" else run["sharing"]
    logits, info_all = {}, {"trainable_params": 0, "train_seconds": 0.0, "inference_ms": 0.0}
    details = []
    for names in task_sets:
        ckpt = (
            ckpt_root / f"{run_id(run)}-{'+'.join(names)}"
            if len(task_sets) > 1
            else ckpt_root / run_id(run)
        )
        model, enc, lg, info = _train_one(
            cfg, data, encoder, block, stage, warm, names, sharing, run["balancing"], ckpt
        )
        logits.update(lg)
        info["inference_ms"] = _inference_ms(enc, model, block, sample, cfg.precision)
        for k in ("trainable_params", "train_seconds", "inference_ms"):
            info_all[k] += info[k]
        details.append({"tasks": names, **info})
    metrics = _metrics(data.tasks, data.targets, logits, data.test)
    f1 = [m["weighted_f1"] for m in metrics.values()]
    acc = [m["accuracy"] for m in metrics.values()]
    return {
        **run,
        "metrics": metrics,
        "mean_weighted_f1": float(np.mean(f1)),
        "mean_accuracy": float(np.mean(acc)),
        **info_all,
        "details": details,
    }


# ------------------------------------------------------------------------------ the grid
def run_study(
    cfg: StudyConfig | str | os.PathLike, out_dir: str | os.PathLike, progress: bool = True
) -> pd.DataFrame:
    """Run (or resume) the grid; write ``runs/*.json``, ``study.csv``, ``study.json`` and
    ``report.html`` under ``out_dir``; return the table."""
    from multitag.core.progress import bar
    from multitag.research.study_report import results_table, write_report

    if not isinstance(cfg, StudyConfig):
        cfg = StudyConfig.load(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    runs = cfg.runs()
    todo = [r for r in runs if not (out / "runs" / f"{run_id(r)}.json").is_file()]
    started = time.perf_counter()
    data = load_data(cfg) if todo else None
    if data is not None:
        if len(data.skipped):  # the same list the CLI commands write
            write_table(data.skipped, out / "inputs.rejects.csv")
        split = split_fingerprint(data)
        _check_same_split(out, split, finished=len(runs) - len(todo))
        write_json(
            out / "data.json",
            {
                "rows": len(data.frame),
                "train": len(data.train),
                "val": len(data.val),
                "test": len(data.test),
                "tasks": [{"name": t.name, "classes": len(t.classes)} for t in data.tasks],
                "image_size": cfg.image_size,
                "group_copies": cfg.group_copies,
                "skipped_inputs": len(data.skipped),
                "split": split,
            },
        )
    groups: dict[tuple, list[dict]] = {}
    for r in todo:
        groups.setdefault((r["backbone"], r["freeze"]), []).append(r)
    skipped: list[str] = []
    with bar("study runs", len(todo), progress) as pbar:
        for (bb, fz), group in groups.items():
            if cfg.budget_minutes and time.perf_counter() - started > 60 * cfg.budget_minutes:
                skipped.extend(run_id(r) for r in group)
                continue
            encoder = _encoder(bb, cfg)
            paths = data.frame["path"].tolist()
            block = -1 if fz == "all" else encoder.block_index(fz)
            first = 4 if block < 0 else block  # 'all': any cached prefix will do
            store = FeatureStore(
                encoder, bb, "auto", cfg.precision, cache_dir=cache_dir, progress=progress
            )
            acts, prefix, errors = store.prefix(paths, first)
            if errors:
                raise ValueError(f"unreadable images in the study set: {list(errors.items())[:3]}")
            stage = StageData(acts, prefix)
            data.features = _frozen_features(encoder, first, stage, len(paths), cfg.precision)
            warm, warm_seconds = warm_start(cfg, data, encoder, data.features)
            sample = next(iter_batches(paths[:64], cfg.image_size, 64))[1]
            for r in group:
                if cfg.budget_minutes and time.perf_counter() - started > 60 * cfg.budget_minutes:
                    skipped.append(run_id(r))
                    continue
                pbar.update(info=run_id(r))
                result = run_one(cfg, data, r, encoder, block, stage, warm, sample, out / "ckpt")
                result["train_seconds"] += warm_seconds  # every run pays the warm start
                result.update(image_size=cfg.image_size, warm_start_seconds=warm_seconds)
                write_json(out / "runs" / f"{run_id(r)}.json", result)
                pbar.advance()
    results = [
        json.loads((out / "runs" / f"{run_id(r)}.json").read_text())
        for r in runs
        if (out / "runs" / f"{run_id(r)}.json").is_file()
    ]
    table = results_table(results)
    write_table(table, out / "study.csv")
    data_info = json.loads((out / "data.json").read_text()) if (out / "data.json").is_file() else {}
    write_json(out / "study.json", {"data": data_info, "runs": results, "skipped": skipped})
    write_report(results, data_info, out, skipped)
    return table


def _check_same_split(out: Path, split: str, finished: int) -> None:
    info = out / "data.json"
    if not finished or not info.is_file():
        return
    before = json.loads(info.read_text()).get("split")
    if before is None:
        warnings.warn(
            f"{out}: its {finished} finished run(s) do not record their split (an older "
            "multitag; before group_copies, set group_copies: false to split as it did), so "
            "whether new runs share it cannot be checked",
            stacklevel=3,
        )
    elif before != split:
        raise ValueError(
            f"{out}: its {finished} finished run(s) were scored on another val/test split "
            f"({before}, now {split}: the data, subset, seed, fractions or group_copies "
            "changed), so new runs would not be comparable; use a new --out directory, or "
            "restore the config they were run with"
        )


@torch.no_grad()
def _frozen_features(
    encoder: Encoder, block: int, stage: StageData, n: int, precision
) -> np.ndarray:
    """The frozen network's full feature vectors, from the cached prefix (warm start)."""
    device = torch.device("cpu")
    precision = runtime.resolve_precision(precision, device)
    encoder.eval()
    out = np.zeros((n, encoder.out_dim), np.float32)
    rows = np.arange(n)
    for s in range(0, n, 256):
        acts, prefix = stage.batch(rows[s : s + 256])
        with runtime.autocast(precision, device):
            f, _ = encoder.forward_from(block, acts, prefix)
        out[s : s + 256] = f.float().numpy()
    return out
