"""One description of an encoder: what every builder constructs and every saved model records.

A tagger, an embedder, the study and a saved model directory all describe their encoder with
an :class:`EncoderSpec` (backbone, weights, input size, tapped stages, colour bins, grid
stages); :meth:`EncoderSpec.build` is the one place an :class:`~multitag.vision.features.Encoder`
is made from settings, :func:`encoder_section` what a model directory writes about it and
:func:`encoder_from_config` the one place it is rebuilt from that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from multitag.data.detail import Detail
from multitag.data.framing import Framing
from multitag.vision import backbones
from multitag.vision.features import FEATURE_VERSION, Encoder, Preprocessing

_UNSET = object()


@dataclass(frozen=True)
class EncoderSpec:
    """Settings that make an encoder.

    Parameters
    ----------
    backbone : str
        A registered backbone or any timm name.
    weights : str or None, default "auto"
        Where pretrained weights come from (:func:`multitag.vision.backbones.create_model`).
    image_size : int, optional
        Square network input; ``None`` = the backbone's pretrained size.
    stages : sequence of int, optional
        Stages whose pooled outputs join the features; ``None`` = every stage.
    colour_bins : int, default 6
        Bins per channel of the colour histograms (0 = none).
    grid_stages : sequence of int or "auto", default "auto"
        Stages also pooled on a 3x2 grid.
    with_imagenet : bool, optional
        Output the ImageNet logits; ``None`` = where the backbone has a classifier.
    """

    backbone: str = backbones.DEFAULT_BACKBONE
    weights: str | None = "auto"
    image_size: int | None = None
    stages: Sequence[int] | None = None
    colour_bins: int = 6
    grid_stages: Sequence[int] | str = "auto"
    with_imagenet: bool | None = None

    def build(
        self, framing: Framing | None = None, detail: Detail | None = None, weights=_UNSET
    ) -> Encoder:
        """The encoder, with ``framing`` and ``detail`` (measured on training photos) in its
        preprocessing; ``weights`` overrides the spec's (e.g. ``None`` before loading a
        saved state)."""
        spec = backbones.get_spec(self.backbone)
        model = backbones.create_model(
            spec.name, weights=self.weights if weights is _UNSET else weights
        )
        with_imagenet = spec.has_classifier if self.with_imagenet is None else self.with_imagenet
        return Encoder(
            model,
            Preprocessing.for_model(model, self.image_size, framing, detail),
            self.stages,
            with_imagenet=with_imagenet,
            colour_bins=self.colour_bins,
            grid_stages=self.grid_stages,
        )


def encoder_section(encoder: Encoder, backbone: str, weights: str | None) -> dict:
    """The ``backbone`` section of a model directory's ``config.json``."""
    return {
        "name": backbones.resolve_name(backbone),
        "timm_name": backbones.get_spec(backbone).timm_name,
        "weights": str(weights),
        "stages": encoder.stages,
        "stage_names": [encoder.stage_names[i] for i in encoder.stages],
        "with_imagenet": encoder.with_imagenet,
        "colour_bins": encoder.colour_bins,
        "grid_stages": encoder.grid_stages,
        "feature_version": FEATURE_VERSION,
        "feature_dim": encoder.out_dim,
    }


def encoder_from_config(config: Mapping, weights: str | None = None) -> Encoder:
    """Rebuild the encoder a model directory's ``config.json`` describes (``backbone`` and
    ``preprocessing`` sections); random weights unless ``weights`` names a source, since the
    saved state is loaded next."""
    section = config["backbone"]
    model = backbones.create_model(section["timm_name"], weights=weights)
    return Encoder(
        model,
        Preprocessing.from_dict(config["preprocessing"]),
        section["stages"],
        with_imagenet=section["with_imagenet"],
        colour_bins=section.get("colour_bins", 0),
        grid_stages=section.get("grid_stages", []),
    )
