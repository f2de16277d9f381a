"""Several sets of linear heads trained at once, as one batched model.

Averaged head sets (:class:`~multitag.multitask.heads.AveragedHeadSets`) are n independent
trainings on the same cached features. :func:`fit_head_sets` runs them as one: each layer's
weights are stacked over the sets (``(n, in, out)``) and applied with one batched matmul, the
features are standardised once (not on every step), every task's head is one slice of a single
output layer, and the losses are computed for all sets together. Each set keeps its own
initialisation (the :class:`MultiTaskHeads` it is given), its own row order and dropout masks,
its own best epoch and its own early stopping; AdamW is element-wise, so stacking changes no
set's update. The trained weights are written back into the given :class:`MultiTaskHeads`, so
saved models are unchanged.

Supports linear task heads with or without a shared trunk (the tagger's default,
``head="linear"``); :func:`can_batch` says whether a set of heads qualifies.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from multitag.core import runtime
from multitag.core.faults import kill_point
from multitag.core.progress import bar
from multitag.data.tasks import Task
from multitag.multitask.heads import Dropout, MultiTaskHeads
from multitag.multitask.losses import class_weights
from multitag.training.loop import History, TrainConfig, head_optimiser, validation_score


def can_batch(heads: MultiTaskHeads) -> bool:
    """Whether :func:`fit_head_sets` can train these heads: linear task heads (each one
    affine map), after an optional ``Linear -> GELU -> Dropout`` trunk."""
    trunk_ok = isinstance(heads.trunk, nn.Identity) or (
        isinstance(heads.trunk, nn.Sequential)
        and len(heads.trunk) == 3
        and isinstance(heads.trunk[0], nn.Linear)
        and isinstance(heads.trunk[1], nn.GELU)
    )
    return trunk_ok and all(
        isinstance(h.net[0], nn.Identity) and len(h.net) == 2 for h in heads.heads.values()
    )


class MaskBank:
    """Dropout masks for batched training, drawn from a fixed bank of random rows.

    Drawing a fresh mask per element (``torch.rand``) is the slowest part of training heads
    on wide cached features on a CPU; a bank of ``size`` random keep-masks (already scaled by
    ``1 / (1 - p)``) drawn once, with each row of each batch taking a uniformly random one,
    costs an index and a multiply. Each sample still gets an independent mask each step, just
    from a finite (large) set of them."""

    def __init__(self, p: float, width: int, dtype: torch.dtype, size: int = 8192) -> None:
        self.p = p
        keep = torch.rand(size, width) >= p
        self.masks = keep.to(dtype) * (1.0 / (1.0 - p))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        pick = torch.randint(0, len(self.masks), x.shape[:-1])
        return x * self.masks[pick].to(x.dtype)


class BatchRows:
    """One training batch's rows of every set, gathered into buffers kept across steps, with
    the input dropout (a :class:`MaskBank`) applied in place.

    A batch of wide features is tens of MB; fresh tensors that size are mapped in from the
    system on every step (page faults), which costs more than the gather itself. Draws the
    same masks from the global torch RNG as ``bank(features[idx])`` would."""

    def __init__(self, features: torch.Tensor, rows: int, bank: MaskBank | None) -> None:
        self.features, self.bank = features, bank
        self.buffer = torch.empty((rows, features.shape[1]), dtype=features.dtype)
        self.masks = torch.empty_like(self.buffer) if bank is not None else None

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """``features[idx]`` (``idx``: ``(sets, batch)`` row numbers), input dropout applied."""
        flat = idx.reshape(-1)
        out = torch.index_select(self.features, 0, flat, out=self.buffer[: len(flat)])
        if self.bank is not None:
            pick = torch.randint(0, len(self.bank.masks), (len(flat),))
            out.mul_(torch.index_select(self.bank.masks, 0, pick, out=self.masks[: len(flat)]))
        return out.view(*idx.shape, -1)


class StackedHeads(nn.Module):
    """n :class:`MultiTaskHeads` of the same shape as stacked tensors: standardised features
    ``(n, batch, in)`` (or ``(batch, in)``, shared) -> concatenated task logits
    ``(n, batch, sum of classes)``. In training, dropout masks come from :class:`MaskBank`
    (:meth:`make_banks`)."""

    def __init__(self, members: Sequence[MultiTaskHeads]) -> None:
        super().__init__()
        first = members[0]
        if not all(can_batch(m) for m in members):
            raise ValueError("only linear task heads (head='linear') can be trained batched")
        self.task_names = list(first.task_names)
        self.p_input = first.input_dropout.p if isinstance(first.input_dropout, Dropout) else 0.0
        self.has_trunk = not isinstance(first.trunk, nn.Identity)
        self.p_trunk = first.trunk[2].p if self.has_trunk else 0.0
        self.banks: dict[str, MaskBank] = {}
        with torch.no_grad():
            if self.has_trunk:
                self.w1 = nn.Parameter(torch.stack([m.trunk[0].weight.t() for m in members]))
                self.b1 = nn.Parameter(torch.stack([m.trunk[0].bias[None] for m in members]))
            outs = [[m.heads[n].net[1] for n in self.task_names] for m in members]
            self.w2 = nn.Parameter(
                torch.stack([torch.cat([lin.weight for lin in o]).t() for o in outs]).contiguous()
            )
            self.b2 = nn.Parameter(
                torch.stack([torch.cat([lin.bias for lin in o])[None] for o in outs])
            )
        sizes = [lin.out_features for lin in outs[0]]
        self.slices = dict(zip(self.task_names, _slices(sizes)))

    def make_banks(self, dtype: torch.dtype) -> None:
        """Draw the dropout mask banks (from the global torch RNG)."""
        if self.p_input:
            self.banks["input"] = MaskBank(self.p_input, self.w1.shape[1] if self.has_trunk
                                           else self.w2.shape[1], dtype)  # fmt: skip
        if self.p_trunk:
            self.banks["trunk"] = MaskBank(self.p_trunk, self.w1.shape[2], dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of standardised features ``x``, input dropout already applied in training
        (:class:`BatchRows`)."""
        dropout = self.training and self.banks
        if x.dim() == 2:  # the same rows for every set (scoring)
            x = x.expand(len(self.w2), *x.shape)
        if self.has_trunk:
            x = F.gelu(torch.baddbmm(self.b1, x, self.w1))
            if dropout and "trunk" in self.banks:
                x = self.banks["trunk"](x)
        return torch.baddbmm(self.b2, x, self.w2)

    @torch.no_grad()
    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Set ``k``'s weights (copies)."""
        return {name: p[k].detach().clone() for name, p in self.named_parameters()}

    @torch.no_grad()
    def write_back(self, k: int, state: Mapping[str, torch.Tensor], member: MultiTaskHeads):
        """Copy set ``k``'s weights ``state`` (from :meth:`member_state`) into ``member``."""
        if self.has_trunk:
            member.trunk[0].weight.copy_(state["w1"].t())
            member.trunk[0].bias.copy_(state["b1"][0])
        for name, (start, stop) in self.slices.items():
            member.heads[name].net[1].weight.copy_(state["w2"][:, start:stop].t())
            member.heads[name].net[1].bias.copy_(state["b2"][0, start:stop])


