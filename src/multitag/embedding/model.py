"""``Embedder``: backbone features -> a small learned layer -> L2-normalised embedding.

The fast path trains the embedding layer on cached backbone features (shared with the
tagger's cache); ``freeze="blocks.K"`` then also fine-tunes every stage above block K with the
metric loss, on cached prefix activations like the tagger (:mod:`multitag.embedding.finetune`).
Saved next to a tagger when both share a frozen backbone, so one encoder pass gives
tags and embedding (:func:`encode_model_dir`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from multitag.core import integrity
from multitag.core.io import atomic_path, write_json
from multitag.core.locks import writer_lock
from multitag.core.params import ParamsMixin
from multitag.core.progress import bar
from multitag.data.detail import Detail, resolve_detail
from multitag.data.framing import Framing, resolve_framing
from multitag.embedding import losses as loss_registry
from multitag.tagger.persistence import CONFIG, FORMAT_VERSION, library_versions, read_config
from multitag.training.finetune import StageData, tuned_features
from multitag.training.loop import one_cycle
from multitag.training.prepare import FeatureStore, check_frame
from multitag.vision import backbones
from multitag.vision.encoder_spec import EncoderSpec, encoder_from_config, encoder_section
from multitag.vision.extraction import FeatureResult, run_encoder
from multitag.vision.features import Encoder, Preprocessing

EMBED_CONFIG = "embedding.json"
EMBED_WEIGHTS = "embedding.safetensors"


def same_key(frame: pd.DataFrame, same: Sequence[str]) -> pd.Series:
    """One string per row joining the ``same`` columns; blank when any of them is blank."""
    missing = [c for c in same if c not in frame.columns]
    if missing:
        raise ValueError(
            f"--same: column(s) {missing} not in the manifest; it has {list(frame.columns)}"
        )
    cols = frame[list(same)].fillna("").astype(str).apply(lambda s: s.str.strip())
    key = cols.agg("|".join, axis=1)
    return key.where((cols != "").all(axis=1), "")


class EmbeddingHead(nn.Module):
    """Standardise features, then linear or MLP to ``dim``, then L2-normalise.

    ``input_dropout``: dropout on the standardised features while training (as the tagger's
    heads have), so the layer cannot lean on a few feature columns."""

    def __init__(
        self,
        in_dim: int,
        dim: int = 128,
        kind: str = "linear",
        hidden: int = 512,
        input_dropout: float = 0.0,
    ):
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', not {kind!r}")
        if not 0 <= input_dropout < 1:
            raise ValueError(f"input_dropout must be in [0, 1), not {input_dropout!r}")
        self.input_dropout = nn.Dropout(input_dropout)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        if kind == "linear":
            self.net = nn.Linear(in_dim, dim)
        else:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, dim)
            )

    def fit_scaler(self, features: np.ndarray) -> None:
        self.mean.copy_(torch.as_tensor(features.mean(0), dtype=torch.float32))
        self.std.copy_(torch.as_tensor(features.std(0) + 1e-4, dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout((features.float() - self.mean) / self.std)
        return F.normalize(self.net(x), dim=-1)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


class Embedder(ParamsMixin):
    """Backbone + embedding layer trained with a metric-learning loss.

    ``same``: label columns that define "alike" (rows agreeing on all are positives).
    ``loss`` / ``miner``: names from :mod:`multitag.embedding.losses`. ``coarse``: some of the
    ``same`` columns (e.g. ``["articleType"]``) whose agreement alone also counts: the same
    loss, unmined, on those labels is added with weight ``coarse_weight``, so items that share
    only the type still sit nearer than unrelated ones (neighbour votes on that column gain).
    ``coarse_loss``: another loss name for that term (default: ``loss``); a proxy loss such as
    ``"proxy_anchor"`` gives each coarse class its own learned centre. Measured on
    fashion-products (bench/embed.md): ``coarse_loss="proxy_anchor", coarse_weight=0.05`` gives
    the best kNN votes on the coarse column; larger proxy weights cost Recall@1 on ``same``.
    ``freeze``: ``"all"`` = frozen backbone (cached features); a stage such as ``"blocks.5"`` =
    after the head is trained, fine-tune the stages above it (``finetune_epochs``,
    ``finetune_lr``) on the same objective. ``framing``: as the tagger's (``"none"``,
    ``"auto"`` = measured on the training images, a :class:`~multitag.data.framing.Framing`
    or a dict of its fields) and ``detail`` as the tagger's (:mod:`multitag.data.detail`);
    an embedder saved beside a tagger must use the tagger's.
    """

    def __init__(
        self,
        same: Sequence[str] | None = None,
        *,
        dim: int = 256,
        head: str = "mlp",
        hidden: int = 512,
        input_dropout: float = 0.2,
        loss: str = loss_registry.DEFAULT_LOSS,
        miner: str | None = None,
        coarse: Sequence[str] | None = None,
        coarse_weight: float = 0.25,
        coarse_loss: str | None = None,
        backbone: str = backbones.DEFAULT_BACKBONE,
        weights: str | None = "auto",
        image_size: int | None = None,
        framing: str | Mapping | Framing = "auto",
        detail: str | int | Mapping | Detail | None = "auto",
        stages: Sequence[int] | None = None,
        colour_bins: int = 6,
        grid_stages: Sequence[int] | str = "auto",
        epochs: int = 30,
        batch_size: int = 256,
        per_class: int = 4,
        lr: float = 1e-3,
        freeze: str = "all",
        finetune_epochs: int = 3,
        finetune_lr: float = 1e-4,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        precision: str = "auto",
        engine: str = "auto",
        workers: int | None = None,
        progress: bool = True,
    ) -> None:
        self.same = same
        self.dim = dim
        self.head = head
        self.hidden = hidden
        self.input_dropout = input_dropout
        self.loss = loss
        self.miner = miner
        self.coarse = coarse
        self.coarse_weight = coarse_weight
        self.coarse_loss = coarse_loss
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.framing = framing
        self.detail = detail
        self.stages = stages
        self.colour_bins = colour_bins
        self.grid_stages = grid_stages
        self.epochs = epochs
        self.batch_size = batch_size
        self.per_class = per_class
        self.lr = lr
        self.freeze = freeze
        self.finetune_epochs = finetune_epochs
        self.finetune_lr = finetune_lr
        self.seed = seed
        self.cache_dir = cache_dir
        self.precision = precision
        self.engine = engine
        self.workers = workers
        self.progress = progress

    # ------------------------------------------------------------------ encoder
    def feature_store(self) -> FeatureStore:
        """Where the fitted encoder's features are cached, under the tagger's key for the same
        encoder (:mod:`multitag.training.prepare`); ``cache_dir=None`` means the default cache
        (an embedder always caches)."""
        return FeatureStore(
            self.encoder_,
            self.backbone,
            self.weights,
            self.precision,
            self.engine,
            "default" if self.cache_dir is None else self.cache_dir,
            self.workers,
            self.progress,
        )

    def build_encoder(self, paths: Sequence[str | os.PathLike] = ()) -> Encoder:
        """The encoder these settings describe (``paths``: the images ``framing="auto"`` and
        ``detail="auto"`` are measured on)."""
        framing = resolve_framing(self.framing, list(paths), self.seed)
        detail = resolve_detail(self.detail, list(paths), framing, self.seed)
        spec = EncoderSpec(
            self.backbone,
            self.weights,
            self.image_size,
            self.stages,
            self.colour_bins,
            self.grid_stages,
        )
        return spec.build(framing, detail)

    def encoder_id(self) -> dict:
        return self.feature_store().cache_id()

    def features(self, paths: Sequence[str | os.PathLike], *, prefix_cache: bool = False):
        """Backbone features of ``paths`` (cached unless the backbone was fine-tuned).

        ``prefix_cache``: for a fine-tuned embedder, run only the tuned stages on the cached
        frozen-prefix outputs (fast for the images it was trained on; caches the prefix
        activations of new images, which take far more disk than features)."""
        if getattr(self, "finetuned_", False):
            if prefix_cache and self.freeze != "all":
                return self._features_from_prefix(list(paths))
            return run_encoder(
                self.encoder_, paths, precision=self.precision, engine=self.engine,
                workers=self.workers, progress=self.progress,
            )  # fmt: skip
        return self.feature_store().features(paths)

    def _features_from_prefix(self, paths: list) -> FeatureResult:
        block = self.encoder_.block_index(self.freeze)
        acts, prefix, errors = self.feature_store().prefix(paths, block)
        feats = tuned_features(
            self.encoder_, block, StageData(acts, prefix), np.arange(len(paths)),
            precision=self.precision, progress=self.progress,
        )  # fmt: skip
        feats[list(errors)] = 0.0
        return FeatureResult(feats, dict(errors))

    def raw_features(self, paths: Sequence[str | os.PathLike]) -> FeatureResult:
        """Features of the pretrained, untuned backbone (the baseline to compare with)."""
        if not getattr(self, "finetuned_", False):
            return self.features(paths)
        probe = Embedder(
            self.same_, backbone=self.backbone, weights=self.weights,
            image_size=self.encoder_.preprocessing.image_size,
            framing=self.encoder_.preprocessing.framing or "none",
            detail=self.encoder_.preprocessing.detail or "none", stages=self.encoder_.stages,
            colour_bins=self.encoder_.colour_bins, grid_stages=self.encoder_.grid_stages,
            cache_dir=self.cache_dir, precision=self.precision, engine=self.engine,
            workers=self.workers, progress=self.progress,
        )  # fmt: skip
        probe.encoder_ = probe.build_encoder()
        return probe.features(paths)

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        frame: pd.DataFrame,
        same: Sequence[str] | None = None,
        *,
        features: np.ndarray | None = None,
        rows: np.ndarray | None = None,
    ) -> Embedder:
        """Learn the embedding on a manifest ``frame`` (``path`` + the ``same`` columns).

        ``features``: precomputed backbone features of every row (skips extraction);
        ``rows``: train on these rows only (e.g. the training split).
        """
        same = list(same or self.same or [])
        if not same:
            raise ValueError("same: name the label column(s) that define 'alike', e.g. articleType")
        self.same_ = same
        frame = check_frame(frame, ("path",) if features is None else ())
        key = same_key(frame, same)
        if not hasattr(self, "encoder_"):
            self.encoder_ = self.build_encoder(frame["path"].tolist())
        if features is None:
            res = self.features(frame["path"].tolist())
            features, bad = res.features, set(res.errors)
        else:
            bad = set()
        use = np.flatnonzero((key != "").to_numpy())
        if rows is not None:
            use = np.intersect1d(use, rows)
        use = np.array([r for r in use if r not in bad], dtype=np.int64)
        if len(use) < 2:
            raise ValueError(f"need at least 2 labelled, readable rows in {same}; got {len(use)}")
        classes, labels = np.unique(key.to_numpy()[use], return_inverse=True)
        self.n_classes_ = len(classes)
        coarse_labels = self._coarse_labels(classes, labels)
        torch.manual_seed(self.seed)
        self.head_ = EmbeddingHead(
            features.shape[1], self.dim, self.head, self.hidden, self.input_dropout
        )
        self.head_.fit_scaler(features[use])
        self.miner_ = loss_registry.check_names(self.loss, self.miner)
        if self.coarse_loss is not None:
            if not self.coarse:
                raise ValueError(
                    f"coarse_loss={self.coarse_loss!r} needs coarse columns (e.g. "
                    "coarse=['articleType']); without them there is no coarse term to use it"
                )
            loss_registry.check_names(self.coarse_loss, "none")
        if self.coarse and not self.coarse_weight > 0:
            raise ValueError(
                f"coarse_weight must be > 0 when coarse columns are given, not "
                f"{self.coarse_weight} (drop coarse to train without the coarse term)"
            )
        if self.freeze != "all":
            self.encoder_.block_index(self.freeze)  # a bad stage fails before any training
        self.history_ = self._train_head(features[use], labels, coarse_labels)
        self.finetuned_ = False
        if self.freeze != "all":
            self._finetune(frame["path"].to_numpy()[use], labels, coarse_labels)
        return self

    def _coarse_labels(self, classes: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
        """Class index per row of the ``coarse`` columns (read off the ``same`` key)."""
        if not self.coarse:
            return None
        coarse = [self.coarse] if isinstance(self.coarse, str) else list(self.coarse)
        extra = [c for c in coarse if c not in self.same_]
        if extra:
            raise ValueError(
                f"coarse: {extra} not among the 'same' columns {self.same_}; "
                "coarse columns are a part of what defines 'alike'"
            )
        pos = [self.same_.index(c) for c in coarse]
        names = ["|".join(str(k).split("|")[i] for i in pos) for k in classes]
        return np.unique(names, return_inverse=True)[1][labels]

    def _batches(self, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Class-balanced batches: ``per_class`` rows of each sampled class."""
        order = rng.permutation(len(labels))
        by_class: dict[int, list[int]] = {}
        for i in order:
            by_class.setdefault(int(labels[i]), []).append(int(i))
        chunks = []
        for members in by_class.values():
            for s in range(0, len(members), self.per_class):
                chunks.append(members[s : s + self.per_class])
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
        batches, cur = [], []
        for c in chunks:
            cur.extend(c)
            if len(cur) >= self.batch_size:
                batches.append(np.array(cur))
                cur = []
        if len(cur) > 1:
            batches.append(np.array(cur))
        return batches

    def _objective(self, coarse: np.ndarray | None) -> loss_registry.MetricObjective:
        return loss_registry.MetricObjective(
            self.loss, self.miner_, self.n_classes_, self.dim,
            coarse_loss=(self.coarse_loss or self.loss) if coarse is not None else None,
            n_coarse=int(coarse.max()) + 1 if coarse is not None else 0,
            coarse_weight=self.coarse_weight,
        )  # fmt: skip

    def _train_head(
        self, features: np.ndarray, labels: np.ndarray, coarse: np.ndarray | None = None
    ) -> list[float]:
        rng = np.random.default_rng(self.seed)
        x = torch.as_tensor(features, dtype=torch.float32)
        y = torch.as_tensor(labels, dtype=torch.long)
        yc = torch.as_tensor(coarse, dtype=torch.long) if coarse is not None else None
        self.objective_ = objective = self._objective(coarse)
        groups = [{"params": list(self.head_.parameters()), "lr": self.lr}]
        if any(True for _ in objective.parameters()):  # proxies / class weights learn faster
            groups.append({"params": list(objective.parameters()), "lr": self.lr * 10})
        opt = torch.optim.AdamW(groups, weight_decay=1e-4)
        steps = self.epochs * max(1, len(labels) // self.batch_size)
        sched = one_cycle(opt, [g["lr"] for g in opt.param_groups], steps + 1)
        history = []
        self.head_.train()
        with bar("embedding", self.epochs, enabled=self.progress) as pbar:
            for _ in range(self.epochs):
                total, n = 0.0, 0
                for b in self._batches(labels, rng):
                    loss = objective(self.head_(x[b]), y[b], yc[b] if yc is not None else None)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    if sched.last_epoch < steps:
                        sched.step()
                    total += float(loss.detach())
                    n += 1
                history.append(total / max(n, 1))
                pbar.advance()
                pbar.update(info=f"loss {history[-1]:.4f}")
        self.head_.eval()
        return history

    def _finetune(
        self, paths: np.ndarray, labels: np.ndarray, coarse: np.ndarray | None = None
    ) -> None:
        """Fine-tune the stages above ``freeze`` and the head on cached prefix activations,
        on the objective the head was trained with (coarse term included)."""
        from multitag.embedding.finetune import UpperEmbedding, train_upper_embedding

        enc = self.encoder_
        block = enc.block_index(self.freeze)
        acts, prefix, errors = self.feature_store().prefix(list(paths), block)
        keep = np.setdiff1d(np.arange(len(paths)), list(errors))
        data = StageData(acts[keep], prefix[keep])
        labels = labels[keep]
        model = UpperEmbedding(enc, block, self.head_)
        self.finetune_history_ = train_upper_embedding(
            model, data, labels, lambda rng: self._batches(labels, rng), self.objective_,
            coarse=coarse[keep] if coarse is not None else None,
            epochs=self.finetune_epochs, lr=self.finetune_lr, head_lr=self.lr * 0.1,
            precision=self.precision, seed=self.seed, progress=self.progress,
        )  # fmt: skip
        enc.eval()
        self.finetuned_ = True

    # --------------------------------------------------------------- inference
    def _check_fitted(self) -> None:
        if not hasattr(self, "encoder_"):
            raise RuntimeError("this Embedder is not fitted: call fit() or load_embedder() first")

    def transform_features(self, features: np.ndarray) -> np.ndarray:
        """Embeddings (n, dim) of backbone ``features``; raw L2-normalised if no head."""
        self._check_fitted()
        if self.head_ is None:
            return l2_normalize(np.asarray(features, dtype=np.float32))
        with torch.no_grad():
            out = self.head_.eval()(torch.as_tensor(features, dtype=torch.float32))
        return out.numpy().astype(np.float32)

    def embed(self, paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, dict[int, str]]:
        """``(embeddings, {row: reason})``; rows of unreadable images are zero."""
        self._check_fitted()
        res = self.features(list(paths))
        emb = self.transform_features(res.features) if len(res.features) else res.features
        if res.errors:
            emb[list(res.errors)] = 0.0
        return emb, dict(res.errors)

    def transform(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Embeddings of image ``paths`` (zero rows for unreadable images)."""
        return self.embed(paths)[0]

    @property
    def out_dim(self) -> int:
        self._check_fitted()
        return self.dim if self.head_ is not None else self.encoder_.out_dim

    # -------------------------------------------------------------- persistence
    def config(self) -> dict:
        enc = self.encoder_
        return {
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "head": self.head,
            "hidden": self.hidden,
            "loss": self.loss,
            "miner": getattr(self, "miner_", self.miner),
            "same": self.same_,
            "feature_dim": enc.out_dim,
            "backbone": backbones.resolve_name(self.backbone),
            "weights": str(self.weights),
            "preprocessing": enc.preprocessing.to_dict(),
            "stages": enc.stages,
            "colour_bins": enc.colour_bins,
            "grid_stages": enc.grid_stages,
            "image_size": enc.preprocessing.image_size,
            "with_imagenet": enc.with_imagenet,
            "finetuned": bool(self.finetuned_),
            "freeze": self.freeze,
            "training": {
                "epochs": self.epochs,
                "lr": self.lr,
                "batch_size": self.batch_size,
                "per_class": self.per_class,
                "input_dropout": self.input_dropout,
                "coarse": list(self.coarse or []),
                "coarse_weight": self.coarse_weight,
                "coarse_loss": self.coarse_loss or self.loss,
                "seed": self.seed,
                "loss_history": getattr(self, "history_", []),
            },  # fmt: skip
            "precision": self.precision,
            "versions": library_versions(),
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``embedding.json`` + ``embedding.safetensors`` (beside a matching tagger).

        A directory that holds a tagger on the same frozen backbone and preprocessing gets
        the embedding files added; a fresh directory also gets a ``config.json`` of kind
        ``multitag-embedder``. A fine-tuned embedder cannot share a tagger's directory.
        """
        self._check_fitted()
        if self.head_ is None:
            raise ValueError("nothing to save: this Embedder has no trained embedding layer")
        directory = Path(directory)
        cfg = self.config()
        existing = directory / CONFIG
        if existing.is_file():
            old = read_config(directory)
            if old.get("kind") == "multitag-tagger":
                problem = _tagger_mismatch(old, cfg)
                if problem:
                    raise ValueError(
                        f"{directory} holds a tagger that cannot share this embedder "
                        f"({problem}); save to another directory"
                    )
        directory.mkdir(parents=True, exist_ok=True)
        with writer_lock(directory, "model", folder=True):
            self._write(directory, cfg, existing)
        return directory

    def _write(self, directory: Path, cfg: dict, existing: Path) -> None:
        tensors = {f"head.{k}": v.contiguous() for k, v in self.head_.state_dict().items()}
        if self.finetuned_:
            enc_state = self.encoder_.state_dict()
            tensors.update({f"encoder.{k}": v.contiguous() for k, v in enc_state.items()})
        with atomic_path(directory / EMBED_WEIGHTS) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "multitag-embedding"})
        write_json(directory / EMBED_CONFIG, integrity.seal(cfg, directory, [EMBED_WEIGHTS]))
        if not existing.is_file() or read_config(directory).get("kind") == "multitag-embedder":
            config = integrity.seal(_embedder_model_config(self), directory, [])
            write_json(directory / CONFIG, config)


