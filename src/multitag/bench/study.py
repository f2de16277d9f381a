"""Full-size study benchmark: the product tagger fine-tuned above a freeze point vs frozen,
against the transfer-learning study's targets (issue: transfer-learning study).

Same data, split, tasks and image size as the core benchmark. The frozen tagger is trained
in the same run (``freeze="all"``: heads on cached features), so every row comes from one
machine and one feature cache. Each fine-tuned run is ``TrainConfig(freeze=STAGE)``:
heads warm-started on the cached features, then the stages above ``STAGE`` and the heads
trained with hard sharing on cached prefix activations. With ``--head-sets N`` every model
also fits N-1 more sets of heads (other seeds) on its final features; both the single model
(the first set) and the ensemble are scored, so the gain is measured on the same backbone.

    python -m multitag.bench.study --out bench/ --freeze blocks.5 blocks.4 --epochs 4 --head-sets 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from multitag.bench.core import TASKS, write_benchmarks_md
from multitag.cli.demo import DEMO_IMAGE_SIZE
from multitag.core import runtime
from multitag.core.io import write_json, write_text
from multitag.data.manifest import load_manifest
from multitag.evaluation.report import evaluate_split
from multitag.tagger.config import from_flat
from multitag.tagger.estimator import MultiTaskTagger
from multitag.vision.backbones import DEFAULT_BACKBONE
from multitag.vision.engines import runner_for

STUDY_TARGETS = {  # weighted F1, from the study issue
    "gender": 0.93,
    "masterCategory": 0.99,
    "subCategory": 0.97,
    "articleType": 0.90,
    "baseColour": 0.78,
    "season": 0.75,
    "usage": 0.91,
}


def _scores(metrics: dict) -> dict:
    return {
        t: {"weighted_f1": m["weighted_f1"], "accuracy": m["accuracy"]}
        for t, m in metrics["tasks"].items()
    }


def _ms_per_image(fn, n: int, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1000 * best / n


def inference_cost(tagger: MultiTaskTagger, n: int = 1024) -> dict:
    """Milliseconds per image of the encoder (inference engine, batch 64) and of the heads
    alone on its features: the first set and all sets (same run, best of 5)."""
    net = tagger.net_.eval()
    runner = runner_for(
        net.encoder, tagger.settings("runtime").engine, tagger.settings("training").precision
    )
    size = net.encoder.preprocessing.image_size
    images = torch.randint(0, 256, (64, 3, size, size), dtype=torch.uint8)
    features = torch.as_tensor(tagger.val_features_[:n])
    heads = net.heads
    first = heads.members[0] if hasattr(heads, "members") else heads
    with torch.inference_mode():
        runner(images)  # warm-up / engine conversion
        return {
            "encoder": _ms_per_image(lambda: runner(images), 64),
            "heads": _ms_per_image(lambda: first(features), len(features)),
            "all_heads": _ms_per_image(lambda: heads(features), len(features)),
        }


def run_one(
    frame,
    freeze: str,
    epochs: int,
    image_size: int,
    model_dir: Path,
    ensemble: int = 1,
    backbone: str = DEFAULT_BACKBONE,
) -> dict:
    """Fit, score and save one tagger (frozen for ``freeze="all"``); return its record.
    ``tasks``: the single model's scores; ``ensemble_tasks``: with all ``ensemble`` head sets."""
    tagger = MultiTaskTagger(  # squash-resize, as bench/study.md and research/LOG.md measured
        TASKS, **from_flat(dict(
            backbone=backbone, image_size=image_size, freeze=freeze, finetune_epochs=epochs,
            head_sets=ensemble, framing="none",
        )),
    )  # fmt: skip
    start = time.perf_counter()
    tagger.fit(frame)
    seconds = time.perf_counter() - start
    record = {"freeze": freeze, "fit_seconds": seconds, "ensemble": ensemble,
              "head_seconds": tagger.history_.seconds, "model_dir": str(model_dir)}  # fmt: skip
    if ensemble > 1:
        record["ensemble_tasks"] = _scores(evaluate_split(tagger))
        record["member_head_seconds"] = [h.seconds for h in tagger.member_histories_]
        heads = tagger.net_.heads
        tagger.net_.heads = heads.members[0]  # the single model: the first set of heads
        record["tasks"] = _scores(evaluate_split(tagger))
        tagger.net_.heads = heads
    else:
        record["tasks"] = _scores(evaluate_split(tagger))
    tagger.save(model_dir)
    record["inference_ms_per_image"] = inference_cost(tagger)
    if freeze != "all":
        hist = tagger.finetune_history_
        block = tagger.net_.encoder.block_index(freeze)
        upper = tagger.net_.encoder.model.blocks[block + 1 :]
        record |= {
            "epochs": epochs,
            "finetune_seconds": hist.seconds,
            "finetune_val_score": hist.val_score,
            "best_epoch": hist.best_epoch,
            "tuned_backbone_params": sum(p.numel() for p in upper.parameters())
            + sum(p.numel() for p in tagger.net_.encoder.model.conv_head.parameters()),
        }
    return record


