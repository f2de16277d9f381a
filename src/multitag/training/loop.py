"""Training loops: heads on cached features (fast path) and end-to-end fine-tuning."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from multitag.core import runtime
from multitag.core.faults import kill_point
from multitag.core.params import ParamsMixin
from multitag.core.progress import bar
from multitag.data.tasks import Task
from multitag.multitask.losses import CLASS_WEIGHTINGS, class_weights, task_loss


@dataclass
class TrainConfig(ParamsMixin):
    """How a tagger trains: the head-training loop, fine-tuning, the split and the refit
    (``MultiTaskTagger(training=...)``; the loop functions read the fields they need).

    Parameters
    ----------
    freeze : str, default "all"
        ``"all"`` trains heads only; a stage name such as ``"blocks.5"`` also fine-tunes every
        stage after it (:mod:`multitag.training.finetune`).
    finetune_epochs : int, optional
        Fine-tuning epochs; ``None`` = ``min(epochs, 5)``.
    finetune_lr : float, default 5e-4
        Backbone learning rate when fine-tuning.
    epochs : int, default 25
        Maximum head-training epochs (early stopping on the val score).
    batch_size : int, default 512
        Head-training batch size.
    lr : float, default 2e-3
        Head learning rate (AdamW, one-cycle schedule).
    weight_decay : float, default 1e-4
        AdamW weight decay of the heads.
    patience : int, default 6
        Epochs without a better val score before training stops.
    class_weight : {"none", "sqrt", "balanced"}, default "none"
        Loss weights per class.
    label_smoothing : float, default 0.1
        Label smoothing of the multi-class losses.
    val_fraction : float, default 0.2
        Validation share of the stratified split (copies of a photo stay on one side).
    refit : bool, default False
        Frozen backbones: once each head set has chosen its epochs on the val split, train it
        again on train + val for that many epochs. ``val_proba_`` keeps the scores of the heads
        before it, ``refit_`` records epochs and rows, ``split_`` lists every row as trained on.
    refit_epochs : int, optional
        How the refit trains. ``None``: each head set starts again from its initialisation and
        runs the epochs it chose on val (as costly as the fit). An int ``n``: a warm refit,
        each set trains on from its fitted weights (scaler kept) for ``n`` epochs of a
        one-cycle schedule peaking at ``refit_lr_factor * lr``: a fraction of the cost, for
        part of the refit's gain (docs/demo.md, "The quick schedule").
    refit_lr_factor : float, default 0.25
        Peak learning rate of a warm refit as a share of ``lr`` (lower than the fit's, so the
        trained weights are refined rather than thrown away).
    seed : int, default 0
        Seed of the split, initialisation and batch order.
    precision : {"auto", "bf16", "fp32"}, default "auto"
        Training and inference precision (``"auto"``: bf16 where the CPU has it); recorded in
        the model, so it tags as it was trained.
    """

    freeze: str = "all"
    finetune_epochs: int | None = None
    finetune_lr: float = 5e-4
    epochs: int = 25
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 6
    class_weight: str = "none"
    label_smoothing: float = 0.1
    val_fraction: float = 0.2
    refit: bool = False
    refit_epochs: int | None = None
    refit_lr_factor: float = 0.25
    seed: int = 0
    precision: str = "auto"

    def validate(self) -> None:
        """One-line errors naming the option (``training.epochs must be >= 1, not 0``)."""
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1, not {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"training.lr must be > 0, not {self.lr}")
        if self.class_weight not in CLASS_WEIGHTINGS:
            raise ValueError(
                f"training.class_weight must be one of {CLASS_WEIGHTINGS}, "
                f"not {self.class_weight!r}"
            )
        if self.finetune_epochs is not None and self.finetune_epochs < 1:
            raise ValueError(
                "training.finetune_epochs must be >= 1 (or None for min(epochs, 5)), "
                f"not {self.finetune_epochs}"
            )
        if not self.finetune_lr > 0:
            raise ValueError(f"training.finetune_lr must be > 0, not {self.finetune_lr}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"training.val_fraction must be in (0, 1), not {self.val_fraction}")
        if not isinstance(self.refit, bool):
            raise ValueError(f"training.refit must be True or False, not {self.refit!r}")
        if self.refit and self.freeze != "all":
            raise ValueError(
                f"training.refit=True retrains the heads on frozen features; with "
                f"training.freeze={self.freeze!r} the fine-tuned backbone would need its own "
                "refit. Use freeze='all' or refit=False."
            )
        self._validate_warm_refit()

    def _validate_warm_refit(self) -> None:
        n, factor = self.refit_epochs, self.refit_lr_factor
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ValueError(
                "training.refit_epochs must be None (refit from scratch) or an int >= 1 "
                f"(epochs of a warm refit), not {n!r}"
            )
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
            raise ValueError(
                "training.refit_lr_factor must be a number > 0 (the warm refit's peak lr as a "
                f"share of lr), not {factor!r}"
            )

    @property
    def warm_refit(self) -> bool:
        """Whether the refit trains on from the fitted weights (``refit_epochs`` set)."""
        return self.refit_epochs is not None

    def warm_refit_config(self) -> TrainConfig:
        """The settings a warm refit trains with: ``refit_epochs`` epochs of the one-cycle
        schedule at ``refit_lr_factor`` of the peak rate, everything else as the fit."""
        if not self.warm_refit:
            raise ValueError("training.refit_epochs is None: the refit runs from scratch")
        return replace(self, epochs=self.refit_epochs, lr=self.lr * self.refit_lr_factor)

    def loop_record(self) -> dict:
        """The fields ``config.json`` records under ``training`` (the loop's settings)."""
        names = ("epochs", "batch_size", "lr", "weight_decay", "patience", "class_weight",
                 "label_smoothing", "seed", "precision")  # fmt: skip
        return {name: getattr(self, name) for name in names}


@dataclass
class History:
    """Per-epoch losses, the best epoch and wall time."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_score: list[float] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def one_cycle(
    opt: torch.optim.Optimizer, max_lr: float | list[float], total_steps: int
) -> torch.optim.lr_scheduler.OneCycleLR:
    """One-cycle schedule, 10 % warm-up. OneCycleLR divides by ``pct_start * total_steps - 1``,
    so a warm-up of exactly one step (10 steps in all, e.g. 10 epochs of one batch) would
    divide by zero: that case warms up for 1.5 steps instead."""
    pct_start = 0.1 if total_steps != 10 else 0.15
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start
    )


def head_optimiser(
    params, config: TrainConfig, n_rows: int, *, fused: bool = False
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.OneCycleLR]:
    """AdamW and the one-cycle schedule over ``config.epochs`` epochs of ``n_rows`` rows in
    batches of ``config.batch_size``: how every head trainer optimises (``fused``: one kernel
    for all parameters, for the batched trainer's few large tensors)."""
    kind = {"fused": True} if fused else {"foreach": True}
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **kind)
    steps_per_epoch = max(1, math.ceil(n_rows / config.batch_size))
    return opt, one_cycle(opt, config.lr, config.epochs * steps_per_epoch)


def targets_to_tensors(targets: Mapping[str, np.ndarray], rows: np.ndarray) -> dict:
    return {
        k: torch.as_tensor(v[rows], dtype=torch.long if v.ndim == 1 else torch.float32)
        for k, v in targets.items()
    }


def _batch_loss(
    outputs: Mapping[str, torch.Tensor],
    batch_targets: Mapping[str, torch.Tensor],
    tasks: Sequence[Task],
    weights: Mapping[str, torch.Tensor | None],
    label_smoothing: float,
) -> torch.Tensor:
    losses = []
    for task in tasks:
        loss = task_loss(
            task,
            outputs[task.name],
            batch_targets[task.name],
            weights[task.name],
            label_smoothing if task.kind == "multiclass" else 0.0,
        )
        if loss is not None:
            losses.append(loss)
    return torch.stack(losses).sum() if losses else torch.zeros((), requires_grad=True)


def validation_score(outputs, targets, tasks: Sequence[Task]) -> float:
    """Mean over tasks of accuracy (multi-class) or label-wise F1 (multi-label): what early
    stopping watches (tracks the F1 we report better than the loss does)."""
    scores = []
    for task in tasks:
        logits, y = outputs[task.name], targets[task.name]
        if task.kind == "multiclass":
            mask = y >= 0
            if mask.any():
                scores.append(float((logits[mask].argmax(1) == y[mask]).float().mean()))
        else:
            mask = ~(y < 0).all(1)
            if mask.any():
                pred, true = logits[mask] > 0, y[mask] > 0.5
                tp = float((pred & true).sum())
                scores.append(2 * tp / max(float(pred.sum() + true.sum()), 1.0))
    return sum(scores) / max(len(scores), 1)


def fit_heads(
    heads: nn.Module,
    features: np.ndarray,
    targets: Mapping[str, np.ndarray],
    tasks: Sequence[Task],
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    config: TrainConfig,
    progress: bool = True,
    on_epoch: Callable[[int, float, float], None] | None = None,
    run_epochs: int | None = None,
) -> History:
    """Train ``heads`` on precomputed features with AdamW + one-cycle schedule; keep the epoch
    with the best validation score (:func:`validation_score`); stop after ``patience`` epochs
    without improvement.

    ``run_epochs`` instead trains exactly that many epochs of the ``config.epochs`` schedule
    and keeps the last: a refit on every labelled row, with the epoch count chosen on val.
    """
    config.validate()
    if run_epochs is not None and not 1 <= run_epochs <= config.epochs:
        raise ValueError(f"run_epochs must be in [1, epochs={config.epochs}], not {run_epochs}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    x_all = torch.as_tensor(features, dtype=torch.float32)
    weights = {
        t.name: class_weights(t, targets[t.name][train_rows], config.class_weight) for t in tasks
    }
    opt, sched = head_optimiser(heads.parameters(), config, len(train_rows))
    device = torch.device("cpu")
    precision = runtime.resolve_precision(config.precision, device)
    history = History()
    best_state, best = None, -math.inf
    val_t = targets_to_tensors(targets, val_rows) if len(val_rows) else None
    start = time.perf_counter()
    n_epochs = config.epochs if run_epochs is None else run_epochs
    with bar("training heads", n_epochs, enabled=progress) as pbar:
        for epoch in range(n_epochs):
            heads.train()
            order = rng.permutation(train_rows)
            total, n = 0.0, 0
            for s in range(0, len(order), config.batch_size):
                rows = order[s : s + config.batch_size]
                with runtime.autocast(precision, device):
                    out = heads(x_all[rows])
                loss = _batch_loss(
                    out, targets_to_tensors(targets, rows), tasks, weights, config.label_smoothing
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(rows)
                n += len(rows)
            history.train_loss.append(total / max(n, 1))
            val_loss, score = history.train_loss[-1], -history.train_loss[-1]
            if val_t is not None:
                heads.eval()
                with torch.no_grad():
                    out = heads(x_all[val_rows])
                    val_loss = float(_batch_loss(out, val_t, tasks, weights, 0.0))
                    score = validation_score(out, val_t, tasks)
            history.val_loss.append(val_loss)
            history.val_score.append(score)
            if run_epochs is not None:  # a refit keeps the last epoch: no snapshot needed
                best, history.best_epoch = score, epoch
            elif score > best + 1e-4:
                best, history.best_epoch = score, epoch
                best_state = copy.deepcopy(heads.state_dict())
            if val_t is None:  # nothing to score (a refit): the loss is what there is to show
                pbar.update(info=f"train loss {history.train_loss[-1]:.4f}")
            else:
                pbar.update(
                    info=f"val score {score:.4f} (best {best:.4f} @ {history.best_epoch + 1})"
                )
            pbar.advance()
            kill_point("train.epoch")
            if on_epoch:
                on_epoch(epoch, history.train_loss[-1], val_loss)
            if run_epochs is None and epoch - history.best_epoch >= config.patience:
                history.stopped_early = True
                break
    if best_state is not None:
        heads.load_state_dict(best_state)
    heads.eval()
    history.seconds = time.perf_counter() - start
    return history
