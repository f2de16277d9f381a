"""Level of detail: photos sharper than the training photos are first brought down to them.

A tagger learns what its training photos look like at the network's input. Catalogue
thumbnails (e.g. 60x80 px) squash-resized to 224 px are soft; a sharp 900x1200 px photo of the
same product reaches the network with fine texture and edges the heads never saw, and its tags
get worse (docs/robustness.md). :func:`match_detail` removes that difference: an image (after
framing, :mod:`multitag.data.framing`) with more pixels than the model's ``detail`` is
downscaled, antialiased and keeping its aspect ratio, to that many pixels, before the
network's own square resize. Images at or below ``detail`` pixels are untouched, so the
training photos keep exactly the pixels they had.

``detail`` is measured on the training photos (:func:`measure_detail`: a high quantile of their
pixel counts after framing) and stored with the model's preprocessing, so ``tag``,
``evaluate``, the catalogue, the API and the feature cache all see the same pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from multitag.data.framing import Framing, decoded_sample, reframe

__all__ = ["DETAIL_QUANTILE", "match_detail", "measure_detail", "resolve_detail"]

#: Share of the training photos (after framing) whose pixel count ``detail="auto"`` covers:
#: nearly every training photo stays untouched, larger photos come down to the training level.
DETAIL_QUANTILE = 0.99


def match_detail(image: np.ndarray, detail: int | None) -> np.ndarray:
    """``image`` (``HxWx3`` uint8) downscaled with Lanczos to about ``detail`` pixels, aspect
    ratio kept, when it has more; otherwise (or ``detail=None``) returned as is."""
    h, w = image.shape[:2]
    if detail is None or h * w <= detail:
        return image
    scale = (detail / (h * w)) ** 0.5
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def measure_detail(images: Iterable[np.ndarray], framing: Framing | None = None) -> int:
    """The training photos' level of detail: the :data:`DETAIL_QUANTILE` quantile of their
    pixel counts after ``framing`` (what :func:`match_detail` compares against)."""
    pixels = [
        int(np.prod((reframe(a, framing) if framing is not None else a).shape[:2])) for a in images
    ]
    if not pixels:
        raise ValueError("measure_detail needs at least one image")
    return int(np.quantile(pixels, DETAIL_QUANTILE, method="higher"))


def resolve_detail(
    spec: str | int | None, paths: Sequence, framing: Framing | None, seed: int = 0
) -> int | None:
    """A model's ``detail`` setting as a pixel count, or ``None`` (no downscale).

    ``"auto"`` measures it (:func:`measure_detail`) on the same seeded sample of ``paths`` that
    ``framing="auto"`` measures, and is off when there are no ``paths`` (no training photos,
    no level to match, e.g. an untrained probe encoder); ``"none"`` / ``None`` turns the step
    off; an int is used as given (at least 1,024 pixels, e.g. 32x32)."""
    if spec is None or spec == "none":
        return None
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        if spec < 1024:
            raise ValueError(f"detail must be at least 1024 pixels, not {spec}")
        return int(spec)
    if spec != "auto":
        raise ValueError(
            f"detail must be 'auto' (measured on the training photos), 'none' (off) or a pixel "
            f"count such as 4800 (60x80), not {spec!r}"
        )
    if not len(paths):
        return None
    return measure_detail(decoded_sample(paths, seed), framing)
