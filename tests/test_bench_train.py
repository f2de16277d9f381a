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
