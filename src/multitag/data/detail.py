"""Level of detail: photos sharper than the training photos are first brought down to them.

A tagger learns what its training photos look like at the network's input. Catalogue
thumbnails (e.g. 60x80 px) squash-resized to 224 px are soft; a sharp 900x1200 px photo of the
same product reaches the network with fine texture and edges the heads never saw, and its tags
get worse (docs/robustness.md). :func:`match_detail` removes that difference: an image (after
framing, :mod:`multitag.data.framing`) is downscaled, antialiased and keeping its aspect ratio,
to the pixels its catalogue thumbnail would have had, before the network's own square resize.

How many pixels that is (:class:`Detail`): a framed image no larger than the largest framed
training photos is kept as it is (so is a training photo on a wider canvas, which framing crops
back). A larger one keeps as many pixels as it would have if the whole photo had been the size
of the training photos (``photo``: the catalogue made its thumbnails from whole photos, then
framing cropped them), but never fewer than the training photos' median after framing
(``floor``), so a small product on a wide canvas keeps its detail. A :class:`Detail` with
``photo=None`` (models saved before it, or an explicit pixel count) brings every framed image
above ``framed`` pixels down to ``framed``.

The levels are measured on the training photos (:func:`measure_detail`) and stored with the
model's preprocessing, so ``tag``, ``evaluate``, the catalogue, the API and the feature cache
all see the same pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from multitag.data.framing import Framing, decoded_sample, reframe

__all__ = ["DETAIL_QUANTILE", "Detail", "match_detail", "measure_detail", "resolve_detail"]

#: Share of the training photos whose pixel count (as decoded) ``Detail.photo`` covers: nearly
#: every training photo stays untouched, larger photos come down to the training level.
DETAIL_QUANTILE = 0.99

#: The fewest pixels a level may have (32x32).
MIN_PIXELS = 1024


@dataclass(frozen=True)
class Detail:
    """The training photos' level of detail.

    Parameters
    ----------
    framed : int
        Framed images with at most this many pixels are kept as they are (the training
        photos' 0.99 quantile after framing: a training photo on a wider canvas, which framing
        crops back, is too). With ``photo=None`` a larger one is brought down to it.
    photo : int or None
        The training photos' pixel count as decoded (their 0.99 quantile): a larger framed
        image keeps what it would have had if the whole photo had been this size.
    floor : int or None
        But never fewer pixels than this (the training photos' median after framing), so a
        small product on a wide canvas keeps its detail. Set with ``photo``.
    """

    framed: int
    photo: int | None = None
    floor: int | None = None

    def __post_init__(self) -> None:
        if (self.photo is None) != (self.floor is None):
            raise ValueError("detail: give photo and floor together (or neither)")
        for name in ("framed", "photo", "floor"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"detail {name} must be a pixel count, not {value!r}")
            if value < MIN_PIXELS:
                raise ValueError(f"detail {name} must be at least {MIN_PIXELS} pixels, not {value}")

    def target(self, framed_pixels: int, photo_pixels: int) -> int:
        """How many pixels a framed image of ``framed_pixels`` keeps, its photo having had
        ``photo_pixels`` before framing (``framed_pixels`` itself: untouched)."""
        if framed_pixels <= self.framed:
            return framed_pixels
        if self.photo is None or self.floor is None:
            return self.framed
        thumbnail = round(framed_pixels * self.photo / max(photo_pixels, 1))
        return min(framed_pixels, max(self.floor, thumbnail))

    def to_json(self) -> int | dict:
        """An int when ``photo`` is unset: what models and feature caches before it stored."""
        if self.photo is None:
            return int(self.framed)
        return {"framed": int(self.framed), "photo": int(self.photo), "floor": int(self.floor)}

    @classmethod
    def from_json(cls, value: int | Mapping) -> Detail:
        if not isinstance(value, Mapping):
            return cls(int(value))
        unknown = set(value) - {"framed", "photo", "floor"}
        if unknown:
            raise ValueError(f"detail: unknown fields {sorted(unknown)}; use framed, photo, floor")
        if "framed" not in value:
            raise ValueError("detail: 'framed' (a pixel count) is required")
        return cls(**{k: None if v is None else int(v) for k, v in value.items()})


def match_detail(
    image: np.ndarray, detail: Detail | None, photo_pixels: int | None = None
) -> np.ndarray:
    """``image`` (``HxWx3`` uint8, framed) downscaled with Lanczos, aspect ratio kept, to the
    pixels ``detail`` lets it keep (:meth:`Detail.target`; ``photo_pixels``: the photo's
    pixels before framing, default the image's own); returned as is when that is all of
    them, or when ``detail`` is None."""
    h, w = image.shape[:2]
    if detail is None:
        return image
    target = detail.target(h * w, h * w if photo_pixels is None else photo_pixels)
    if h * w <= target:
        return image
    scale = (target / (h * w)) ** 0.5
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def measure_detail(images: Iterable[np.ndarray], framing: Framing | None = None) -> Detail:
    """The training photos' level of detail: the :data:`DETAIL_QUANTILE` quantile of their
    pixel counts after ``framing`` (``framed``) and as decoded (``photo``), and the median after
    framing (``floor``)."""
    photo, framed = [], []
    for a in images:
        photo.append(int(np.prod(a.shape[:2])))
        framed.append(int(np.prod((reframe(a, framing) if framing is not None else a).shape[:2])))
    if not photo:
        raise ValueError("measure_detail needs at least one image")

    def level(values: list[int], q: float) -> int:
        return max(MIN_PIXELS, int(np.quantile(values, q, method="higher")))

    return Detail(
        framed=level(framed, DETAIL_QUANTILE),
        photo=level(photo, DETAIL_QUANTILE),
        floor=level(framed, 0.5),
    )


def resolve_detail(
    spec: str | int | Mapping | Detail | None,
    paths: Sequence,
    framing: Framing | None,
    seed: int = 0,
) -> Detail | None:
    """A model's ``detail`` setting as a :class:`Detail`, or ``None`` (no downscale).

    ``"auto"`` measures it (:func:`measure_detail`) on the same seeded sample of ``paths`` that
    ``framing="auto"`` measures, and is off when there are no ``paths`` (no training photos,
    no level to match, e.g. an untrained probe encoder); ``"none"`` / ``None`` turns the step
    off; an int brings every framed image above that many pixels down to it (at least 1,024,
    e.g. 32x32); a :class:`Detail` or a dict of its fields is used as given."""
    if spec is None or spec == "none":
        return None
    if isinstance(spec, Detail):
        return spec
    if isinstance(spec, Mapping):
        return Detail.from_json(spec)
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return Detail(int(spec))
    if spec != "auto":
        raise ValueError(
            f"detail must be 'auto' (measured on the training photos), 'none' (off) or a pixel "
            f"count such as 4800 (60x80), not {spec!r}"
        )
    if not len(paths):
        return None
    return measure_detail(decoded_sample(paths, seed), framing)
