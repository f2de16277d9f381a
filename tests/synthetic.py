"""A generated product catalogue for the fast tier: photos of coloured shapes on white, with
labels a tagger can learn, so tagging, the catalogue and the API run end to end without the
real data set (real Lite0 weights from their package; a small input size keeps it quick)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

SHAPES = ("Tshirts", "Trousers", "Shoes", "Watches")
COLOURS = {
    "Red": (200, 30, 30),
    "Blue": (30, 60, 200),
    "Green": (40, 160, 60),
    "Black": (20, 20, 20),
}
TASKS = ["articleType", "baseColour", "gender"]


def _draw(kind: str, colour: tuple[int, int, int], rng: np.random.Generator) -> Image.Image:
    img = Image.new("RGB", (60, 80), (255, 255, 255))
    d = ImageDraw.Draw(img)
    dx, dy = (int(v) for v in rng.integers(-4, 5, 2))
    if kind == "Tshirts":
        d.rectangle([12 + dx, 14 + dy, 48 + dx, 50 + dy], fill=colour)
        d.rectangle([4 + dx, 14 + dy, 56 + dx, 26 + dy], fill=colour)
    elif kind == "Trousers":
        d.rectangle([16 + dx, 8 + dy, 28 + dx, 72 + dy], fill=colour)
        d.rectangle([32 + dx, 8 + dy, 44 + dx, 72 + dy], fill=colour)
    elif kind == "Shoes":
        d.polygon(
            [(8 + dx, 60 + dy), (52 + dx, 60 + dy), (52 + dx, 48 + dy), (30 + dx, 44 + dy)],
            fill=colour,
        )
    else:
        d.ellipse([14 + dx, 24 + dy, 46 + dx, 56 + dy], fill=colour)
        d.rectangle([26 + dx, 6 + dy, 34 + dx, 74 + dy], fill=(90, 90, 90))
    noise = rng.integers(-6, 7, (80, 60, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))


def synthetic_frame(root: Path, n: int = 160, seed: int = 0) -> pd.DataFrame:
    """``n`` generated JPEG photos under ``root`` and their manifest (string ids, in order)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        kind = SHAPES[i % len(SHAPES)]
        colour = list(COLOURS)[(i // len(SHAPES)) % len(COLOURS)]
        path = root / f"{1000 + i}.jpg"
        _draw(kind, COLOURS[colour], rng).save(path, quality=92)
        gender = "Women" if kind in ("Tshirts", "Watches") and i % 3 else "Men"
        rows.append(
            {
                "id": str(1000 + i),
                "path": str(path),
                "articleType": kind,
                "baseColour": colour,
                "gender": gender,
            }
        )
    return pd.DataFrame(rows)