def _tagger_mismatch(tagger_cfg: dict, emb_cfg: dict) -> str | None:
    bb = tagger_cfg["backbone"]
    prep = Preprocessing.from_dict(tagger_cfg["preprocessing"]).to_dict()
    if emb_cfg["finetuned"]:
        return "the embedder fine-tuned its backbone"
    if tagger_cfg.get("training", {}).get("freeze", "all") != "all":
        return "the tagger fine-tuned its backbone"
    checks = {
        "backbone": (bb["name"], emb_cfg["backbone"]),
        "weights": (str(bb["weights"]), emb_cfg["weights"]),
        "preprocessing": (prep, Preprocessing.from_dict(emb_cfg["preprocessing"]).to_dict()),
        "stages": (list(bb["stages"]), list(emb_cfg["stages"])),
        "colour_bins": (bb.get("colour_bins", 0), emb_cfg["colour_bins"]),
        "grid_stages": (bb.get("grid_stages", []), emb_cfg.get("grid_stages", [])),
    }
    for name, (a, b) in checks.items():
        if a != b:
            return f"{name} differs: tagger {a!r}, embedder {b!r}"
    return None


def _embedder_model_config(emb: Embedder) -> dict:
    enc = emb.encoder_
    return {
        "format_version": FORMAT_VERSION,
        "kind": "multitag-embedder",
        "backbone": {
            **encoder_section(enc, emb.backbone, emb.weights),
            "finetuned": bool(emb.finetuned_),
        },
        "preprocessing": {**enc.preprocessing.to_dict(), "input": "uint8 RGB NCHW"},
        "embedding": EMBED_CONFIG,
        "versions": library_versions(),
    }


