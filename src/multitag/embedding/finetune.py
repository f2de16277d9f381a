"""Fine-tuning an embedder above a freeze point, on cached prefix activations.

The same recipe as the tagger's (:mod:`multitag.training.finetune`): the frozen prefix runs once
per image (:func:`~multitag.vision.extraction.extract_prefix`, cached on disk), each step
trains only the upper stages (:class:`~multitag.multitask.sharing.UpperPart`, batch norm
frozen) and the embedding layer, under bf16 autocast and channels_last, AdamW with a cosine
schedule after a linear warm-up, flip augmentation of the activation maps. Batches are
class-balanced like the fast path's, so every batch holds positives for the metric loss.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from multitag.core import runtime
from multitag.core.progress import bar
from multitag.embedding.losses import MetricObjective
from multitag.multitask.sharing import UpperPart, keep_batchnorm_frozen
from multitag.training.finetune import StageData, _lr_factor
from multitag.vision.features import Encoder


class UpperEmbedding(nn.Module):
    """Upper stages of ``encoder`` above ``block`` + an embedding head: (activations, prefix
    features) -> L2-normalised embedding. Trains the encoder's own modules in place."""

    def __init__(self, encoder: Encoder, block: int, head: nn.Module) -> None:
        super().__init__()
        self.upper = UpperPart(encoder, block)
        self.head = head
        self._assemble = encoder.assemble  # layout only; keeps the encoder out of the tree

    def features(self, activations: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        pooled, final = self.upper(activations)
        return self._assemble(prefix, pooled, final)

    def forward(self, activations: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(activations, prefix).float())

    def train(self, mode: bool = True) -> UpperEmbedding:
        """Batch-norm layers keep their pretrained statistics (small CPU batches)."""
        super().train(mode)
        return keep_batchnorm_frozen(self)


def train_upper_embedding(
    model: UpperEmbedding,
    data: StageData,
    labels: np.ndarray,
    batches: Callable[[np.random.Generator], list[np.ndarray]],
    objective: MetricObjective,
    *,
    coarse: np.ndarray | None = None,
    epochs: int,
    lr: float,
    head_lr: float,
    precision: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` on ``objective``; ``labels[i]`` (``coarse[i]``: its coarse class, when
    the objective has a coarse term) is the class of ``data`` row ``i``.

    ``batches(rng)`` yields one epoch of class-balanced row batches. Returns the mean loss
    per epoch; the model ends in eval mode with its upper stages frozen again.
    """
    device = torch.device("cpu")
    precision = runtime.resolve_precision(precision, device)
    upper = list(model.upper.parameters())
    head = list(model.head.parameters())
    for p in upper + head:
        p.requires_grad_(True)
    groups = [{"params": upper, "lr": lr}, {"params": head, "lr": head_lr}]
    if any(True for _ in objective.parameters()):
        groups.append({"params": list(objective.parameters()), "lr": head_lr * 10})
    base_lrs = [g["lr"] for g in groups]
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    rng = np.random.default_rng(seed + 1)
    plan = [batches(rng) for _ in range(epochs)]
    total_steps = sum(len(p) for p in plan)
    warmup = max(1, int(0.1 * total_steps))
    y_all = torch.as_tensor(labels, dtype=torch.long)
    yc_all = torch.as_tensor(coarse, dtype=torch.long) if coarse is not None else None
    model.to(memory_format=torch.channels_last)
    history: list[float] = []
    step = 0
    with bar("fine-tuning embedding", total_steps, progress) as pbar:
        for epoch in range(epochs):
            gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
            model.train()
            total = 0.0
            for rows in plan[epoch]:
                factor = _lr_factor(step, total_steps, warmup)
                for g, base in zip(opt.param_groups, base_lrs):
                    g["lr"] = base * factor
                acts, prefix = data.batch(rows, gen)
                with runtime.autocast(precision, device):
                    feats = model.features(acts, prefix)
                emb = model.head(feats.float())
                value = objective(emb, y_all[rows], yc_all[rows] if yc_all is not None else None)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                total += float(value.detach())
                step += 1
                pbar.advance()
            history.append(total / max(1, len(plan[epoch])))
            pbar.update(info=f"epoch {epoch + 1} loss {history[-1]:.4f}")
    for p in upper + head:
        p.requires_grad_(False)
    model.eval()
    return history