def _slices(sizes: Sequence[int]) -> list[tuple[int, int]]:
    ends = np.cumsum(sizes).tolist()
    return [(e - s, e) for s, e in zip(sizes, ends)]


class _Targets:
    """Every task's targets as tensors over all rows, gathered per batch with one index."""

    def __init__(self, targets: Mapping[str, np.ndarray], tasks: Sequence[Task]) -> None:
        self.values = {
            t.name: torch.as_tensor(
                targets[t.name], dtype=torch.long if t.kind == "multiclass" else torch.float32
            )
            for t in tasks
        }

    def take(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: v[rows] for name, v in self.values.items()}


def _set_losses(
    logits: torch.Tensor,
    targets: Mapping[str, torch.Tensor],
    tasks: Sequence[Task],
    slices: Mapping[str, tuple[int, int]],
    weights: Mapping[str, torch.Tensor | None],
    label_smoothing: float,
) -> torch.Tensor:
    """Per set: the sum over tasks of the mean loss over that task's labelled rows (what
    :func:`multitag.training.loop.fit_heads` minimises for one set), shape ``(n,)``."""
    logits = logits.float()
    n = logits.shape[0]
    total = logits.new_zeros(n)
    for task in tasks:
        start, stop = slices[task.name]
        z, y, w = logits[..., start:stop], targets[task.name], weights[task.name]
        if task.kind == "multiclass":
            y = y.expand(n, -1) if y.dim() == 1 else y  # rows shared by every set: expand
            labelled = y >= 0
            loss = F.cross_entropy(
                z.reshape(-1, z.shape[-1]), y.reshape(-1), weight=w, ignore_index=-1,
                label_smoothing=label_smoothing, reduction="none",
            ).view_as(y)  # fmt: skip
            denom = (w[y.clamp_min(0)] * labelled) if w is not None else labelled.float()
            total = total + loss.sum(1) / denom.sum(1).clamp_min(1e-12)
        else:
            y = y.expand(n, *y.shape) if y.dim() == 2 else y
            labelled = ~(y < 0).all(-1)
            loss = F.binary_cross_entropy_with_logits(z, y, pos_weight=w, reduction="none")
            count = labelled.sum(1).clamp_min(1) * z.shape[-1]
            total = total + (loss * labelled[..., None]).sum((1, 2)) / count
    return total


