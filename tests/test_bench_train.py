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


def _embedder(seconds: float, recall: float = 0.5) -> dict:
    return {"params": {"epochs": 8}, "seconds": seconds, "cpu_seconds": 1.5 * seconds,
            "recall@1": recall, "raw_recall@1": 0.33}  # fmt: skip


def _result(runs: dict) -> dict:
    return {
        "machine": "x86_64, 2 threads",
        "n_rows": 1000,
        "n_train": 800,
        "n_val": 200,
        "feature_dim": 3305,
        "demo_training": {"epochs": 25, "batch_size": 512, "lr": 0.002, "patience": 6},
        "demo_schedule": "thorough",
        "runs": runs,
    }


def test_markdown_names_every_run_and_the_demo_total():
    """Older results (one embedder for all, no schedule columns) still render."""
    result = _result({
        "separate sets, 25 epochs": _run(300.0, 500.0, 0.93),
        "batched, 25 epochs": _run(100.0, 150.0, 0.931),
    })  # fmt: skip
    result["embedder"] = _embedder(20.0)
    md = to_markdown(result)
    assert "| | separate sets, 25 epochs | batched, 25 epochs |" in md
    assert "| **all head training, s** | 300.0 | 100.0 |" in md
    assert "| gender | 0.9300 | 0.9310 |" in md and "| best epochs | 20, 21, 19 |" in md
    # the demo's run is the batched one when there is no schedule column
    assert "All the demo's training on cached features: 120.0 s" in md
    assert "3.0x less wall time, 3.3x less CPU time" in md
    assert "| **all training on cached features, s** | - | 120.0 |" in md


def test_a_column_per_schedule_each_with_its_embedder_and_the_target_judged():
    """One column per schedule with its own embedder; the 60 s target judged per column; the
    demo's total is its schedule's column."""
    thorough = {**_run(170.0, 320.0, 0.93), "embedder": _embedder(37.0, 0.48),
                "schedule": {"epochs": 25, "batch_size": 512, "lr": 0.002}}  # fmt: skip
    quick = {**_run(38.0, 70.0, 0.92), "embedder": _embedder(15.0, 0.45), "refit": "warm, 3 epochs",
             "schedule": {"epochs": 15, "batch_size": 2048, "lr": 0.004}}  # fmt: skip
    md = to_markdown(_result({"batched, thorough schedule": thorough,
                              "batched, quick schedule": quick}))  # fmt: skip
    assert "| | batched, thorough schedule | batched, quick schedule |" in md
    assert "| schedule | batch 512, lr 0.002, 25 epochs | batch 2048, lr 0.004, 15 epochs |" in md
    assert "| refit | from scratch | warm, 3 epochs |" in md
    assert "| embedder, s | 37.0 | 15.0 |" in md
    assert "| embedder recall@1 (val rows) | 0.4800 | 0.4500 |" in md
    assert "| **all training on cached features, s** | 207.0 | 53.0 |" in md
    assert "| all training, CPU s | 375.5 | 92.5 |" in md
    assert "| <= 60 s target | not met | **met** |" in md
    assert "All the demo's training on cached features: 207.0 s" in md
    assert "Demo schedule ('thorough'): 25 epochs" in md


def test_the_trunk_floor_times_the_demos_rows_and_epochs():
    """The floor is the timed per-row cost of the trunk's matrix products times the rows and
    epochs the demo's fit and refit ran, and the markdown states it."""
    from types import SimpleNamespace

    import numpy as np

    from multitag.bench.train import trunk_floor
    from multitag.cli.demo import demo_tagger

    tagger = demo_tagger(schedule_name="thorough", head_sets=2, trunk=64, batch_size=32)
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
    assert abs(ratio - 100_000 * 21 / (80_000 * 25)) < 0.1 and floor["refit_epochs"] == 21
    # a warm refit runs its own epochs (the quick schedule: 3)
    quick = demo_tagger(schedule_name="quick", head_sets=2, trunk=64, batch_size=32)
    warm = trunk_floor(quick, data, runs)
    ratio = warm["refit_seconds"] / warm["fit_seconds"]
    assert abs(ratio - 100_000 * 3 / (80_000 * 25)) < 0.05 and warm["refit_epochs"] == 3
    md = to_markdown(
        {
            "machine": "x",
            "n_rows": 1000,
            "n_train": 800,
            "n_val": 200,
            "feature_dim": 48,
            "demo_training": {"epochs": 25, "batch_size": 32, "lr": 0.002, "patience": 6},
            "runs": runs,
            "embedder": _embedder(1.0),
            "trunk_floor": floor,
        }
    )
    assert f"**{floor['seconds']:.1f} s** before anything else runs" in md
    assert "for the 25 epochs the fit ran" in md
