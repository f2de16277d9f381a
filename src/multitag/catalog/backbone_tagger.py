"""``BackboneTagger``: a pretrained backbone used as a tagger with no trained tasks.

What a catalogue built without a trained model encodes with. One encoder pass per photo gives
its features and the backbone's own ImageNet class probabilities (the classifier reads the
head-pool segment of the features, so cached features give them too). With an embedder
directory the encoder is the embedder's (same backbone, same preprocessing), so the embedding
comes from that same pass. A trained tagger attached later adds its tasks: from the stored
features when it uses the same encoder, else through its own content-keyed feature cache.

It offers the part of :class:`~multitag.tagger.estimator.MultiTaskTagger`'s interface that
batch tagging, the catalogue build and the API use: ``tasks_``, ``predict_proba``, ``warm_up``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from multitag.tagger.config import set_runtime
from multitag.vision import backbones
from multitag.vision.encoder_spec import EncoderSpec
from multitag.vision.extraction import encoder_cache_id, extract_features, fill_cache, run_encoder


def is_backbone_name(value: str | os.PathLike) -> bool:
    """Whether ``value`` names a backbone rather than a folder: not an existing path, and a
    registered name, an alias or a timm model name."""
    if Path(value).exists():
        return False
    try:
        backbones.get_spec(str(value))
    except ValueError:
        return False
    return True


class BackboneTagger:
    """A pretrained backbone's features and ImageNet tags, optionally a trained tagger's tasks.

    ``backbone``: a registered name or alias (or a timm name, weights from the hub);
    ``embedder``: an embedder directory (``multitag embed train``) whose encoder and embedding
    layer are used instead; ``tagger``: a loaded trained tagger whose tasks are added.
    Parameters are stored as given; the encoder is built on first use.
    """

    def __init__(
        self,
        backbone: str = backbones.DEFAULT_BACKBONE,
        *,
        embedder: str | os.PathLike | None = None,
        tagger=None,
        weights: str | None = "auto",
        image_size: int | None = None,
        precision: str = "auto",
        engine: str = "auto",
        cache_dir: str | os.PathLike | None = "default",
        workers: int | None = None,
        progress: bool = True,
    ) -> None:
        self.backbone = backbone
        self.embedder = embedder
        self.tagger = tagger
        self.weights = weights
        self.image_size = image_size
        self.precision = precision
        self.engine = engine
        self.cache_dir = cache_dir
        self.workers = workers
        self.progress = progress

    # ------------------------------------------------------------------ set-up
    @classmethod
    def from_source(cls, source: dict, tagger=None, **kwargs) -> BackboneTagger:
        """Rebuild from a catalogue's ``catalog.json`` ``source`` (see :meth:`source`)."""
        return cls(
            source["backbone"],
            embedder=source.get("embedder"),
            tagger=tagger,
            weights=source.get("weights", "auto"),
            image_size=source.get("image_size"),
            **kwargs,
        )

    def source(self) -> dict:
        """What ``catalog.json`` records to rebuild this encoder (no trained tagger)."""
        self._build()
        return {
            "kind": "backbone",
            "backbone": backbones.resolve_name(self.backbone),
            "embedder": str(Path(self.embedder).resolve()) if self.embedder else None,
            "weights": self.weights,
            "image_size": self.encoder_.preprocessing.image_size,
            "encoder": self.encoder_id(),
        }

    def _build(self) -> None:
        if hasattr(self, "encoder_"):
            return
        name = backbones.resolve_name(self.backbone)
        spec = backbones.get_spec(name)
        if not spec.has_classifier:
            with_classifier = [s.name for s in backbones.registered() if s.has_classifier]
            raise ValueError(
                f"backbone {name!r} has no ImageNet classifier, so it cannot tag photos: "
                f"use one that has ({', '.join(with_classifier)})"
            )
        self.embedder_ = None
        if self.embedder is not None:
            from multitag.embedding import load_embedder

            emb = load_embedder(self.embedder)
            if backbones.resolve_name(emb.backbone) != name:
                raise ValueError(
                    f"--embedder {self.embedder}: it embeds {emb.backbone} features, not "
                    f"{name}'s: name its backbone ({emb.backbone}) or leave --embedder out"
                )
            if getattr(emb, "finetuned_", False):
                raise ValueError(
                    f"--embedder {self.embedder}: its backbone is fine-tuned, so its encoder "
                    "has no ImageNet classifier to tag with; use an embedder on a frozen backbone"
                )
            self.embedder_, self.encoder_ = emb, emb.encoder_.eval()
            self.weights, self.precision = emb.weights, emb.precision
        else:
            spec = EncoderSpec(
                name, weights=self.weights, image_size=self.image_size, with_imagenet=True
            )
            self.encoder_ = spec.build().eval()

    @property
    def tasks_(self) -> list:
        return list(self.tagger.tasks_) if self.tagger is not None else []

    def encoder_id(self) -> dict:
        """What identifies this encoder's cached features (shared with taggers/embedders)."""
        self._build()
        return encoder_cache_id(
            self.encoder_, self.backbone, self.weights, self.precision, self.engine
        )

    def feature_cache_dir(self) -> Path | None:
        from multitag.core.runtime import feature_cache_folder

        return feature_cache_folder(self.cache_dir)

    def warm_up(self) -> BackboneTagger:
        """Prepare the inference engine now, not in a service's first request."""
        from multitag.vision.engines import runner_for

        self._build()
        runner_for(self.encoder_, self.engine, self.precision)
        if self.tagger is not None and hasattr(self.tagger, "warm_up"):
            self.tagger.warm_up()
        return self

    # --------------------------------------------------------------- inference
    def embed(self, features: np.ndarray) -> np.ndarray:
        """Features -> the catalogue's embedding (the embedder's, else L2-normalised)."""
        from multitag.embedding.model import l2_normalize

        self._build()
        if self.embedder_ is not None:
            return l2_normalize(np.asarray(self.embedder_.transform_features(features), np.float32))
        return l2_normalize(np.asarray(features, np.float32))

    @torch.inference_mode()
    def imagenet(self, features: np.ndarray) -> np.ndarray:
        """ImageNet class probabilities (n, 1000) from encoder features."""
        self._build()
        start, stop = self.encoder_.head_slice
        head = torch.as_tensor(np.asarray(features[:, start:stop], np.float32))
        return self.encoder_.model.get_classifier()(head).softmax(-1).numpy()

    def cache_features(
        self, paths: Sequence[str | os.PathLike], *, batch_size: int = 64
    ) -> dict[int, str]:
        """Fill the feature cache for ``paths`` in one pass (on Ray under ``--engine ray``),
        as :meth:`predict_proba` with ``use_cache`` would chunk by chunk; ``{row: reason}``
        for unreadable photos."""
        self._build()
        cache = self.feature_cache_dir()
        if cache is None:
            return {}
        return fill_cache(
            self.encoder_, list(paths), cache_dir=cache, encoder_id=self.encoder_id(),
            batch_size=batch_size, precision=self.precision, engine=self.engine,
            workers=self.workers, progress=self.progress,
        )  # fmt: skip

    def predict_proba(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        batch_size: int = 64,
        return_features: bool = False,
        use_cache: bool = False,
    ) -> dict:
        """``{"proba": {task: (n, C)}, "imagenet": (n, 1000), "errors": {row: reason},
        "features": (n, D) if asked}``, like the trained tagger's; rows of unreadable images
        are zero. ``use_cache`` reads and fills the content-keyed feature cache."""
        self._build()
        paths = list(paths)
        options = dict(
            batch_size=batch_size,
            precision=self.precision,
            engine=self.engine,
            workers=self.workers,
            progress=self.progress,
        )
        cache = self.feature_cache_dir() if use_cache else None
        if cache is not None:
            res = extract_features(
                self.encoder_, paths, cache_dir=cache, encoder_id=self.encoder_id(), **options
            )
        else:
            res = run_encoder(self.encoder_, paths, **options)
        features = res.features
        if features.shape[1] == 0:  # nothing readable
            features = np.zeros((len(paths), self.encoder_.out_dim), np.float32)
        imagenet = self.imagenet(features)
        bad = sorted(res.errors)
        imagenet[bad] = 0
        proba = {}
        if self.tagger is not None:
            proba = tagger_probabilities(
                self.tagger, paths, features, self.encoder_id(), use_cache=use_cache
            )
            for p in proba.values():
                p[bad] = 0
        out = {"proba": proba, "imagenet": imagenet, "errors": dict(res.errors)}
        if return_features:
            out["features"] = features
        return out


def tagger_probabilities(
    tagger, paths: Sequence[str | os.PathLike], features: np.ndarray, encoder_id: dict, **kwargs
) -> dict[str, np.ndarray]:
    """A trained tagger's per-task probabilities for photos whose ``features`` (from the
    encoder ``encoder_id``) are known: its heads on those features when it uses the same
    frozen encoder, else its own pass (``kwargs`` to its ``predict_proba``)."""
    same = (
        hasattr(tagger, "encoder_id")
        and tagger.settings("training").freeze == "all"
        and tagger.encoder_id() == encoder_id
    )
    if same:
        return tagger.predict_proba_features(features)
    set_runtime(tagger, progress=False)
    return tagger.predict_proba(list(paths), **kwargs)["proba"]
