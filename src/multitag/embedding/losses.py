"""Metric-learning losses by name: each entry builds a pytorch-metric-learning loss + miner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pytorch_metric_learning import distances, losses, miners
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn


class QuadrupletLoss(nn.Module):
    """Two-negative (quartet) loss: triplet term + a term pushing apart two other negatives.

    For anchor ``a``, positive ``p`` and negatives ``n1``, ``n2`` of two different classes
    (both unlike ``a``): ``[d(a,p) - d(a,n1) + m1]+ + [d(a,p) - d(n1,n2) + m2]+`` (Chen et al.
    2017), on cosine distance of L2-normalised embeddings. Triplets come from ``miner`` when
    given (semi-hard by default), else every valid triplet in the batch.
    """

    def __init__(self, margin: float = 0.2, margin2: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        self.margin, self.margin2 = margin, margin2
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, triplets=None) -> torch.Tensor:
        a, p, n1 = triplets if triplets is not None else lmu.get_all_triplets_indices(labels)
        if len(a) == 0:
            return emb.sum() * 0.0
        dist = 1.0 - emb @ emb.T
        # second negative: a random row whose label differs from both the anchor's and n1's
        valid = (labels[None, :] != labels[a][:, None]) & (labels[None, :] != labels[n1][:, None])
        noise = torch.rand(valid.shape, generator=self.generator).to(emb.device)
        n2 = torch.where(valid, noise, torch.full_like(noise, -1.0)).argmax(1)
        has_n2 = valid.any(1)
        ap = dist[a, p]
        first = torch.relu(ap - dist[a, n1] + self.margin)
        second = torch.relu(ap - dist[n1, n2] + self.margin2) * has_n2
        return (first + second).mean()


@dataclass(frozen=True)
class LossSpec:
    """How to build one named loss: ``build(n_classes, dim)`` and its default miner."""

    build: Callable[[int, int], nn.Module]
    miner: str | None
    has_params: bool = False  # proxy / class-weight losses carry their own parameters
    help: str = ""


def _cos() -> distances.CosineSimilarity:
    return distances.CosineSimilarity()


LOSSES: dict[str, LossSpec] = {
    "contrastive": LossSpec(
        lambda c, d: losses.ContrastiveLoss(pos_margin=1.0, neg_margin=0.5, distance=_cos()),
        "pair",
        help="siamese pairs: pull positives, push negatives below a margin",
    ),
    "triplet": LossSpec(
        lambda c, d: losses.TripletMarginLoss(margin=0.2, distance=_cos()),
        "semihard",
        help="triplet margin loss (miner semihard or hard)",
    ),
    "quadruplet": LossSpec(
        lambda c, d: QuadrupletLoss(),
        "semihard",
        help="two-negative quartet loss (triplet + negative-pair term)",
    ),
    "multi_similarity": LossSpec(
        lambda c, d: losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5),
        "multi_similarity",
        help="multi-similarity loss with its own miner",
    ),
    "arcface": LossSpec(
        lambda c, d: losses.ArcFaceLoss(c, d, margin=28.6, scale=64),
        None,
        has_params=True,
        help="additive angular margin over class weights",
    ),
    "proxy_anchor": LossSpec(
        lambda c, d: losses.ProxyAnchorLoss(c, d, margin=0.1, alpha=32),
        None,
        has_params=True,
        help="one learned proxy per class",
    ),
}

MINERS: dict[str, Callable[[], nn.Module | None]] = {
    "none": lambda: None,
    "semihard": lambda: miners.TripletMarginMiner(
        margin=0.2, type_of_triplets="semihard", distance=_cos()
    ),
    "hard": lambda: miners.TripletMarginMiner(margin=0.2, type_of_triplets="hard", distance=_cos()),
    "all": lambda: miners.TripletMarginMiner(margin=0.2, type_of_triplets="all", distance=_cos()),
    "pair": lambda: miners.PairMarginMiner(pos_margin=0.8, neg_margin=0.5, distance=_cos()),
    "multi_similarity": lambda: miners.MultiSimilarityMiner(epsilon=0.1),
}

DEFAULT_LOSS = "multi_similarity"


def check_names(loss: str, miner: str | None) -> str:
    """Validate ``loss`` / ``miner``; return the miner to use (the loss's default if None)."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if miner is None:
        miner = LOSSES[loss].miner or "none"
    if miner not in MINERS:
        raise ValueError(f"unknown miner {miner!r}; choose one of {', '.join(MINERS)}")
    if loss == "quadruplet" and miner not in ("none", "semihard", "hard", "all"):
        raise ValueError("the quadruplet loss takes a triplet miner: semihard, hard, all or none")
    return miner


def build(loss: str, miner: str | None, n_classes: int, dim: int):
    """``(loss module, miner module or None, miner name)`` for the registry names."""
    miner = check_names(loss, miner)
    return LOSSES[loss].build(n_classes, dim), MINERS[miner](), miner


def compute_loss(loss_fn: nn.Module, miner: nn.Module | None, emb, labels) -> torch.Tensor:
    """Loss on one batch, mining first when a miner is given."""
    if miner is None:
        return loss_fn(emb, labels)
    return loss_fn(emb, labels, miner(emb, labels))


class MetricObjective(nn.Module):
    """What an embedder minimises on one batch: the named loss (mined) on the fine "same"
    classes, plus, when ``coarse_loss`` is given, ``coarse_weight`` x that loss (unmined) on
    the coarse classes. One object for the fast path and for fine-tuning, so both train the
    same objective and fine-tuning continues from the proxies/class weights learned first.
    """

    def __init__(
        self,
        loss: str,
        miner: str | None,
        n_classes: int,
        dim: int,
        *,
        coarse_loss: str | None = None,
        n_coarse: int = 0,
        coarse_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.loss_fn, self.miner_fn, _ = build(loss, miner, n_classes, dim)
        self.coarse_fn = build(coarse_loss, "none", n_coarse, dim)[0] if coarse_loss else None
        self.coarse_weight = coarse_weight

    def forward(
        self, emb: torch.Tensor, labels: torch.Tensor, coarse: torch.Tensor | None = None
    ) -> torch.Tensor:
        value = compute_loss(self.loss_fn, self.miner_fn, emb, labels)
        if self.coarse_fn is not None:
            value = value + self.coarse_weight * compute_loss(self.coarse_fn, None, emb, coarse)
        return value