def fit_head_sets(
    members: Sequence[MultiTaskHeads],
    features: np.ndarray,
    targets: Mapping[str, np.ndarray],
    tasks: Sequence[Task],
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    config: TrainConfig,
    seeds: Sequence[int],
    *,
    run_epochs: Sequence[int] | None = None,
    warm_start: bool = False,
    progress: bool = True,
) -> list[History]:
    """Train ``members`` (untrained :class:`MultiTaskHeads`, one per seed) together on
    precomputed ``features``, as :func:`multitag.training.loop.fit_heads` trains one: AdamW with the
    one-cycle schedule, each set keeping its epoch with the best validation score and stopping
    after ``config.patience`` epochs without improvement (training ends when every set has).
    ``run_epochs`` (one count per set) instead trains each set exactly that many epochs of the
    schedule and keeps its last: the refit on every labelled row.

    Every member's scaler is fitted on ``train_rows``, unless ``warm_start``: then the members
    are trained ones and go on from their weights and their (shared) scaler, so that the
    weights still see the inputs they were trained on (a warm refit). Returns one
    :class:`History` per set; ``seconds`` is each set's equal share of the wall time.
    """
    config.validate()
    n_sets = len(members)
    if n_sets < 1 or len(seeds) != n_sets:
        raise ValueError(f"need one seed per head set: {n_sets} sets, {len(seeds)} seeds")
    if run_epochs is not None:
        run_epochs = [int(e) for e in run_epochs]
        if len(run_epochs) != n_sets or not all(1 <= e <= config.epochs for e in run_epochs):
            raise ValueError(
                f"run_epochs: one count in [1, epochs={config.epochs}] per head set "
                f"({n_sets}), not {run_epochs}"
            )
    start = time.perf_counter()
    torch.manual_seed(seeds[0])  # the dropout masks
    if warm_start:
        _check_shared_scaler(members)
    else:
        _fit_shared_scaler(members, features[train_rows])
    device = torch.device("cpu")
    precision = runtime.resolve_precision(config.precision, device)
    x = _standardised(features, members[0], torch.bfloat16 if precision == "bf16" else None)
    model = StackedHeads(members).train()
    model.make_banks(x.dtype)
    y_all = _Targets(targets, tasks)
    weights = {
        t.name: class_weights(t, targets[t.name][train_rows], config.class_weight) for t in tasks
    }
    opt, sched = head_optimiser(model.parameters(), config, len(train_rows), fused=True)
    rngs = [np.random.default_rng(s) for s in seeds]
    histories = [History() for _ in range(n_sets)]
    best = [-math.inf] * n_sets
    kept: list[dict | None] = [None] * n_sets
    val_idx = torch.as_tensor(val_rows, dtype=torch.long)
    val_y = y_all.take(val_idx) if len(val_rows) else None
    n_epochs = config.epochs if run_epochs is None else max(run_epochs)
    batches = BatchRows(x, n_sets * config.batch_size, model.banks.get("input"))
    with bar("training heads", n_epochs, enabled=progress) as pbar:
        for epoch in range(n_epochs):
            model.train()
            order = torch.as_tensor(np.stack([r.permutation(train_rows) for r in rngs]))
            total = torch.zeros(n_sets)
            for s in range(0, order.shape[1], config.batch_size):
                idx = order[:, s : s + config.batch_size]
                with runtime.autocast(precision, device):
                    logits = model(batches.take(idx))
                losses = _set_losses(
                    logits, y_all.take(idx), tasks, model.slices, weights, config.label_smoothing
                )
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                opt.step()
                sched.step()
                total += losses.detach() * idx.shape[1]
            train_loss = (total / max(order.shape[1], 1)).tolist()
            scores, val_losses = train_loss, train_loss
            if val_y is not None:
                scores, val_losses = _score(model, x[val_idx], val_y, tasks, weights, precision)
            for k, h in enumerate(histories):
                if h.stopped_early:  # this set's own training would have ended
                    continue
                h.train_loss.append(train_loss[k])
                h.val_loss.append(val_losses[k])
                h.val_score.append(scores[k] if val_y is not None else -train_loss[k])
                if run_epochs is not None:
                    if epoch + 1 == run_epochs[k]:
                        best[k], h.best_epoch = h.val_score[-1], epoch
                        kept[k] = model.member_state(k)
                        h.stopped_early = epoch + 1 < n_epochs
                    continue
                if h.val_score[-1] > best[k] + 1e-4:
                    best[k], h.best_epoch = h.val_score[-1], epoch
                    kept[k] = model.member_state(k)
                if epoch - h.best_epoch >= config.patience:
                    h.stopped_early = True
            pbar.update(info=_progress_info(histories, best, val_y is not None))
            pbar.advance()
            kill_point("train.epoch")
            if all(h.stopped_early for h in histories):
                break
    if run_epochs is not None:  # each ran its count: none stopped early
        for h in histories:
            h.stopped_early = False
    for k, member in enumerate(members):
        model.write_back(k, kept[k] if kept[k] is not None else model.member_state(k), member)
        member.eval()
    seconds = time.perf_counter() - start
    for h in histories:
        h.seconds = seconds / n_sets
    return histories


