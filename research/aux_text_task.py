"""Can the product names teach the image heads? (research/LOG.md, "baseColour is not a matter of
more training"). Trains the default heads (one set, no shift, no refit) on ``train.csv`` with
and without an extra multi-label task: the words of ``productDisplayName`` (the most frequent
``--vocabulary`` words of three letters or more). The words only shape the heads' shared trunk
in training; the photo alone is tagged. Scores the seven image tasks on ``test.csv``.

    python research/hold_out_split.py ../shared/datasets/fashion-products runs/held-out
    python research/aux_text_task.py ../shared/datasets/fashion-products runs/held-out \
        --seed 0 [--no-words]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

import numpy as np

from multitag import MultiTaskTagger
from multitag.data.manifest import load_manifest
from multitag.data.tasks import encode_all
from multitag.evaluation.report import report_from_arrays
from multitag.tagger.config import LabelConfig, RuntimeConfig, TrainConfig

TASKS = ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"]


def name_words(names, vocabulary: int = 400, min_count: int = 20) -> list[str]:
    """``|``-joined cells of the most frequent words (3+ letters) of each product name."""
    words = [set(re.findall(r"[a-z]+", str(n).lower())) for n in names]
    counts = collections.Counter(w for s in words for w in s)
    keep = {w for w, c in counts.most_common(vocabulary) if len(w) > 2 and c >= min_count}
    return ["|".join(sorted(s & keep)) for s in words]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("split_dir", type=Path, help="holds train.csv and test.csv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocabulary", type=int, default=400)
    parser.add_argument("--no-words", dest="words", action="store_false")
    args = parser.parse_args()
    images = args.data_root / "images"
    train = load_manifest(args.split_dir / "train.csv", images)
    test = load_manifest(args.split_dir / "test.csv", images)
    tasks = list(TASKS)
    if args.words:
        train["words"] = name_words(train["productDisplayName"], args.vocabulary)
        tasks.append("words")
    tagger = MultiTaskTagger(
        tasks,
        labels=LabelConfig(multilabel=["words"] if args.words else None),
        training=TrainConfig(seed=args.seed),
        runtime=RuntimeConfig(progress=False),
    ).fit(train)
    proba = tagger.predict_proba(test["path"].tolist(), use_cache=True)["proba"]
    image_tasks = [t for t in tagger.tasks_ if t.name in TASKS]
    report = report_from_arrays(image_tasks, encode_all(test, image_tasks), proba)
    f1 = {k: round(v["weighted_f1"], 4) for k, v in report["tasks"].items()}
    f1["mean"] = round(float(np.mean(list(f1.values()))), 4)
    print(json.dumps({"seed": args.seed, "words": args.words, "weighted_f1": f1}))


if __name__ == "__main__":
    main()
