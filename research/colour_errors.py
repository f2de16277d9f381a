"""Where the baseColour errors of a tagger go: exact shade vs colour family (research/LOG.md).

    python research/colour_errors.py bench/bench-model ../shared/datasets/fashion-products

Scores the model on its validation split (recomputed as ``fit`` makes it: stratified on the
task with most classes, the model's val fraction and seed) from the feature cache, then
again with the 46 colour names merged into 12 families. If most errors were near-synonyms
(Navy Blue / Blue), the family score would be far higher than the exact one.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from multitag.data.manifest import load_manifest
from multitag.tagger.estimator import MultiTaskTagger
from multitag.tagger.held_out import held_out_rows

FAMILIES = {
    "black": ["Black"],
    "white": ["White", "Off White", "Cream"],
    "blue": ["Blue", "Navy Blue", "Turquoise Blue", "Teal"],
    "brown/beige": ["Brown", "Coffee Brown", "Mushroom Brown", "Tan", "Taupe", "Khaki",
                    "Beige", "Skin", "Nude"],
    "grey/metal": ["Grey", "Grey Melange", "Charcoal", "Steel", "Silver", "Metallic"],
    "red": ["Red", "Maroon", "Burgundy", "Rust"],
    "green": ["Green", "Olive", "Sea Green", "Lime Green", "Fluorescent Green"],
    "pink": ["Pink", "Peach", "Magenta", "Rose"],
    "purple": ["Purple", "Lavender", "Mauve"],
    "yellow/gold": ["Yellow", "Mustard", "Gold"],
    "orange/copper": ["Orange", "Copper", "Bronze"],
    "multi": ["Multi"],
}  # fmt: skip
FAMILY = {c: f for f, names in FAMILIES.items() for c in names}


def name_colour_agreement(frame: pd.DataFrame) -> tuple[int, float]:
    """Rows whose productDisplayName names exactly one colour, and the share of those where
    that colour is the baseColour label (text vs label, no pixels involved)."""
    names = sorted(set(frame["baseColour"]) - {""}, key=len, reverse=True)  # "Navy Blue" first
    patterns = [(c, re.compile(rf"\b{re.escape(c.lower())}\b")) for c in names]

    def named(text: str) -> str | None:
        text, found = f" {text.lower()} ", []
        for colour, pattern in patterns:
            if pattern.search(text):
                found.append(colour)
                text = pattern.sub(" ", text)
        return found[0] if len(found) == 1 else None

    colour = frame["productDisplayName"].map(named)
    has = colour.notna() & (frame["baseColour"] != "")
    return int(has.sum()), float((colour[has] == frame["baseColour"][has]).mean())


def main(model_dir: str, data_root: str) -> None:
    root = Path(data_root)
    frame = load_manifest(root / "styles.csv", root / "images")
    tagger = MultiTaskTagger.load(model_dir)
    tagger.set_params(runtime__progress=False)
    val = held_out_rows(tagger, frame, "styles.csv").frame  # its validation photos
    val = val[val["baseColour"] != ""]
    out = tagger.predict_proba(val["path"].tolist(), use_cache=True)
    task = next(t for t in tagger.tasks_ if t.name == "baseColour")
    pred = np.asarray(task.classes)[out["proba"]["baseColour"].argmax(1)]
    truth = val["baseColour"].to_numpy()
    fam_pred = np.array([FAMILY.get(c, c) for c in pred])
    fam_truth = np.array([FAMILY.get(c, c) for c in truth])
    wrong = pred != truth
    print(f"{len(val)} val images with a baseColour label")
    print(f"exact colour:  accuracy {np.mean(~wrong):.4f}  weighted F1 "
          f"{f1_score(truth, pred, average='weighted'):.4f}")  # fmt: skip
    print(f"colour family: accuracy {np.mean(fam_pred == fam_truth):.4f}  weighted F1 "
          f"{f1_score(fam_truth, fam_pred, average='weighted'):.4f}")  # fmt: skip
    print(f"errors inside one family: {np.mean(fam_pred[wrong] == fam_truth[wrong]):.1%}")
    pairs = pd.Series([f"{t} -> {p}" for t, p in zip(truth[wrong], pred[wrong])])
    print("most common errors (label -> prediction):")
    print(pairs.value_counts().head(12).to_string())
    rows, share = name_colour_agreement(frame)
    print(f"display name names one colour in {rows} rows; it is the label in {share:.1%}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
