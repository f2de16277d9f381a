"""How much head training can the demo shed? The demo's three head sets, batched, fitted and
then refitted on train + val under shorter schedules and narrower trunks, on the cached
features of fashion-products; val weighted F1 of the three sets averaged (before the refit)
against the seconds it took.

    python research/head_schedule.py ../shared/datasets/fashion-products \
        research/results/head_schedules.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from multitag.bench.train import BEFORE, time_batched
from multitag.cli.demo import demo_tagger
from multitag.data.derive import keyword_tags
from multitag.data.manifest import load_manifest

SCHEDULES = {
    "epochs 10": {"epochs": 10, "patience": 3},
    "epochs 10, trunk 0": {"epochs": 10, "patience": 3, "trunk": 0},
    "epochs 10, trunk 256": {"epochs": 10, "patience": 3, "trunk": 256},
    "epochs 25, trunk 0": {"trunk": 0},
    "epochs 10, lr 4e-3": {"epochs": 10, "patience": 3, "lr": 4e-3},
    "epochs 10, dropout 0.1": {"epochs": 10, "patience": 3, "dropout": 0.1, "input_dropout": 0.1},
    "epochs 12, lr 3e-3, dropout 0.1": {
        "epochs": 12,
        "patience": 3,
        "lr": 3e-3,
        "dropout": 0.1,
        "input_dropout": 0.1,
    },  # fmt: skip
}


def main(data_root: Path, out: Path) -> None:
    frame = load_manifest(data_root / "styles.csv", data_root / "images")
    frame["pattern"] = keyword_tags(frame["productDisplayName"])
    base = demo_tagger(**BEFORE)
    base.progress = False
    data = base.prepare_fit(frame)
    results = {}
    for name, overrides in SCHEDULES.items():
        tagger = demo_tagger(**{**BEFORE, **overrides})
        tagger.progress = False
        tagger.tasks_, tagger.net_ = base.tasks_, base.net_
        results[name] = time_batched(tagger, data)
        print(name, json.dumps(results[name]), flush=True)
        out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
