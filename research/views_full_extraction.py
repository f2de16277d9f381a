"""What extra training views cost at full size: one encoder pass per view over all the
training rows of the source-shift benchmark's model (``bench/bench-model-shift``).

Fills the shared feature cache with each view's features of the model's training photos
(rows a view already has cached are skipped and counted apart) and records, per view, the
wall and CPU seconds of the pass, the photos it encoded and the view's cache size on disk.
With ``--first F`` the seeded share F of the rows that ``view_fraction=F`` gives the views
(:func:`multitag.data.views.viewed_rows`, rows in the benchmark's order) is encoded first,
every view, then the rest, each part timed apart. ``multitag.bench.views`` then trains
heads on these cached views. Run at ``nice -n 19``:
``python research/views_full_extraction.py --views flip,jpeg60 --first 0.25``.
"""

from __future__ import annotations

import argparse
import resource
import time
from datetime import date
from pathlib import Path

import numpy as np

from multitag.bench.provenance import git_commit
from multitag.bench.views import cache_size
from multitag.core.io import write_json
from multitag.data.manifest import load_manifest
from multitag.data.views import viewed_rows
from multitag.tagger.estimator import MultiTaskTagger
from multitag.vision.extraction import extract_features


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("../../main/bench/bench-model-shift"))
    parser.add_argument(
        "--data-root", type=Path, default=Path("../shared/datasets/fashion-products")
    )
    parser.add_argument("--views", default="flip,jpeg60")
    parser.add_argument("--first", type=float, default=1.0, help="Share encoded first.")
    parser.add_argument(
        "--out", type=Path, default=Path("research/results/views_full_extraction.json")
    )
    args = parser.parse_args()
    tagger = MultiTaskTagger.load(args.model)
    catalogue = load_manifest(args.data_root / "styles.csv", args.data_root / "images")
    train_ids = {str(i) for i in tagger.split_["train_ids"]}
    train = catalogue[catalogue["id"].astype(str).isin(train_ids)].sort_values("id")
    seed = tagger.settings("training").seed
    rows = np.arange(len(train))
    first = viewed_rows(rows, args.first, seed)
    parts = (
        [("first", first), ("rest", np.setdiff1d(rows, first))]
        if args.first < 1
        else [("all", rows)]
    )
    out = {"date": date.today().isoformat(), "commit": git_commit(), "photos": len(train),
           "model": str(args.model), "first": args.first, "views": {}}  # fmt: skip
    for part, picked in parts:
        paths = train["path"].iloc[picked].tolist()
        for view in [v.strip() for v in args.views.split(",")]:
            before = cache_size(tagger, view)
            wall, cpu = time.perf_counter(), _cpu()
            res = extract_features(
                tagger.net_.encoder,
                paths,
                cache_dir=tagger.feature_cache_dir(),
                encoder_id=tagger.encoder_id(),
                precision=tagger.settings("training").precision,
                engine=tagger.settings("runtime").engine,
                view=view,
                view_seed=seed,
            )
            after = cache_size(tagger, view)
            out["views"].setdefault(view, {})[part] = {
                "photos": len(paths),
                "cached_before": before["rows"],
                "encoded": after["rows"] - before["rows"],
                "errors": len(res.errors),
                "wall_s": round(time.perf_counter() - wall, 1),
                "cpu_s": round(_cpu() - cpu, 1),
                "cache_rows": after["rows"],
                "cache_bytes": after["bytes"],
            }
            print(view, part, out["views"][view][part], flush=True)
            write_json(args.out, out)


if __name__ == "__main__":
    main()
