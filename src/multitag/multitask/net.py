"""The tagger's network: a staged encoder and multi-task heads in one forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from multitag.data.tasks import Task
from multitag.multitask.heads import MultiTaskHeads, probabilities
from multitag.vision.features import Encoder


class TaggerNet(nn.Module):
    """Encoder + heads: uint8 images -> per-task probabilities, ImageNet logits, features."""

    def __init__(self, encoder: Encoder, heads: MultiTaskHeads, tasks: Sequence[Task]) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = heads
        self.tasks = list(tasks)

    def forward(self, images: torch.Tensor):
        features, imagenet = self.encoder(images)
        logits = self.heads(features)
        probs = {t.name: probabilities(t, logits[t.name].float()) for t in self.tasks}
        return probs, imagenet, features

    def from_features(self, features: torch.Tensor, imagenet: bool = True):
        """The same outputs from encoder features (e.g. cached ones): the ImageNet classifier
        reads the head-pool segment of the feature vector (skipped when ``imagenet`` is false,
        e.g. because the inference engine already gave the logits)."""
        logits = self.heads(features)
        probs = {t.name: probabilities(t, logits[t.name].float()) for t in self.tasks}
        with_imagenet, imagenet = imagenet, None
        if with_imagenet and self.encoder.with_imagenet:
            start, stop = self.encoder.head_slice
            imagenet = self.encoder.model.get_classifier()(features[:, start:stop].float())
        return probs, imagenet, features