def run(
    data_root: Path,
    out_dir: Path,
    freezes: list[str],
    epochs: int,
    image_size: int,
    ensemble: int = 1,
    backbone: str = DEFAULT_BACKBONE,
) -> dict:
    frame = load_manifest(data_root / "styles.csv", data_root / "images")
    runs: dict[str, dict] = {}
    for freeze in ["all", *freezes]:
        runs[freeze] = run_one(frame, freeze, epochs, image_size,
                               out_dir / f"bench-model-{freeze}", ensemble, backbone)  # fmt: skip
        result = {"backbone": backbone, "image_size": image_size, "n_images": len(frame), "runs": runs,
                  "bf16": runtime.cpu_has_bf16(), "targets_weighted_f1": STUDY_TARGETS}  # fmt: skip
        write_json(out_dir / "study.json", result)  # after each run: a kill loses one run
        write_text(out_dir / "study.md", markdown(result))
    return result


def markdown(r: dict) -> str:
    runs: dict[str, dict] = {}
    label: dict[str, str] = {}
    for n, x in r["runs"].items():  # one column per model, then per ensemble
        runs[n], label[n] = x, "frozen" if n == "all" else f"tuned above `{n}`"
        if "ensemble_tasks" in x:
            key = f"{n}+ensemble"
            runs[key] = {**x, "tasks": x["ensemble_tasks"]}
            label[key] = f"{label[n]}, {x['ensemble']} head sets"
    names = list(runs)
    lines = [
        "## Study targets at full size (`python -m multitag.bench.study`)",
        "",
        f"All {r['n_images']} fashion-products images, {r['image_size']} px, "
        f"`{r.get('backbone', DEFAULT_BACKBONE)}`, the core "
        "benchmark's tasks and 20 % val split (weighted F1 on it), all rows trained in this "
        "run. 'frozen' = heads on cached backbone features; 'tuned above' = the same warm "
        "start, then the stages after that block and the heads fine-tuned with hard sharing "
        f"on cached prefix activations ({'bf16' if r.get('bf16', True) else 'fp32'}). The "
        "single models have the same architecture, so the same inference cost.",
        "",
        "| task | target | " + " | ".join(label[n] for n in names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for task, target in r["targets_weighted_f1"].items():
        cells = []
        for n in names:
            f1 = runs[n]["tasks"][task]["weighted_f1"]
            cells.append(f"**{f1:.4f}**" if f1 >= target else f"{f1:.4f}")
        lines.append(f"| {task} | {target:.2f} | " + " | ".join(cells) + " |")
    means = [
        sum(runs[n]["tasks"][t]["weighted_f1"] for t in r["targets_weighted_f1"])
        / len(r["targets_weighted_f1"])
        for n in names
    ]
    lines.append("| mean | | " + " | ".join(f"{m:.4f}" for m in means) + " |")
    met = [
        sum(runs[n]["tasks"][t]["weighted_f1"] >= v for t, v in r["targets_weighted_f1"].items())
        for n in names
    ]
    lines.append("| targets met | | " + " | ".join(f"{m} of 7" for m in met) + " |")
    lines.append(
        "| fit seconds | | " + " | ".join(f"{runs[n]['fit_seconds']:.0f}" for n in names) + " |"
    )
    lines += ["", "Bold: target met. Fit seconds include feature/prefix extraction (cached "
              "features are reused where the cache has them) and every head set. 'N head sets': "
              "the same model with N-1 more sets of heads fitted from other seeds on its final "
              "features, probabilities averaged (`HeadConfig(head_sets=N)`); the column "
              "before it is its first set alone.", ""]  # fmt: skip
    cost = r["runs"]["all"].get("inference_ms_per_image")
    if cost and r["runs"]["all"].get("ensemble", 1) > 1:
        extra = (cost["all_heads"] - cost["heads"]) / (cost["encoder"] + cost["heads"])
        lines.append(
            f"Inference cost (frozen model, ms per image): encoder {cost['encoder']:.2f}, one "
            f"set of heads {cost['heads']:.3f}, all {r['runs']['all']['ensemble']} sets "
            f"{cost['all_heads']:.3f}: the extra head sets add {extra:.1%} to a tagged image."
        )
        lines.append("")
    for n, x in r["runs"].items():
        if n == "all":
            continue
        scores = ", ".join(f"{s:.4f}" for s in x["finetune_val_score"])
        lines.append(
            f"- `{n}`: {x['tuned_backbone_params']:,} backbone parameters tuned, fine-tuning "
            f"{x['finetune_seconds']:.0f} s, val score per epoch {scores} "
            f"(best epoch {x['best_epoch'] + 1})."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data-root", type=Path, default=Path("../shared/datasets/fashion-products")
    )
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--freeze", nargs="+", default=["blocks.5", "blocks.4"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--image-size", type=int, default=DEMO_IMAGE_SIZE)
    parser.add_argument("--head-sets", type=int, default=3, help="head sets per model (1: off)")
    args = parser.parse_args()
    run(args.data_root, args.out, args.freeze, args.epochs, args.image_size, args.head_sets,
        args.backbone)  # fmt: skip
    write_benchmarks_md(args.out)
    print((args.out / "study.md").read_text())


if __name__ == "__main__":
    main()
