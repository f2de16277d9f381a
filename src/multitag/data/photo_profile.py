"""What a set of photos looks like (size, aspect ratio, colour mode), and how two sets differ.

A tagger's scores on its validation split hold for photos like its training photos. A model
records the profile of its training photos (:func:`photo_profile`, read from the file headers
of a seeded sample, no pixel decoded) and ``evaluate`` compares the evaluated photos with it
(:func:`profile_warnings`), so a report on photos from another source says so, with numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

__all__ = ["PROFILE_SAMPLE", "photo_profile", "profile_warnings"]

#: How many photos a profile reads (a seeded sample; headers only, so it costs milliseconds).
PROFILE_SAMPLE = 500
#: Thresholds of a clear difference: pixel count ratio, aspect ratio change, colour-mode share.
PIXEL_RATIO = 2.0
ASPECT_CHANGE = 0.15
MODE_SHARE_CHANGE = 0.2


def photo_profile(paths: Sequence, seed: int = 0, n: int = PROFILE_SAMPLE) -> dict | None:
    """Median width, height, pixel count and aspect ratio, and the share of each colour mode
    (``RGB``, ``L`` greyscale, ``RGBA``, ``CMYK``, ``P`` palette, ...) of up to ``n`` of
    ``paths``; ``None`` when no file could be read."""
    rng = np.random.default_rng(seed)
    sizes, modes = [], Counter()
    for i in sorted(rng.choice(len(paths), min(n, len(paths)), replace=False)):
        try:
            with Image.open(paths[i]) as im:
                sizes.append(im.size)
                modes[im.mode] += 1
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    if not sizes:
        return None
    w, h = np.array(sizes, dtype=float).T
    return {
        "n": len(sizes),
        "width": float(np.median(w)),
        "height": float(np.median(h)),
        "pixels": float(np.median(w * h)),
        "aspect": round(float(np.median(w / h)), 3),
        "modes": {m: round(c / len(sizes), 3) for m, c in modes.most_common()},
    }


def profile_warnings(trained: Mapping | None, evaluated: Mapping | None) -> list[str]:
    """One sentence per clear difference between the training photos' profile and the
    evaluated photos' (empty when either is unknown or they look alike)."""
    if not trained or not evaluated:
        return []
    out = []
    ratio = evaluated["pixels"] / max(trained["pixels"], 1.0)
    if ratio >= PIXEL_RATIO or ratio <= 1 / PIXEL_RATIO:
        out.append(
            f"photo size: the evaluated photos are typically {evaluated['width']:.0f}x"
            f"{evaluated['height']:.0f} px, the training photos {trained['width']:.0f}x"
            f"{trained['height']:.0f} px ({ratio:.1f}x the pixels)"
        )
    change = abs(evaluated["aspect"] - trained["aspect"]) / trained["aspect"]
    if change >= ASPECT_CHANGE:
        out.append(
            f"aspect ratio: width / height is typically {evaluated['aspect']:.2f} here, "
            f"{trained['aspect']:.2f} in training"
        )
    for mode in sorted(set(trained["modes"]) | set(evaluated["modes"])):
        a, b = trained["modes"].get(mode, 0.0), evaluated["modes"].get(mode, 0.0)
        if abs(b - a) >= MODE_SHARE_CHANGE:
            out.append(f"colour mode {mode}: {b:.0%} of the evaluated photos, {a:.0%} in training")
    return out
