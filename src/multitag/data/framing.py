"""Product framing: crop a photo to its product and centre it on the catalogue's canvas.

Photos from another source frame the product differently from the training catalogue
(a square or landscape canvas, a tight crop, wide margins). The square resize then changes
the product's shape and size on the network's input, and the tags suffer (research/LOG.md,
"Photos framed differently"). :func:`reframe` removes that difference: it finds the product
(pixels that differ from the background colour, the median of the border pixels), crops to
its bounding box and pads it with the background colour onto a canvas of the catalogue's
aspect ratio in which the product spans ``fill`` of the limiting side. Applied to training
and inference images alike (``MultiTaskTagger(framing=...)``), every image reaches the
network framed the same way, whatever its source.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from multitag.data.images import ImageDecodeError, load_image

__all__ = [
    "Framing",
    "background_colour",
    "decoded_sample",
    "measure_framing",
    "place_on_canvas",
    "product_box",
    "reframe",
    "resolve_framing",
]

#: How many images ``framing="auto"`` measures (a seeded sample of the training images).
AUTO_SAMPLE = 500


@dataclass(frozen=True)
class Framing:
    """The canvas every image is put on: ``aspect`` = width / height, ``fill`` = share of the
    limiting side the product spans, ``threshold`` = summed ``|RGB - background|`` above which
    a pixel belongs to the product (JPEG noise on a white background stays below 30)."""

    aspect: float = 0.75
    fill: float = 0.87
    threshold: int = 30

    def __post_init__(self) -> None:
        if not 0.2 <= self.aspect <= 5:
            raise ValueError(
                f"framing aspect (width / height) must be in [0.2, 5], not {self.aspect}"
            )
        if not 0.3 <= self.fill <= 1:
            raise ValueError(f"framing fill must be in [0.3, 1], not {self.fill}")
        if not 1 <= self.threshold <= 765:
            raise ValueError(f"framing threshold must be in [1, 765], not {self.threshold}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Framing:
        return cls(float(d["aspect"]), float(d["fill"]), int(d["threshold"]))


def background_colour(image: np.ndarray) -> np.ndarray:
    """Median RGB of the border pixels of an ``HxWx3`` uint8 array."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return np.median(border, axis=0).astype(np.uint8)


def product_box(
    image: np.ndarray, threshold: int = 30, background: np.ndarray | None = None
) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` (exclusive ends) of the pixels that differ from the
    ``background`` colour (default: :func:`background_colour`) by more than ``threshold``;
    ``None`` when there are none."""
    if background is None:
        background = background_colour(image)
    diff = np.abs(image.astype(np.int16) - np.asarray(background, np.int16))
    mask = (diff[..., 0] + diff[..., 1] + diff[..., 2]) > threshold  # faster than sum(-1)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def reframe(image: np.ndarray, framing: Framing) -> np.ndarray:
    """Crop ``image`` (``HxWx3`` uint8) to its product and centre it, padded with the
    background colour, on a canvas of ``framing.aspect`` where it spans ``framing.fill`` of
    the limiting side. An image without a product (uniform) is only padded to the aspect."""
    background = background_colour(image)
    box = product_box(image, framing.threshold, background)
    crop = image if box is None else image[box[0] : box[1], box[2] : box[3]]
    fill = 1.0 if box is None else framing.fill
    h, w = crop.shape[:2]
    height = max(h / fill, w / fill / framing.aspect)
    out_h = max(h, round(height))
    out_w = max(w, round(height * framing.aspect))
    return place_on_canvas(crop, out_w, out_h, background)


def place_on_canvas(image: np.ndarray, width: int, height: int, colour) -> np.ndarray:
    """``image`` centred on a ``width x height`` canvas (at least the image's size) of
    ``colour``."""
    h, w = image.shape[:2]
    canvas = np.empty((max(height, h), max(width, w), 3), np.uint8)
    canvas[:] = colour
    top, left = (canvas.shape[0] - h) // 2, (canvas.shape[1] - w) // 2
    canvas[top : top + h, left : left + w] = image
    return canvas


def measure_framing(images: Iterable[np.ndarray], threshold: int = 30) -> Framing:
    """The catalogue's own framing: median aspect ratio and median share of the limiting side
    its products span (rounded to 0.01, so a few more images do not change it)."""
    aspects, fills = [], []
    for image in images:
        h, w = image.shape[:2]
        aspects.append(w / h)
        box = product_box(image, threshold)
        if box is not None:
            fills.append(max((box[1] - box[0]) / h, (box[3] - box[2]) / w))
    if not aspects:
        raise ValueError("measure_framing needs at least one image")
    fill = float(np.median(fills)) if fills else 1.0
    return Framing(round(float(np.median(aspects)), 2), round(max(fill, 0.3), 2), threshold)


def decoded_sample(paths: Sequence, seed: int = 0, n: int = AUTO_SAMPLE) -> Iterator[np.ndarray]:
    """RGB arrays of a seeded sample of up to ``n`` of ``paths`` (the same images for the same
    paths and seed), the ones that decode: what the ``"auto"`` settings are measured on."""
    rng = np.random.default_rng(seed)
    for i in sorted(rng.choice(len(paths), min(n, len(paths)), replace=False)):
        try:
            yield np.asarray(load_image(paths[i]))
        except ImageDecodeError:
            continue


def resolve_framing(
    spec: str | Mapping | Framing | None, paths: Sequence, seed: int = 0
) -> Framing | None:
    """A model's ``framing`` setting as a :class:`Framing`, or ``None`` (squash-resize only).

    ``"auto"`` measures the framing (:func:`measure_framing`) on a seeded sample of up to
    :data:`AUTO_SAMPLE` of ``paths``, so the same images and seed give the same framing;
    ``"none"`` / ``None`` means no framing; a dict gives the :class:`Framing` fields."""
    if isinstance(spec, Framing):
        return spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - set(Framing.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"framing: unknown fields {sorted(unknown)}; use aspect, fill, threshold"
            )
        return Framing(**spec)
    if spec is None or spec == "none":
        return None
    if spec != "auto":
        raise ValueError(
            f"framing must be 'none', 'auto', a Framing or a dict of its fields, not {spec!r}"
        )
    if not len(paths):
        raise ValueError("framing='auto' needs images to measure; got none")
    return measure_framing(decoded_sample(paths, seed))
