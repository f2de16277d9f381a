"""bench/train.md from a bench.train result: one column per run, the demo's total, the ratio."""

from __future__ import annotations

from multitag.bench.train import to_markdown


def _run(seconds: float, cpu: float, f1: float) -> dict:
    return {
        "fit_seconds": seconds / 2,
        "refit_seconds": seconds / 2,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "best_epochs": [20, 21, 19],
        "weighted_f1": {"gender": f1, "articleType": f1 - 0.05},
        "mean_f1": f1 - 0.025,
    }


def test_markdown_names_every_run_and_the_demo_total():
    result = {
        "machine": "x86_64, 2 threads",
        "n_rows": 1000,
        "n_train": 800,
        "n_val": 200,
        "feature_dim": 3305,
        "demo_training": {"epochs": 25, "batch_size": 512, "lr": 0.002, "patience": 6},
        "runs": {
            "separate sets, 25 epochs": _run(300.0, 500.0, 0.93),
            "batched, 25 epochs": _run(100.0, 150.0, 0.931),
        },
        "embedder": {
            "params": {"epochs": 8},
            "seconds": 20.0,
            "cpu_seconds": 30.0,
            "recall@1": 0.5,
            "raw_recall@1": 0.33,
        },  # fmt: skip
    }
    md = to_markdown(result)
    assert "| | separate sets, 25 epochs | batched, 25 epochs |" in md
    assert "| **all head training, s** | 300.0 | 100.0 |" in md
    assert "| gender | 0.9300 | 0.9310 |" in md and "| best epochs | 20, 21, 19 |" in md
    # the demo's run is the batched one when its schedule is the one before
    assert "All the demo's training on cached features: 120.0 s" in md
    assert "3.0x less wall time, 3.3x less CPU time" in md
    result["runs"]["batched, demo schedule"] = _run(40.0, 60.0, 0.92)
    md = to_markdown(result)
    assert "All the demo's training on cached features: 60.0 s" in md
    assert "7.5x less wall time" in md


def test_the_trunk_floor_times_the_demos_rows_and_epochs():
    """The floor is the timed per-row cost of the trunk's matrix products times the rows and
    epochs the demo's fit and refit ran, and the markdown states it."""
    from types import SimpleNamespace

    import numpy as np

    from multitag.bench.train import trunk_floor
    from multitag.cli.demo import demo_tagger

    tagger = demo_tagger(head_sets=2, trunk=64, batch_size=32)
    data = SimpleNamespace(
        features=SimpleNamespace(features=np.zeros((10, 48), np.float32)),
        train_rows=np.arange(80_000),
        val_rows=np.arange(20_000),
    )
    runs = {"batched, 25 epochs": {**_run(10.0, 10.0, 0.9), "epochs_run": 25}}
    floor = trunk_floor(tagger, data, runs)
    assert floor["fit_seconds"] > 0 and floor["gflops"] > 0
    assert floor["dtype"] in ("bfloat16", "float32")
    # one per-row cost: the refit's 100,000 rows x 21 best epochs against the fit's 80,000 x 25
    ratio = floor["refit_seconds"] / floor["fit_seconds"]
    assert abs(ratio - 100_000 * 21 / (80_000 * 25)) < 0.1
    md = to_markdown(
        {
            "machine": "x",
            "n_rows": 1000,
            "n_train": 800,
            "n_val": 200,
            "feature_dim": 48,
            "demo_training": {"epochs": 25, "batch_size": 32, "lr": 0.002, "patience": 6},
            "runs": runs,
            "embedder": {
                "params": {},
                "seconds": 1.0,
                "cpu_seconds": 1.0,
                "recall@1": 0.5,
                "raw_recall@1": 0.3,
            },  # fmt: skip
            "trunk_floor": floor,
        }
    )
    assert f"**{floor['seconds']:.1f} s** before anything else runs" in md
    assert "for the 25 epochs the fit ran" in md
