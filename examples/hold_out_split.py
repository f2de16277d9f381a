"""Hold out a test set before training anything (docs/study.md, "The product path on a
held-out test set").

    python examples/hold_out_split.py ../shared/datasets/fashion-products OUT_DIR \
        [--fraction 0.15] [--seed 7] [--stratify articleType] [--no-group-copies]

Writes ``OUT_DIR/train.csv`` and ``OUT_DIR/test.csv``: the rows of ``styles.csv`` (all its
columns), split by the tagger's own stratified split (``split_indices``: within each class,
ordered by id and shuffled with ``seed``; byte-identical copies of a photo stay on one side).
Train taggers on ``train.csv`` only and score them on ``test.csv`` with ``multitag evaluate
--held-out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from multitag.data.manifest import load_manifest, split_indices
from multitag.data.tasks import infer_tasks
from multitag.tagger.held_out import photo_digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--stratify", default="articleType")
    parser.add_argument(
        "--no-group-copies",
        dest="group_copies",
        action="store_false",
        help="split by id only, as before 2026-12-04 (byte-identical copies may straddle)",
    )
    args = parser.parse_args()
    styles_csv = args.data_root / "styles.csv"
    styles = pd.read_csv(styles_csv, dtype=str, keep_default_na=False, na_values=[""])
    frame = load_manifest(styles_csv, args.data_root / "images")
    task = infer_tasks(frame, [args.stratify])[0]
    # copies of one photo under several ids (the catalogue has 448 such groups) stay together
    groups = photo_digests(frame["path"]) if args.group_copies else None
    _, test = split_indices(frame, task, args.fraction, seed=args.seed, groups=groups)
    is_test = styles["id"].isin(set(frame["id"].iloc[test]))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    styles[~is_test].to_csv(args.out_dir / "train.csv", index=False)
    styles[is_test].to_csv(args.out_dir / "test.csv", index=False)
    print(f"{(~is_test).sum()} train rows, {is_test.sum()} test rows -> {args.out_dir}")


if __name__ == "__main__":
    main()
