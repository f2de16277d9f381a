"""How much head training can the demo shed? The demo's three head sets, batched, fitted and
then refitted on train + val under shorter schedules and narrower trunks, on the cached
features of fashion-products; val weighted F1 of the three sets averaged (before the refit)
against the seconds it took. Last, the same schedule on a PCA projection of the standardised
features (512 or 1,024 components fitted on the training rows), which shrinks the trunk's
first layer.

    python research/head_schedule.py ../shared/datasets/fashion-products \
        research/results/head_schedules.json
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

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


def pca_features(data, k: int) -> tuple[np.ndarray, float]:
    """Every row's standardised features projected on the top ``k`` principal axes of the
    training rows, and the seconds that took."""
    start = time.perf_counter()
    x = data.features.features.astype(np.float32)
    train = x[data.train_rows]
    mean, scale = train.mean(0), train.std(0) + 1e-6
    z = (train - mean) / scale
    _, vectors = np.linalg.eigh(z.T @ z / len(z))
    projected = ((x - mean) / scale) @ vectors[:, ::-1][:, :k].astype(np.float32)
    return projected.astype(np.float32), time.perf_counter() - start


def main(data_root: Path, out: Path) -> None:
    frame = load_manifest(data_root / "styles.csv", data_root / "images")
    frame["pattern"] = keyword_tags(frame["productDisplayName"])
    base = demo_tagger(**BEFORE)
    base.set_params(runtime__progress=False)
    data = base.prepare_fit(frame)
    results = {}
    for name, overrides in SCHEDULES.items():
        tagger = demo_tagger(**{**BEFORE, **overrides})
        tagger.set_params(runtime__progress=False)
        tagger.tasks_, tagger.net_ = base.tasks_, base.net_
        results[name] = time_batched(tagger, data)
        print(name, json.dumps(results[name]), flush=True)
        out.write_text(json.dumps(results, indent=2))
    for k in (512, 1024):
        projected, seconds = pca_features(data, k)
        pca_data = replace(data, features=replace(data.features, features=projected))
        tagger = demo_tagger(**BEFORE)
        tagger.set_params(runtime__progress=False)
        tagger.tasks_, tagger.net_ = base.tasks_, base.net_
        results[f"pca {k}"] = {**time_batched(tagger, pca_data), "pca_seconds": round(seconds, 1)}
        print(f"pca {k}", json.dumps(results[f"pca {k}"]), flush=True)
        out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
