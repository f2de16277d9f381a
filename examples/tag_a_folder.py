"""Train a tagger on a labelled manifest, then tag a folder of new photos (Python API).

    python examples/tag_a_folder.py styles.csv images/ photos/ \
        --tasks gender,articleType,baseColour --out runs/example

The same steps as ``multitag train`` then ``multitag tag``: the manifest (CSV, TSV, Parquet,
JSON Lines or a folder per class) gives the labels, ``images`` the folder its paths are
relative to. The model is saved to ``OUT/model`` and the tags go to ``OUT/tags.csv``, with
photos that could not be read listed in ``OUT/tags.rejects.csv`` instead of stopping the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from multitag import MultiTaskTagger
from multitag.data.manifest import load_manifest
from multitag.evaluation.report import evaluate_split
from multitag.tagger.batch import tag_to_file
from multitag.tagger.config import FeatureConfig, TrainConfig


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("manifest", type=Path, help="labelled photos: id (or path) + label columns")
    parser.add_argument("images", type=Path, help="the folder the manifest's photos are in")
    parser.add_argument("folder", type=Path, help="the photos to tag")
    parser.add_argument("--tasks", required=True, help="label columns to learn, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("runs/example"))
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's")
    parser.add_argument("--epochs", type=int, default=25, help="maximum head epochs")
    args = parser.parse_args(argv)

    frame = load_manifest(args.manifest, args.images)
    tagger = MultiTaskTagger(
        args.tasks.split(","),
        features=FeatureConfig(image_size=args.image_size),
        training=TrainConfig(epochs=args.epochs),
    ).fit(frame)
    scores = evaluate_split(tagger)["tasks"]  # on the 20 % of rows fit kept aside
    for task, metrics in scores.items():
        print(f"{task}: weighted F1 {metrics['weighted_f1']:.3f} on the validation rows")
    model_dir = tagger.save(args.out / "model")

    out, rejects, n_tagged, n_rejected = tag_to_file(tagger, [args.folder], args.out / "tags.csv")
    print(f"tagged {n_tagged} photos -> {out}; model -> {model_dir}")
    if rejects is not None:
        print(f"{n_rejected} could not be read -> {rejects}")
    return out


if __name__ == "__main__":
    main()
