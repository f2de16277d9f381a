"""Does ``flip_invariant`` (mirror-symmetric heads) cost validation accuracy at full size? The
default tagger fitted with and without it on the same cached features and split of
fashion-products; weighted F1 of each on the whole val split.

    python research/flip_invariant_full_size.py ../shared/datasets/fashion-products \
        research/results/flip_invariant_full_size.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from multitag import MultiTaskTagger
from multitag.bench.core import TASKS
from multitag.cli.demo import DEMO_IMAGE_SIZE
from multitag.data.manifest import load_manifest
from multitag.evaluation.report import evaluate_split
from multitag.tagger.config import from_flat


def main(data_root: Path, out: Path) -> None:
    frame = load_manifest(data_root / "styles.csv", data_root / "images")
    results = {}
    for name, overrides in [("default", {}), ("flip_invariant", {"flip_invariant": True})]:
        start = time.perf_counter()
        settings = from_flat({"image_size": DEMO_IMAGE_SIZE, **overrides})
        tagger = MultiTaskTagger(TASKS, **settings).fit(frame)
        seconds = time.perf_counter() - start
        metrics = evaluate_split(tagger)
        results[name] = {
            "fit_s": round(seconds, 1),
            "n_val": metrics["split"]["n_val"],
            "weighted_f1": {k: round(v["weighted_f1"], 4) for k, v in metrics["tasks"].items()},
        }
        print(name, results[name], flush=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
