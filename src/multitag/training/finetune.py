"""Fine-tuning above a freeze point, practical on a 2-core CPU.

The frozen prefix runs once per image (cached stage activations, see
:func:`multitag.vision.extraction.extract_prefix`); each step trains only the upper stages and
heads, under bf16 autocast and channels_last. AdamW, cosine schedule with linear warm-up, early
stopping on the validation score, an atomic checkpoint after every epoch (safetensors +
JSON), and resume after a kill: a resumed run ends with the same weights as a straight one
(per-epoch seeding, the step-indexed schedule and the optimizer state are all restored).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from multitag.core import runtime
from multitag.core.io import atomic_path, write_json
from multitag.core.progress import bar
from multitag.data.tasks import Task
from multitag.multitask.balancing import Balancer, build_balancer
from multitag.multitask.losses import task_loss
from multitag.multitask.sharing import Sharing
from multitag.training.loop import History, targets_to_tensors, validation_score
from multitag.vision.engines import resolve_engine

if TYPE_CHECKING:
    from multitag.vision.features import Encoder


@dataclass
class FineTuneConfig:
    """Hyper-parameters of upper-stage fine-tuning (recorded in checkpoints and configs)."""

    epochs: int = 3
    batch_size: int = 64
    lr: float = 5e-4
    head_lr: float = 1e-3
    balancer_lr: float = 1e-2  # learned task weights (uncertainty) move slowly otherwise
    weight_decay: float = 1e-4
    warmup: float = 0.1
    patience: int = 2
    label_smoothing: float = 0.1
    augment: bool = True
    precision: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"fine-tuning {name} must be >= 1, not {getattr(self, name)}")
        if not (self.lr > 0 and self.head_lr > 0):
            raise ValueError(f"learning rates must be > 0, not {self.lr}, {self.head_lr}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), not {self.warmup}")


# ----------------------------------------------------------------------------- augmentation
def augment_images(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Product-photo augmentation of uint8 NCHW images: horizontal flip, small scale and
    translation jitter (the exposed border is white, like the studio background), mild
    brightness/contrast. No hue or saturation change: colour is a label."""
    n = images.shape[0]
    x = images.float()
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    scale = 1.0 + (torch.rand(n, generator=generator) - 0.5) * 0.2  # +-10 %
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * 0.16  # +-8 % of the size
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # sample the inverted image so the zero padding becomes white
    x = 255.0 - F.grid_sample(255.0 - x, grid, align_corners=False, padding_mode="zeros")
    brightness = 1.0 + (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.2
    contrast = 1.0 + (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.2
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean * brightness
    return x.clamp(0, 255).round().to(torch.uint8)


def augment_maps(maps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Cached-activation augmentation: horizontal flip per sample (convolutions are close
    to flip-equivariant; image-space jitter needs the uncached path)."""
    flip = torch.rand(maps.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), maps.flip(-1), maps)


# ------------------------------------------------------------------------------ data sources
class StageData:
    """Training inputs for the upper stages: cached prefix outputs (``activations`` fp16 NCHW
    + ``prefix`` features), or uint8 ``images`` run through ``encoder.forward_until`` each
    step (allows image-space augmentation, costs the prefix forward)."""

    def __init__(
        self,
        activations: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
        *,
        images: torch.Tensor | None = None,
        encoder=None,
        block: int | None = None,
    ) -> None:
        if (activations is None) == (images is None):
            raise ValueError("StageData: give either cached activations+prefix or images")
        self.activations, self.prefix = activations, prefix
        self.images, self.encoder, self.block = images, encoder, block

    def batch(
        self, rows: np.ndarray, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(rows, dtype=torch.long)
        if self.activations is not None:
            acts = self.activations[idx].float()
            if generator is not None:
                acts = augment_maps(acts, generator)
            return acts.contiguous(memory_format=torch.channels_last), self.prefix[idx]
        images = self.images[idx]
        if generator is not None:
            images = augment_images(images, generator)
        with torch.no_grad():
            acts, prefix = self.encoder.eval().forward_until(images, self.block)
        return acts.float().contiguous(memory_format=torch.channels_last), prefix.float()


# ------------------------------------------------------------------------------ checkpoints
def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, list]:
    state = opt.state_dict()
    tensors = {
        f"{i}.{k}": v.detach().contiguous()
        for i, s in state["state"].items()
        for k, v in s.items()
        if torch.is_tensor(v)
    }
    return tensors, state["param_groups"]


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


def _module_tensors(model: torch.nn.Module, balancer: Balancer) -> dict:
    out = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out.update({f"balancer.{k}": v.detach().clone() for k, v in balancer.state_dict().items()})
    return out


def _load_modules(model: torch.nn.Module, balancer: Balancer, tensors: dict) -> None:
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    balancer.load_state_dict({k[9:]: v for k, v in tensors.items() if k.startswith("balancer.")})


def _save_tensors(path: Path, tensors: dict) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def _write_checkpoint(directory: Path, epoch: int, model, balancer, opt, state: dict) -> None:
    """``epoch-N.safetensors`` (weights), ``optim-N.safetensors``, then ``state.json`` naming
    them (written last: a kill at any point leaves the previous complete checkpoint)."""
    _save_tensors(directory / f"epoch-{epoch}.safetensors", _module_tensors(model, balancer))
    tensors, groups = _optimizer_tensors(opt)
    _save_tensors(directory / f"optim-{epoch}.safetensors", tensors)
    write_json(directory / "state.json", {**state, "epoch": epoch, "param_groups": groups})
    for old in directory.glob("*-*.safetensors"):
        stem = old.stem.split("-")[-1]
        if stem.isdigit() and int(stem) < epoch:
            old.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ training
def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def task_losses(tasks: Sequence[Task], logits: Mapping, targets: Mapping, smoothing: float) -> dict:
    out = {}
    for t in tasks:
        loss = task_loss(
            t, logits[t.name], targets[t.name], None, smoothing if t.kind == "multiclass" else 0
        )
        if loss is not None:
            out[t.name] = loss
    return out


@torch.no_grad()
def predict_logits(
    model: Sharing, data: StageData, rows: np.ndarray, batch_size: int = 256, precision="auto"
) -> dict[str, torch.Tensor]:
    """Float logits per task for ``rows`` (eval mode, no augmentation)."""
    device = torch.device("cpu")
    precision = runtime.resolve_precision(precision, device)
    model.eval()
    chunks: dict[str, list] = {}
    for s in range(0, len(rows), batch_size):
        acts, prefix = data.batch(rows[s : s + batch_size])
        with runtime.autocast(precision, device):
            out = model(acts, prefix)
        for k, v in out.items():
            chunks.setdefault(k, []).append(v.float())
    return {k: torch.cat(v) for k, v in chunks.items()}


def train_sharing(
    model: Sharing,
    data: StageData,
    targets: Mapping[str, np.ndarray],
    tasks: Sequence[Task],
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    config: FineTuneConfig | None = None,
    balancer: Balancer | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` (upper stages + heads) on ``data``; resumes from ``checkpoint_dir``.

    ``stop_after``: end after that many epochs in total (simulates a kill; resume later).
    Returns the :class:`History`; the model ends in eval mode with its best-epoch weights.
    """
    config = config or FineTuneConfig()
    config.validate()
    balancer = balancer or build_balancer("equal", [t.name for t in tasks])
    device = torch.device("cpu")
    precision = runtime.resolve_precision(config.precision, device)
    model.to(memory_format=torch.channels_last)
    head_ids = {id(p) for p in model.heads.parameters()}
    upper = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in model.heads.parameters() if p.requires_grad]
    groups = [
        {"params": upper, "lr": config.lr},
        {"params": head, "lr": config.head_lr},
        {"params": list(balancer.parameters()), "lr": config.balancer_lr, "weight_decay": 0.0},
    ]
    base_lrs = [config.lr, config.head_lr, config.balancer_lr]
    opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay, foreach=True)
    steps_per_epoch = max(1, math.ceil(len(train_rows) / config.batch_size))
    total_steps = config.epochs * steps_per_epoch
    warmup = max(1, int(config.warmup * total_steps))
    shared = model.shared_parameters()
    val_t = targets_to_tensors(targets, val_rows) if len(val_rows) else None

    history, best, start_epoch, seconds = History(), -math.inf, 0, 0.0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and (ckpt / "state.json").is_file():
        state = json.loads((ckpt / "state.json").read_text())
        if state.get("config") != asdict(config):
            raise ValueError(
                f"{ckpt}: checkpoint was made with other settings {state.get('config')}; "
                "use a new checkpoint folder or the same settings"
            )
        e = state["epoch"]
        _load_modules(model, balancer, load_file(str(ckpt / f"epoch-{e}.safetensors")))
        _load_optimizer(opt, load_file(str(ckpt / f"optim-{e}.safetensors")), state["param_groups"])
        history = History(**state["history"])
        best, start_epoch, seconds = state["best"], e + 1, history.seconds
        if state.get("done"):
            start_epoch = config.epochs
    best_state = None
    if ckpt is not None and (ckpt / "best.safetensors").is_file():
        best_state = load_file(str(ckpt / "best.safetensors"))
    last = config.epochs if stop_after is None else min(config.epochs, stop_after)
    done = start_epoch >= config.epochs
    t0 = time.perf_counter()
    with bar("fine-tuning", (last - start_epoch) * steps_per_epoch, progress) as pbar:
        for epoch in range(start_epoch, last):
            seed = config.seed * 100_003 + epoch
            torch.manual_seed(seed)  # dropout and PCGrad order: same per epoch on resume
            gen = torch.Generator().manual_seed(seed)
            order = train_rows[torch.randperm(len(train_rows), generator=gen).numpy()]
            model.train()
            sums: dict[str, float] = {}
            total, n = 0.0, 0
            for s in range(0, len(order), config.batch_size):
                step = epoch * steps_per_epoch + s // config.batch_size
                factor = lr_factor(step, total_steps, warmup)
                for g, lr in zip(opt.param_groups, base_lrs):
                    g["lr"] = lr * factor
                rows = order[s : s + config.batch_size]
                acts, prefix = data.batch(rows, gen if config.augment else None)
                batch_t = targets_to_tensors(targets, rows)
                with runtime.autocast(precision, device):
                    logits = model(acts, prefix)
                losses = task_losses(tasks, logits, batch_t, config.label_smoothing)
                if not losses:
                    continue
                opt.zero_grad(set_to_none=True)
                loss = balancer.backward(losses, shared, extra=model.penalty())
                opt.step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(rows)
                total += float(loss) * len(rows)
                n += len(rows)
                pbar.advance()
            balancer.end_epoch({k: v / max(n, 1) for k, v in sums.items()})
            history.train_loss.append(total / max(n, 1))
            score, val_loss = -history.train_loss[-1], history.train_loss[-1]
            if val_t is not None:
                out = predict_logits(model, data, val_rows, precision=config.precision)
                score = validation_score(out, val_t, tasks)
                val_loss = float(sum(task_losses(tasks, out, val_t, 0.0).values()))
            history.val_score.append(score)
            history.val_loss.append(val_loss)
            if score > best + 1e-4:
                best, history.best_epoch = score, epoch
                best_state = _module_tensors(model, balancer)
                if ckpt is not None:
                    _save_tensors(ckpt / "best.safetensors", best_state)
            stop = epoch - history.best_epoch >= config.patience
            history.stopped_early = stop
            history.seconds = seconds + time.perf_counter() - t0
            done = stop or epoch + 1 >= config.epochs
            if ckpt is not None:
                state = {"config": asdict(config), "history": history.to_dict(), "best": best}
                _write_checkpoint(ckpt, epoch, model, balancer, opt, {**state, "done": done})
            pbar.update(info=f"epoch {epoch + 1} val {score:.4f} (best {best:.4f})")
            if stop:
                break
    if done and best_state is not None:
        _load_modules(model, balancer, best_state)
    model.eval()
    return history


@torch.no_grad()
def tuned_features(
    encoder: Encoder,
    block: int,
    data: StageData,
    rows: Sequence[int] | np.ndarray,
    *,
    precision: str = "auto",
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Encoder features of ``rows`` computed from cached prefix outputs
    (``encoder.forward_from``): equal to a full forward of the (tuned) encoder."""
    device = torch.device("cpu")
    precision = runtime.resolve_precision(precision, device)
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(rows), encoder.out_dim), np.float32)
    encoder.eval()
    with bar("tuned features", math.ceil(len(rows) / batch_size), progress) as pbar:
        for s in range(0, len(rows), batch_size):
            acts, prefix = data.batch(rows[s : s + batch_size])
            with runtime.autocast(precision, device):
                feats, _ = encoder.forward_from(block, acts, prefix)
            out[s : s + batch_size] = feats.float().numpy()
            pbar.advance()
    return out


# ------------------------------------------------------------------------ tagger wiring
def fine_tune(tagger, frame, targets, train_rows, val_rows) -> History:
    """Fine-tune a :class:`MultiTaskTagger` above ``training.freeze`` with hard sharing.

    Called by ``MultiTaskTagger.fit`` after the heads were warm-started on cached features.
    Trains the encoder's own upper blocks in place, so ``save``/``load`` need no change.
    Epochs: ``training.finetune_epochs``, or ``min(training.epochs, 5)`` when it is None."""
    from multitag.multitask.sharing import HardSharing
    from multitag.vision.extraction import extract_prefix, run_encoder

    training, run = tagger.settings("training"), tagger.settings("runtime")
    encoder = tagger.net_.encoder
    block = encoder.block_index(training.freeze)
    acts, prefix, errors = extract_prefix(
        encoder,
        frame["path"].tolist(),
        block,
        cache_dir=tagger.feature_cache_dir(),
        encoder_id=tagger.encoder_id() if tagger.feature_cache_dir() else None,
        precision=training.precision,
        engine=run.engine,
        workers=run.workers,
        progress=run.progress,
    )
    train_rows = np.setdiff1d(train_rows, list(errors))
    val_rows = np.setdiff1d(val_rows, list(errors))
    model = HardSharing(encoder, block, tagger.net_.heads)
    epochs = training.finetune_epochs or min(training.epochs, 5)
    config = FineTuneConfig(
        epochs=epochs,
        lr=training.finetune_lr,
        precision=training.precision,
        seed=training.seed,
        label_smoothing=training.label_smoothing,
    )
    history = train_sharing(
        model,
        StageData(acts, prefix),
        targets,
        tagger.tasks_,
        train_rows,
        val_rows,
        config,
        progress=run.progress,
    )
    encoder.eval()
    tagger.finetune_history_ = history
    # the encoder changed: features for the validation report must come from the tuned one
    tuned = tuned_features(
        encoder, block, StageData(acts, prefix), np.arange(len(frame)), precision=training.precision
    )
    engine = resolve_engine(run.engine)
    if engine != "torch":  # evaluate on the features tagging will compute
        val_paths = frame["path"].iloc[val_rows].tolist()
        res = run_encoder(
            encoder, val_paths, engine=engine, precision=training.precision,
            workers=run.workers, progress=run.progress, description="tuned val features",
        )  # fmt: skip
        tuned[val_rows] = res.features
    tuned[list(errors)] = 0.0
    tagger.finetuned_features_ = tuned
    return history