def has_embedding(model_dir: str | os.PathLike) -> bool:
    """Whether ``model_dir`` holds trained embedding files."""
    return (Path(model_dir) / EMBED_CONFIG).is_file()


def load_embedder(model_dir: str | os.PathLike, *, allow_raw: bool = True) -> Embedder:
    """Rebuild the embedder of ``model_dir``.

    A tagger directory without embedding files gives (``allow_raw``) an embedder whose
    output is the L2-normalised raw encoder features (``head_`` is None).
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    kind = config.get("kind", "multitag-tagger")
    bb = config["backbone"]
    emb_cfg = integrity.read_json(model_dir / EMBED_CONFIG) if has_embedding(model_dir) else None
    if emb_cfg is None and not allow_raw:
        raise FileNotFoundError(
            f"{model_dir} has no {EMBED_CONFIG}; train one with `multitag embed train --out DIR`"
        )
    tensors = {}
    if emb_cfg:
        integrity.verify(model_dir, emb_cfg, EMBED_CONFIG)
        try:
            tensors = load_file(str(model_dir / EMBED_WEIGHTS))
        except (SafetensorError, OSError) as err:
            raise integrity.unreadable(model_dir / EMBED_WEIGHTS, err) from None
    if kind == "multitag-tagger":
        from multitag.tagger.loading import load_tagger

        tagger = load_tagger(model_dir)
        encoder = tagger.net_.encoder
        weights, precision = bb["weights"], tagger.settings("training").precision
    else:
        finetuned = bool(emb_cfg and emb_cfg.get("finetuned"))
        weights = bb["weights"] if bb["weights"] != "None" else None
        encoder = encoder_from_config(config, weights=None if finetuned else weights)
        if finetuned:
            enc_state = {k[8:]: v for k, v in tensors.items() if k.startswith("encoder.")}
            encoder.load_state_dict(enc_state, strict=True)
        precision = emb_cfg["precision"] if emb_cfg else "auto"
    cfg = emb_cfg or {}
    emb = Embedder(
        cfg.get("same"),
        **_training_params(cfg),
        dim=cfg.get("dim", encoder.out_dim),
        head=cfg.get("head", "linear"),
        hidden=cfg.get("hidden", 512),
        loss=cfg.get("loss", loss_registry.DEFAULT_LOSS),
        miner=cfg.get("miner"),
        backbone=bb["name"],
        weights=weights,
        image_size=encoder.preprocessing.image_size,
        framing=encoder.preprocessing.framing or "none",
        detail=encoder.preprocessing.detail or "none",
        stages=encoder.stages,
        colour_bins=encoder.colour_bins,
        grid_stages=encoder.grid_stages,
        freeze=cfg.get("freeze", "all"),
        precision=precision,
        progress=False,
    )
    emb.encoder_ = encoder.eval()
    emb.same_ = cfg.get("same")
    emb.finetuned_ = bool(cfg.get("finetuned", False))
    emb.head_ = None
    if emb_cfg:
        head = EmbeddingHead(emb_cfg["feature_dim"], emb_cfg["dim"], emb_cfg["head"],
                             emb_cfg.get("hidden", 512))  # fmt: skip
        head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        emb.head_ = head.eval()
    emb.config_ = config
    emb.tagger_ = tagger if kind == "multitag-tagger" else None
    return emb


def _training_params(cfg: dict) -> dict:
    """The constructor's training settings from ``embedding.json`` (so a reloaded embedder
    refits the way it was trained); keys an older file lacks keep their defaults."""
    saved = cfg.get("training", {})
    names = ("epochs", "lr", "batch_size", "per_class", "input_dropout", "coarse_weight", "seed")
    params = {n: saved[n] for n in names if n in saved}
    if saved.get("coarse"):
        params["coarse"] = list(saved["coarse"])
        if saved.get("coarse_loss") not in (None, cfg.get("loss")):  # saved as the loss used
            params["coarse_loss"] = saved["coarse_loss"]
    return params


def encode_model_dir(
    model_dir: str | os.PathLike, paths: Sequence[str | os.PathLike], *, batch_size: int = 64
) -> dict:
    """Tags and embeddings of ``paths`` from ONE encoder pass.

    Returns ``{"proba": {task: (n, C)} or None, "embeddings": (n, d), "errors": {row: reason},
    "raw": bool}`` (``raw``: no embedding layer, L2-normalised encoder features).
    """
    emb = load_embedder(model_dir)
    tagger = emb.tagger_
    if tagger is not None:
        tagger.set_params(runtime__progress=False)
        out = tagger.predict_proba(list(paths), batch_size=batch_size, return_features=True)
        vectors = emb.transform_features(out["features"])
        if out["errors"]:
            vectors[list(out["errors"])] = 0.0
        return {"proba": out["proba"], "embeddings": vectors, "errors": out["errors"],
                "raw": emb.head_ is None}  # fmt: skip
    vectors, errors = emb.embed(paths)
    return {"proba": None, "embeddings": vectors, "errors": errors, "raw": emb.head_ is None}
