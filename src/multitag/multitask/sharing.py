"""Parameter-sharing strategies between task networks above a frozen backbone prefix.

Every strategy is an ``nn.Module`` with one interface: ``forward(activations, prefix)``
takes the cached output of the frozen prefix (:meth:`Encoder.forward_until`) and returns
``{task: logits}``; ``penalty()`` is an extra loss term (soft sharing), ``shared_parameters()``
the parameters several tasks pull on (what PCGrad projects), ``report()`` what was learned.

* ``hard``: one upper part, one head per task (the classic multi-task network).
* ``soft``: one copy ("column") of the upper part per task group, an L2 penalty ties
  corresponding parameters together.
* ``cross_stitch``: per-group columns joined at every stage boundary by learnable
  cross-stitch units (Misra et al. 2016): each column's next input is a learned mix of all
  columns.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from multitag.multitask.heads import MultiTaskHeads
from multitag.vision.features import Encoder, pool_stage

STRATEGIES = ("hard", "soft", "cross_stitch")


class UpperPart(nn.Module):
    """The trainable part of a staged backbone above ``block``: the remaining blocks split
    into segments at the encoder's tapped stage ends, then ``conv_head`` + ``bn2``.

    Built from the encoder's own modules (no copy): hard sharing trains them in place."""

    def __init__(self, encoder: Encoder, block: int) -> None:
        super().__init__()
        m = encoder.model
        n = len(m.blocks)
        ends = sorted(i for i in encoder._take_blocks if i > block)
        if not ends or ends[-1] != n - 1:
            ends.append(n - 1)
        segments, taps, grids, start = [], [], [], block + 1
        for end in ends:
            segments.append(nn.Sequential(*[m.blocks[i] for i in range(start, end + 1)]))
            taps.append(end in encoder._take_blocks and end > block)
            grids.append(taps[-1] and encoder._take_blocks[end] in encoder.grid_stages)
            start = end + 1
        self.segments = nn.ModuleList(segments)
        self.taps = taps
        self.grids = grids
        self.head = nn.Sequential(m.conv_head, m.bn2)

    def run_segment(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Segment ``i``; the last one includes the head conv. Returns (output, pooled taps)."""
        x = self.segments[i](x)
        pooled = pool_stage(x, self.grids[i]) if self.taps[i] else []
        if i == len(self.segments) - 1:
            x = self.head(x)
        return x, pooled

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        pooled: list[torch.Tensor] = []
        for i in range(len(self.segments)):
            x, p = self.run_segment(i, x)
            pooled.extend(p)
        return pooled, x.float().mean((2, 3))


def _head_logits(heads: MultiTaskHeads, features: torch.Tensor, names: Sequence[str]) -> dict:
    x = heads.trunk(heads.input_dropout((features.float() - heads.mean) / heads.scale))
    return {name: heads.heads[name](x) for name in names}


def keep_batchnorm_frozen(module: nn.Module) -> nn.Module:
    """Put every batch-norm layer of ``module`` back in eval mode (pretrained statistics);
    call after ``module.train()``: CPU batches are too small to re-estimate them."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return module


class Sharing(nn.Module):
    """Common interface; subclasses build ``columns`` (upper parts) and route tasks to them."""

    kind = "base"

    def __init__(self, encoder: Encoder, block: int, heads: MultiTaskHeads) -> None:
        super().__init__()
        self.block = block
        self.heads = heads
        self.task_names = list(heads.task_names)
        # assemble() only needs the encoder's layout settings; keep it out of the module tree
        self._assemble = encoder.assemble

    def penalty(self) -> torch.Tensor:
        return torch.zeros(())

    def shared_parameters(self) -> list[nn.Parameter]:
        return []

    def column_parameters(self) -> list[nn.Parameter]:
        """Trainable backbone parameters (excludes the heads)."""
        heads = {id(p) for p in self.heads.parameters()}
        return [p for p in self.parameters() if id(p) not in heads]

    def report(self) -> dict:
        return {}

    def config(self) -> dict:
        """What :func:`build_sharing` needs to rebuild this module (JSON)."""
        return {"kind": self.kind, "block": self.block}

    def train(self, mode: bool = True) -> Sharing:
        """Batch-norm layers keep their pretrained statistics (small CPU batches)."""
        super().train(mode)
        return keep_batchnorm_frozen(self)


class HardSharing(Sharing):
    """One upper part for every task; one head per task."""

    kind = "hard"

    def __init__(self, encoder: Encoder, block: int, heads: MultiTaskHeads) -> None:
        super().__init__(encoder, block, heads)
        self.upper = UpperPart(encoder, block)

    def features(self, activations: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        pooled, final = self.upper(activations)
        return self._assemble(prefix, pooled, final)

    def forward(self, activations: torch.Tensor, prefix: torch.Tensor) -> dict:
        return _head_logits(self.heads, self.features(activations, prefix), self.task_names)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.upper.parameters())


def _groups(task_names: Sequence[str], groups: Sequence[Sequence[str]] | None) -> list[list[str]]:
    if not groups:
        return [[t] for t in task_names]
    groups = [list(g) for g in groups]
    flat = [t for g in groups for t in g]
    unknown = sorted(set(flat) - set(task_names))
    if unknown:
        raise ValueError(f"sharing groups name unknown tasks {unknown}; tasks are {task_names}")
    missing = [t for t in task_names if t not in flat]
    if len(set(flat)) != len(flat):
        raise ValueError(f"sharing groups list a task twice: {groups}")
    return groups + [[t] for t in missing]


class _Columns(Sharing):
    """One copy of the upper part per task group."""

    def __init__(
        self,
        encoder: Encoder,
        block: int,
        heads: MultiTaskHeads,
        groups: Sequence[Sequence[str]] | None = None,
    ) -> None:
        super().__init__(encoder, block, heads)
        self.groups = _groups(self.task_names, groups)
        base = UpperPart(encoder, block)
        self.columns = nn.ModuleList([copy.deepcopy(base) for _ in self.groups])

    def _logits(self, prefix: torch.Tensor, outputs) -> dict:
        logits = {}
        for group, (pooled, final) in zip(self.groups, outputs):
            logits.update(_head_logits(self.heads, self._assemble(prefix, pooled, final), group))
        return logits

    def shared_parameters(self) -> list[nn.Parameter]:
        return self.column_parameters()

    def config(self) -> dict:
        return {**super().config(), "groups": self.groups}


class SoftSharing(_Columns):
    """Columns per task group, tied by ``weight * sum ||theta_c - mean_c theta||^2``."""

    kind = "soft"

    def __init__(self, encoder, block, heads, groups=None, weight: float = 1e-2) -> None:
        super().__init__(encoder, block, heads, groups)
        self.weight = float(weight)

    def forward(self, activations: torch.Tensor, prefix: torch.Tensor) -> dict:
        return self._logits(prefix, [col(activations) for col in self.columns])

    def penalty(self) -> torch.Tensor:
        if len(self.columns) < 2 or not self.weight:
            return torch.zeros(())
        total = torch.zeros(())
        for params in zip(*(col.parameters() for col in self.columns)):
            stack = torch.stack([p.float() for p in params])
            total = total + ((stack - stack.mean(0, keepdim=True)) ** 2).sum()
        return self.weight * total

    def report(self) -> dict:
        with torch.no_grad():
            distance = float(self.penalty() / self.weight) if self.weight else 0.0
        return {"groups": self.groups, "weight": self.weight, "sq_distance_to_mean": distance}

    def config(self) -> dict:
        return {**super().config(), "weight": self.weight}


class CrossStitch(_Columns):
    """Columns per task group joined after every segment by a cross-stitch unit: a learned
    ``G x G`` matrix (initialised to ``keep`` on the diagonal) mixing the columns' maps."""

    kind = "cross_stitch"

    def __init__(self, encoder, block, heads, groups=None, keep: float = 0.9) -> None:
        super().__init__(encoder, block, heads, groups)
        g = len(self.groups)
        other = (1.0 - keep) / (g - 1) if g > 1 else 0.0
        init = torch.full((g, g), other) + torch.eye(g) * (keep - other)
        n_units = len(self.columns[0].segments)
        self.stitch = nn.Parameter(init.repeat(n_units, 1, 1))

    def forward(self, activations: torch.Tensor, prefix: torch.Tensor) -> dict:
        xs = [activations] * len(self.columns)
        pooled: list[list[torch.Tensor]] = [[] for _ in self.columns]
        for i in range(len(self.columns[0].segments)):
            outs = []
            for c, col in enumerate(self.columns):
                x, p = col.run_segment(i, xs[c])
                outs.append(x)
                pooled[c].extend(p)
            stacked = torch.stack(outs)  # (G, N, C, H, W)
            mix = self.stitch[i].to(stacked.dtype)
            xs = list(torch.einsum("gh,hnchw->gnchw", mix, stacked).unbind(0))
        return self._logits(prefix, [(p, x.float().mean((2, 3))) for p, x in zip(pooled, xs)])

    def report(self) -> dict:
        return {"groups": self.groups, "stitch": self.stitch.detach().tolist()}


def build_sharing(
    kind: str,
    encoder: Encoder,
    block: int,
    heads: MultiTaskHeads,
    groups: Sequence[Sequence[str]] | None = None,
    weight: float = 1e-2,
) -> Sharing:
    """The strategy ``kind`` (``hard``, ``soft``, ``cross_stitch``) above ``blocks[block]``."""
    if kind == "hard":
        return HardSharing(encoder, block, heads)
    if kind == "soft":
        return SoftSharing(encoder, block, heads, groups, weight)
    if kind == "cross_stitch":
        return CrossStitch(encoder, block, heads, groups)
    raise ValueError(f"sharing must be one of {STRATEGIES}, not {kind!r}")


class SharedTaggerNet(nn.Module):
    """Encoder prefix + sharing strategy: the same interface as ``TaggerNet`` (uint8 images
    -> per-task probabilities, ImageNet logits, features of the first column)."""

    def __init__(self, encoder: Encoder, sharing: Sharing, tasks) -> None:
        super().__init__()
        self.encoder = encoder
        self.sharing = sharing
        self.tasks = list(tasks)

    def sharing_config(self) -> dict:
        return self.sharing.config()

    def forward(self, images: torch.Tensor):
        from multitag.multitask.heads import probabilities

        acts, prefix = self.encoder.forward_until(images, self.sharing.block)
        logits = self.sharing(acts, prefix)
        probs = {t.name: probabilities(t, logits[t.name].float()) for t in self.tasks}
        features = self.features(acts, prefix)
        return probs, None, features

    def features(self, acts: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        s = self.sharing
        if isinstance(s, HardSharing):
            return s.features(acts, prefix)
        pooled, final = s.columns[0](acts)
        return self.encoder.assemble(prefix, pooled, final)


def tagger_net(encoder: Encoder, sharing: Sharing, tasks) -> nn.Module:
    """The network a ``MultiTaskTagger`` saves and predicts with: hard sharing trains the
    encoder's own blocks, so it is a plain ``TaggerNet``; soft / cross-stitch need
    :class:`SharedTaggerNet` (saved with a ``sharing`` section in ``config.json``)."""
    if isinstance(sharing, HardSharing):
        from multitag.tagger.estimator import TaggerNet

        return TaggerNet(encoder, sharing.heads, tasks)
    return SharedTaggerNet(encoder, sharing, tasks)
