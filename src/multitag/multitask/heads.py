"""Per-task heads over pooled backbone features (hard parameter sharing)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from multitag.data.tasks import Task

HEAD_TYPES = ("linear", "mlp")


class Dropout(nn.Module):
    """Inverted dropout with a mask from ``torch.rand``: the maths of ``nn.Dropout``, faster
    on CPU, where torch's Bernoulli sampler is the slow part of head training. No parameters,
    so saved models are unaffected."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand_like(x) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class TaskHead(nn.Module):
    """``linear``: one affine map. ``mlp``: Linear -> GELU -> Dropout -> Linear."""

    def __init__(
        self, in_dim: int, n_out: int, kind: str = "mlp", hidden: int = 512, dropout: float = 0.2
    ) -> None:
        super().__init__()
        if kind not in HEAD_TYPES:
            raise ValueError(f"head must be one of {HEAD_TYPES}, not {kind!r}")
        if kind == "linear":  # dropout lives in the shared trunk / input (CPU dropout is costly)
            self.net = nn.Sequential(nn.Identity(), nn.Linear(in_dim, n_out))
        else:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, n_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiTaskHeads(nn.Module):
    """Standardise the shared feature vector, then one head per task.

    The standardisation statistics are buffers fitted on the training features
    (:meth:`fit_scaler`): stages of a CNN have very different activation scales. With
    ``mirror`` (:meth:`~multitag.vision.features.Encoder.mirror_index`), every feature is first
    averaged with its mirror-image feature, so the heads see a photo and its mirror image alike.
    """

    def __init__(
        self,
        in_dim: int,
        tasks: Sequence[Task],
        head: str = "mlp",
        hidden: int = 512,
        dropout: float = 0.2,
        input_dropout: float = 0.1,
        trunk: int = 0,
        mirror: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.task_names = [t.name for t in tasks]
        # a None buffer is not in the state dict: weight files saved without it still load
        index = None if mirror is None else torch.as_tensor(np.asarray(mirror), dtype=torch.long)
        self.register_buffer("mirror", index)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))
        self.input_dropout = Dropout(input_dropout) if input_dropout else nn.Identity()
        # optional shared hidden layer: hard sharing reaches into the head, 1/T of the compute
        self.trunk = (
            nn.Sequential(nn.Linear(in_dim, trunk), nn.GELU(), Dropout(dropout))
            if trunk
            else nn.Identity()
        )
        width = trunk or in_dim
        self.heads = nn.ModuleDict(
            {t.name: TaskHead(width, t.n_classes, head, hidden, dropout) for t in tasks}
        )

    @torch.no_grad()
    def fit_scaler(self, features: np.ndarray) -> None:
        """Set the per-dimension mean/std from training features."""
        x = self.symmetrise(torch.as_tensor(features, dtype=torch.float32))
        self.mean.copy_(x.mean(0))
        std = x.std(0)
        # near-constant dimensions (sparse histogram bins) must not blow up to huge values
        self.scale.copy_(std.clamp_min(0.1 * float(std.median()) + 1e-6))

    def symmetrise(self, features: torch.Tensor) -> torch.Tensor:
        """Each feature averaged with its mirror-image feature (as is without ``mirror``)."""
        if self.mirror is None:
            return features
        return (features + features[:, self.mirror]) / 2

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.symmetrise(features.float())
        x = self.trunk(self.input_dropout((x - self.mean) / self.scale))
        return {name: head(x) for name, head in self.heads.items()}


class AveragedHeadSets(nn.Module):
    """The average of several :class:`MultiTaskHeads` (head sets) fitted from different seeds
    on the same features (``HeadConfig(head_sets=n)``); not a model ensemble, which averages
    whole taggers (:class:`~multitag.tagger.ensemble.TaggerEnsemble`).

    The output of each task is the log of the members' mean probability (log-odds for
    multi-label tasks), so :func:`probabilities` of it is that mean: callers see one set of
    heads. What members cost and gain: BENCHMARKS.md, "Study targets at full size".
    """

    def __init__(self, members: Sequence[MultiTaskHeads], tasks: Sequence[Task]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"averaging needs at least 2 head sets, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.task_names = list(members[0].task_names)
        self.multilabel = [t.name for t in tasks if t.kind != "multiclass"]

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = [member(features) for member in self.members]
        logits = {}
        for name in self.task_names:
            stacked = torch.stack([out[name].float() for out in outputs])
            if name in self.multilabel:
                p = stacked.sigmoid().mean(0).clamp(1e-7, 1 - 1e-7)
                logits[name] = p.log() - (-p).log1p()
            else:
                logits[name] = stacked.softmax(-1).mean(0).clamp_min(1e-12).log()
        return logits


def probabilities(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """Softmax for multi-class tasks, sigmoid for multi-label ones."""
    return logits.softmax(-1) if task.kind == "multiclass" else logits.sigmoid()
