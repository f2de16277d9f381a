"""Train ensemble members with and without refit in one run (research/LOG.md, "Refitted members in
an ensemble").

    python research/hold_out_split.py ../shared/datasets/fashion-products runs/held-out
    python research/refit_members.py ../shared/datasets/fashion-products runs/held-out \
        runs/members --backbone tf_efficientnet_lite1 --framing auto
    python research/held_out_ensemble.py runs/members/refit/* --train runs/held-out/train.csv \
        --test runs/held-out/test.csv --images ../shared/datasets/fashion-products/images

Fits ``MultiTaskTagger(heads=HeadConfig(head_sets=3, prior_shift="auto"),
training=TrainConfig(refit=True))`` on ``train.csv``, as ``multitag train --head-sets 3
--prior-shift auto --refit`` does, and saves it to
``OUT/refit/NAME``. It also saves the same tagger as it stood just before its refit to
``OUT/plain/NAME``: that is the model ``--refit`` off would have saved, with its val rows
in ``split.csv``. So one fit gives both columns of the comparison. NAME is the backbone's
short name and the framing, e.g. ``lite1-auto``. Run one process per member; two side by
side with ``OMP_NUM_THREADS=1`` use 2 cores well.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np

from multitag import MultiTaskTagger
from multitag.data.manifest import load_manifest
from multitag.tagger.config import FeatureConfig, HeadConfig, TrainConfig

TASKS = ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"]


class KeepsPlainCopy(MultiTaskTagger):
    """A tagger that keeps a deep copy of itself, taken just before the refit, in ``plain_``."""

    def refit_heads(self, features, targets, train_rows, val_rows):
        self.plain_ = copy.deepcopy(self)
        self.plain_rows_ = (train_rows, val_rows)
        return super().refit_heads(features, targets, train_rows, val_rows)


def plain_model(tagger: KeepsPlainCopy) -> MultiTaskTagger:
    """The copy taken before the refit, with the split ``fit(refit=False)`` records: the
    refitted split lists the union of the rows (sorted), so each side is picked out of it."""
    plain, (train_rows, val_rows) = tagger.plain_, tagger.plain_rows_
    rows = np.union1d(train_rows, val_rows)

    def pick(key: str, wanted) -> list:
        return [tagger.split_[key][i] for i in np.searchsorted(rows, wanted)]

    plain.refit_ = None
    plain.split_ = {
        "train_ids": pick("train_ids", train_rows),
        "val_ids": pick("train_ids", val_rows),
        "train_digests": pick("train_digests", train_rows),
        "val_digests": pick("train_digests", val_rows),
    }
    for attr in ("val_features_", "val_paths_", "val_targets_"):
        setattr(plain, attr, getattr(tagger, attr))
    return plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("split_dir", type=Path, help="holds train.csv (hold_out_split.py)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--framing", default="auto", choices=["auto", "none"])
    args = parser.parse_args()
    frame = load_manifest(args.split_dir / "train.csv", args.data_root / "images")
    tagger = KeepsPlainCopy(
        TASKS,
        features=FeatureConfig(backbone=args.backbone, framing=args.framing),
        heads=HeadConfig(head_sets=3, prior_shift="auto"),
        training=TrainConfig(refit=True),
    )
    start = time.time()
    tagger.fit(frame)
    name = f"{args.backbone.removeprefix('tf_efficientnet_')}-{args.framing}"
    plain = plain_model(tagger)
    del tagger.plain_, tagger.plain_rows_
    tagger.save(args.out_dir / "refit" / name)
    plain.save(args.out_dir / "plain" / name)
    print(f"{name}: fit {time.time() - start:.0f} s, refit epochs {tagger.refit_['epochs']}; "
          f"saved {args.out_dir}/refit/{name} and {args.out_dir}/plain/{name}")  # fmt: skip


if __name__ == "__main__":
    main()
