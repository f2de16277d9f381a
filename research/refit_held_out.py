"""What training the heads on the validation rows too buys on photos nobody trained on
(research/LOG.md, "Training on the validation rows too: refit").

    python research/hold_out_split.py ../shared/datasets/fashion-products runs/held-out
    python research/refit_held_out.py ../shared/datasets/fashion-products runs/held-out \
        [--seeds 0 1] [--framing-fill 0.87]

For each seed: the default tagger's preparation on ``train.csv`` (Lite0 frozen, 224 px,
product framing, its 20 % val split), one set of heads with the epoch chosen on val, then
the refit of ``TrainConfig(refit=True)``: the same seed trained again on train + val for
that many epochs. Both are scored on ``test.csv`` (weighted F1 per task); the table goes to
stdout and ``OUT_DIR/refit_held_out.json``. The framing is pinned to the one ``"auto"``
measures on this catalogue, so the cached features are reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from multitag import MultiTaskTagger
from multitag.data.manifest import load_manifest
from multitag.data.tasks import encode_all
from multitag.evaluation.report import report_from_arrays
from multitag.tagger.config import FeatureConfig, RuntimeConfig, TrainConfig
from multitag.vision.extraction import extract_features

TASKS = ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"]


def _score(tagger, heads, features, targets) -> dict:
    """Weighted F1 per task (and their mean) of ``heads`` on the test features."""
    tagger.net_.heads = heads
    report = report_from_arrays(tagger.tasks_, targets, tagger.predict_proba_features(features))
    out = {k: m["weighted_f1"] for k, m in report["tasks"].items()}
    return {**out, "mean": report["summary"]["mean_weighted_f1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("split_dir", type=Path, help="holds train.csv and test.csv")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--framing-fill", type=float, default=0.87)
    args = parser.parse_args()
    images = args.data_root / "images"
    train = load_manifest(args.split_dir / "train.csv", images)
    test = load_manifest(args.split_dir / "test.csv", images)
    framing = {"aspect": 0.75, "fill": args.framing_fill, "threshold": 30}
    results = {}
    for seed in args.seeds:
        tagger = MultiTaskTagger(
            TASKS,
            features=FeatureConfig(framing=framing),
            training=TrainConfig(seed=seed),
            runtime=RuntimeConfig(progress=False),
        )
        data = tagger.prepare_fit(train)
        x, y, rows, val = data.features.features, data.targets, data.train_rows, data.val_rows
        test_x = extract_features(
            tagger.net_.encoder, test["path"].tolist(), cache_dir=tagger.feature_cache_dir(),
            encoder_id=tagger.encoder_id(), precision=tagger.settings("training").precision,
            engine=tagger.settings("runtime").engine,
            progress=False,
        ).features  # fmt: skip
        test_y = encode_all(test, tagger.tasks_)

        start = time.perf_counter()
        heads, history = tagger.fit_head_set(x, y, rows, val, seed, False)
        before = _score(tagger, heads, test_x, test_y)
        fitted = time.perf_counter()
        refit = tagger.refit_head_set(x, y, rows, val, seed, history.best_epoch + 1)
        after = _score(tagger, refit, test_x, test_y)
        results[seed] = {
            "before": before, "after": after, "best_epoch": history.best_epoch,
            "rows": [len(rows), len(val), len(test)],
            "seconds": [fitted - start, time.perf_counter() - fitted],
        }  # fmt: skip
        print(f"seed {seed}: mean {before['mean']:.4f} -> {after['mean']:.4f}", flush=True)
    print("| task | " + " | ".join(f"seed {s}: before → refit" for s in results) + " |")
    print("|---|" + "---:|" * len(results))
    for name in [*TASKS, "mean"]:
        cells = [f"{r['before'][name]:.4f} → {r['after'][name]:.4f}" for r in results.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    path = args.split_dir / "refit_held_out.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