def _fit_shared_scaler(members: Sequence[MultiTaskHeads], features: np.ndarray) -> None:
    """Fit the first member's scaler on ``features`` and give every member a copy (the
    features are standardised once for all sets)."""
    members[0].fit_scaler(features)
    for m in members[1:]:
        m.mean.copy_(members[0].mean)
        m.scale.copy_(members[0].scale)


def _check_shared_scaler(members: Sequence[MultiTaskHeads]) -> None:
    """A warm start standardises once with the first member's scaler: every member must
    have been trained with that same one."""
    first = members[0]
    for k, m in enumerate(members[1:], 1):
        if not (torch.equal(m.mean, first.mean) and torch.equal(m.scale, first.scale)):
            raise ValueError(
                f"warm_start: head set {k} has another scaler than set 0; a warm start goes "
                "on from sets trained together (one shared scaler)"
            )


def _standardised(features: np.ndarray, heads: MultiTaskHeads, dtype) -> torch.Tensor:
    """``(features - mean) / scale`` once for every row, in ``dtype`` (bf16 halves what each
    step reads); in chunks, so no float64 or second full-size float32 copy is made."""
    n, d = features.shape
    out = torch.empty((n, d), dtype=dtype or torch.float32)
    for s in range(0, n, 8192):
        chunk = torch.as_tensor(np.asarray(features[s : s + 8192], dtype=np.float32))
        out[s : s + 8192] = (chunk - heads.mean) / heads.scale
    return out


@torch.no_grad()
def _score(model: StackedHeads, x: torch.Tensor, y, tasks, weights, precision):
    """Each set's validation score (:func:`multitag.training.loop.validation_score`) and loss."""
    model.eval()
    with runtime.autocast(precision, torch.device("cpu")):
        logits = model(x)
    logits = logits.float()
    losses = _set_losses(logits, y, tasks, model.slices, weights, 0.0).tolist()
    scores = []
    for k in range(logits.shape[0]):
        out = {t.name: logits[k, :, slice(*model.slices[t.name])] for t in tasks}
        scores.append(validation_score(out, y, tasks))
    return scores, losses


def _progress_info(histories: Sequence[History], best: Sequence[float], scored: bool) -> str:
    if not scored:
        return "train loss " + ", ".join(f"{h.train_loss[-1]:.4f}" for h in histories)
    return "best val score " + ", ".join(
        f"{b:.4f} @ {h.best_epoch + 1}" for b, h in zip(best, histories)
    )
