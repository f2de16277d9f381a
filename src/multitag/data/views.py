"""Extra views: deterministic copies of a training photo as other photo pipelines make them.

A tagger trained on one catalogue only sees that catalogue's pipeline: products shot one
way round, saved once as JPEG, on white. Photos from elsewhere are mirrored, re-compressed,
shot on grey or smaller, and the tags suffer (docs/robustness.md). Training the heads on
cached features of such views of the training photos, next to the originals
(``MultiTaskTagger(views=[...])``), shows the heads that these differences do not change
the tags, at the cost of one more feature extraction per view (the network stays frozen).

Each view transforms a decoded ``HxWx3`` uint8 photo before framing and the level-of-detail
step, like a photo that reached us through that pipeline. A view is a pure function of the
photo's pixels and a seed (:func:`apply_view`), so a view's features are cached like the
originals' (the view's :func:`view_id` is part of the feature-cache key).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from multitag.data.framing import background_colour

__all__ = [
    "AUTO_VIEWS",
    "VIEWS",
    "apply_view",
    "check_views",
    "resolve_views",
    "view_id",
    "viewed_rows",
]

#: bump when a view's transform changes: cached features of the old one no longer match
VIEWS_VERSION = 1

GREY_LEVELS = (150, 225)  # range of the seeded grey of the ``grey`` view's background
BACKGROUND_TOLERANCE = 30  # summed |RGB difference| from the background colour that counts as it
JPEG_QUALITY = 60


def _flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mirror image (left and right swapped)."""
    return np.ascontiguousarray(image[:, ::-1])


def _jpeg(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Saved again as JPEG at quality ``JPEG_QUALITY`` and decoded (a re-compressed upload)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def _grey(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The background (pixels within ``BACKGROUND_TOLERANCE`` of the border colour) replaced
    by a seeded light grey from ``GREY_LEVELS``, as on a grey studio sweep."""
    diff = np.abs(image.astype(np.int16) - background_colour(image).astype(np.int16)).sum(-1)
    out = image.copy()
    out[diff <= BACKGROUND_TOLERANCE] = int(rng.integers(*GREY_LEVELS, endpoint=True))
    return out


def _down(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half the width and height (antialiased): a smaller photo of the same product."""
    h, w = image.shape[:2]
    size = (max(1, w // 2), max(1, h // 2))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


#: name -> transform of a decoded RGB photo (and a generator seeded from the photo and seed)
VIEWS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "flip": _flip,
    f"jpeg{JPEG_QUALITY}": _jpeg,
    "grey": _grey,
    "down2": _down,
}


def check_views(views: Sequence[str] | None) -> list[str]:
    """``views`` as a list of known, distinct view names; a clear error otherwise."""
    if views is None:
        return []
    if isinstance(views, str):
        raise ValueError(
            f"views: 'auto', 'none' or a list of view names such as ['flip'], not {views!r}"
        )
    names = list(views)
    for name in names:
        if name not in VIEWS:
            raise ValueError(f"views: unknown view {name!r}; choose from {', '.join(VIEWS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"views: each view once, not {names}")
    return names


#: What ``views="auto"`` trains on when the backbone is frozen: a mirror image and a JPEG
#: re-compression, the two changes other photo pipelines most often make and that cost the
#: heads most (docs/robustness.md, bench/views.md).
AUTO_VIEWS = ("flip", f"jpeg{JPEG_QUALITY}")


def resolve_views(views: Sequence[str] | str | None, frozen: bool) -> list[str]:
    """A tagger's ``views`` setting as the list of views its heads train on: ``"auto"`` is
    :data:`AUTO_VIEWS` for a frozen backbone (their features are cached) and none while
    fine-tuning; ``"none"`` / ``None`` none; a list is checked (:func:`check_views`)."""
    if views == "auto":
        return list(AUTO_VIEWS) if frozen else []
    if views == "none":
        return []
    return check_views(views)


def view_id(view: str, seed: int) -> str:
    """What identifies a view's pixels in the feature-cache key."""
    return f"{view}/v{VIEWS_VERSION}/seed{seed}"


def apply_view(image: np.ndarray, view: str, seed: int = 0) -> np.ndarray:
    """``image`` (``HxWx3`` uint8) as ``view`` makes it. Deterministic: the random choices
    (e.g. the grey level) come from ``seed`` and the image's own pixels, whatever the order
    in which photos are processed."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")
    rng = np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(image).tobytes())])
    return VIEWS[view](image, rng)


def viewed_rows(train_rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The training rows that get the extra views: all of them, or a seeded sample of
    ``fraction`` of them (sorted), the same for every view."""
    if fraction >= 1:
        return train_rows
    n = max(1, round(fraction * len(train_rows)))
    return np.sort(np.random.default_rng(seed).choice(train_rows, n, replace=False))
