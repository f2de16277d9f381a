"""Core benchmark: tagging throughput vs forward-only and a naive loop, head training time,
validation metrics on fashion-products. Writes ``bench/core.json`` and ``BENCHMARKS.md``.

The speed targets are set for the reference CPU (AVX-512 with bf16). On a CPU without bf16
the run goes to ``bench/core-no-bf16.{json,md}`` instead, its own section of BENCHMARKS.md,
so a slower host never replaces the reference numbers.

All speeds are measured in the same run, so their ratios are meaningful on a noisy machine.
Run with ``make bench`` or ``python -m multitag.bench.core``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from multitag.cli.demo import DEMO_IMAGE_SIZE
from multitag.core import runtime
from multitag.core.io import write_json, write_text
from multitag.data.manifest import load_manifest
from multitag.evaluation.report import evaluate_split
from multitag.tagger.batch import tag_to_file
from multitag.tagger.config import FeatureConfig
from multitag.tagger.estimator import MultiTaskTagger
from multitag.vision.engines import resolve_engine, runner_for
from multitag.vision.features import Preprocessing, iter_batches

TASKS = ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"]
TARGETS = {
    "gender": 0.89,
    "masterCategory": 0.98,
    "subCategory": 0.95,
    "articleType": 0.85,
    "baseColour": 0.68,
    "season": 0.69,
    "usage": 0.88,
}


def forward_only(
    tagger: MultiTaskTagger, n: int, batch_size: int = 64, engine: str | None = None
) -> float:
    """Images/s of encoder + heads on pre-decoded uint8 tensors (no I/O, no decode), on
    ``engine`` (default: the tagger's own) at the tagger's precision."""
    net = tagger.net_.eval()
    engine = engine or tagger.settings("runtime").engine
    runner = runner_for(net.encoder, engine, tagger.settings("training").precision)
    size = net.encoder.preprocessing.image_size
    x = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    with torch.inference_mode():
        net.from_features(runner(x)[0])  # warm-up
        start = time.perf_counter()
        done = 0
        while done < n:
            net.from_features(runner(x)[0])
            done += batch_size
    return done / (time.perf_counter() - start)


def _decode_only(paths: list[str], prep: Preprocessing) -> float:
    """Images/s of decoding + reframing + level of detail + resizing alone (``prep``), one
    thread (what the forward pass must hide)."""
    start = time.perf_counter()
    for _ in iter_batches(
        paths, prep.image_size, 64, workers=0, framing=prep.framing, detail=prep.detail
    ):
        pass
    return len(paths) / (time.perf_counter() - start)


def _tag_speed(tagger: MultiTaskTagger, paths: list[str], out: Path, engine: str) -> float:
    tagger.set_params(runtime__engine=engine)
    tag_to_file(tagger, paths[:128], out)  # converts the engine's graph once, untimed
    start = time.perf_counter()
    tag_to_file(tagger, paths, out)
    return len(paths) / (time.perf_counter() - start)


def naive_loop(paths: list[str], size: int) -> float:
    """Images/s of the textbook loop: timm model, PIL decode, one image at a time, fp32."""
    from PIL import Image

    from multitag.vision.backbones import create_model

    model = create_model("tf_efficientnet_lite0").eval()
    mean = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)
    std = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)
    start = time.perf_counter()
    with torch.no_grad():
        for p in paths:
            img = Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC)
            x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
            model(((x - mean) / std).unsqueeze(0))
    return len(paths) / (time.perf_counter() - start)


_LOAD_AND_WARM_UP = """
import time
from multitag.tagger.estimator import MultiTaskTagger
t0 = time.perf_counter()
MultiTaskTagger.load({model_dir!r}).warm_up()
print("SECONDS", time.perf_counter() - t0)
"""


def start_up_seconds(model_dir: Path, conversion_cache: bool) -> float:
    """Load a saved model and prepare its engine in a new process (what a CLI run or an API
    worker pays before its first image), with or without the on-disk OpenVINO cache."""
    env = {**os.environ, "MULTITAG_OPENVINO_CACHE": "1" if conversion_cache else "0"}
    code = _LOAD_AND_WARM_UP.format(model_dir=str(model_dir))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout.split("SECONDS")[-1])


def run(
    data_root: Path,
    out_dir: Path,
    n_tag: int = 2048,
    n_naive: int = 256,
    image_size: int = DEMO_IMAGE_SIZE,
) -> dict:
    """Run every measurement; return the results dict."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = load_manifest(data_root / "styles.csv", data_root / "images")
    tagger = MultiTaskTagger(TASKS, features=FeatureConfig(image_size=image_size))
    t0 = time.perf_counter()
    tagger.fit(frame)
    fit_seconds = time.perf_counter() - t0
    metrics = evaluate_split(tagger)

    paths = frame.sort_values("id")["path"].tolist()[:n_tag]
    model_dir = out_dir / "bench-model"
    tagger.save(model_dir)
    tagger.set_params(runtime__progress=False)
    engine = resolve_engine(tagger.settings("runtime").engine)
    tag_speed = _tag_speed(tagger, paths, out_dir / "bench-tags.parquet", engine)
    forward_speed = forward_only(tagger, len(paths), 64, engine)
    torch_tag = _tag_speed(tagger, paths, out_dir / "bench-tags.parquet", "torch")
    torch_forward = forward_only(tagger, len(paths), 64, "torch")
    tagger.set_params(runtime__engine="auto")
    start_up = {}
    if engine == "openvino":
        # One untimed reloaded start-up first, so that "cached" times a cache hit on every
        # host: a run on a fresh host, without it, timed "cached" as long as converting
        # (that process converted and wrote the cache entry itself).
        start_up_seconds(model_dir, conversion_cache=True)
        start_up = {
            "convert_seconds": start_up_seconds(model_dir, conversion_cache=False),
            "cached_seconds": start_up_seconds(model_dir, conversion_cache=True),
        }
        start_up["convert_vs_cached"] = start_up["convert_seconds"] / start_up["cached_seconds"]
    framing = tagger.net_.encoder.preprocessing.framing
    decode_speed = _decode_only(paths, tagger.net_.encoder.preprocessing)
    naive_speed = naive_loop(paths[:n_naive], image_size)
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "bf16": runtime.cpu_has_bf16(),
            "torch": torch.__version__,
        },
        "image_size": image_size,
        "framing": framing.to_dict() if framing is not None else None,
        "backbone": tagger.settings("features").backbone,
        "n_images": len(frame),
        "engine": engine,
        "tag_images_per_s": tag_speed,
        "forward_only_images_per_s": forward_speed,
        "naive_loop_images_per_s": naive_speed,
        "tag_vs_forward": tag_speed / forward_speed,
        "tag_vs_naive": tag_speed / naive_speed,
        "decode_only_images_per_s_one_thread": decode_speed,
        "torch_engine": {
            "tag_images_per_s": torch_tag,
            "forward_only_images_per_s": torch_forward,
            "tag_vs_forward": torch_tag / torch_forward,
            "tag_vs_naive": torch_tag / naive_speed,
        },
        "load_and_warm_up": start_up,
        "head_training_seconds": tagger.history_.seconds,
        "head_training_epochs": len(tagger.history_.val_score),
        "fit_seconds_including_features": fit_seconds,
        "val_metrics": {
            k: {
                m: v.get(m)
                for m in ("accuracy", "top3_accuracy", "macro_f1", "weighted_f1", "support")
            }
            for k, v in metrics["tasks"].items()
        },
        "targets_weighted_f1": TARGETS,
    }
    stem = core_stem(result["machine"]["bf16"])
    write_json(out_dir / f"{stem}.json", result)
    (out_dir / f"{stem}.md").write_text(core_markdown(result, metrics))
    return result


def core_stem(bf16: bool) -> str:
    """``core`` on the reference CPU (bf16), ``core-no-bf16`` elsewhere."""
    return "core" if bf16 else "core-no-bf16"


def _start_up_markdown(s: dict | None) -> str:
    if not s:
        return ""
    return (
        "Start-up of a new process (`MultiTaskTagger.load(dir).warm_up()`): "
        f"**{s['cached_seconds']:.1f} s** with the converted model from the on-disk OpenVINO "
        f"cache against {s['convert_seconds']:.1f} s converting it again "
        f"(`MULTITAG_OPENVINO_CACHE=0`): {s['convert_vs_cached']:.1f}x.\n"
    )


def core_markdown(r: dict, metrics: dict) -> str:
    """The core section of BENCHMARKS.md."""
    rows = "\n".join(
        f"| {t} | {m['weighted_f1']:.4f} | {TARGETS.get(t, float('nan')):.2f} | "
        f"{'yes' if m['weighted_f1'] >= TARGETS.get(t, 0) else 'no'} | {m['accuracy']:.4f} | "
        f"{m['top3_accuracy']:.4f} | {m['macro_f1']:.4f} | {m['support']} |"
        for t, m in r["val_metrics"].items()
    )
    t = r["torch_engine"]
    fr = r.get("framing")
    framing = (
        f"framing `auto` (measured: fill {fr['fill']:.2f}, canvas aspect {fr['aspect']:.2f})"
        if fr
        else "framing `none` (squash-resize)"
    )
    bf16 = r["machine"]["bf16"]
    title = "Core tagger" if bf16 else "Core tagger on a CPU without bf16"
    note = (
        ""
        if bf16
        else "\nThis CPU has no bf16: OpenVINO and the torch engine run fp32, so the speed "
        "ratios are\nnot comparable with the targets, which are set for the reference CPU "
        "(section above).\n"
    )
    precision = "bf16 autocast" if bf16 else "fp32"
    return f"""## {title} (`python -m multitag.bench.core`)
{note}
Machine: {r["machine"]["cpu"]}, {r["machine"]["threads"]} threads, bf16: {r["machine"]["bf16"]},
torch {r["machine"]["torch"]}. Backbone `{r["backbone"]}` (frozen), image size {r["image_size"]},
{framing}, {r["n_images"]} fashion-products images, validation split 20% stratified by articleType (seed 0).

### Speed (same run)

Inference engine: **{r["engine"]}** (`multitag.vision.engines`; `auto` picks OpenVINO on CPU).

| measurement | images/s | ratio |
|---|---:|---:|
| `tag` end to end (decode, forward, heads, write Parquet) | {r["tag_images_per_s"]:.1f} | |
| forward only (encoder + heads on pre-decoded tensors, same engine) | {r["forward_only_images_per_s"]:.1f} | tag / forward = **{r["tag_vs_forward"]:.2f}** (target >= 0.85) |
| naive loop (timm + PIL, one image at a time, eager fp32) | {r["naive_loop_images_per_s"]:.1f} | tag / naive = **{r["tag_vs_naive"]:.2f}** (target >= 3) |
| decode + reframe + resize only, one thread | {r["decode_only_images_per_s_one_thread"]:.1f} | |
| `tag` with `engine="torch"` ({precision}, channels_last) | {t["tag_images_per_s"]:.1f} | tag / naive = {t["tag_vs_naive"]:.2f} |
| forward only with `engine="torch"` | {t["forward_only_images_per_s"]:.1f} | tag / forward = {t["tag_vs_forward"]:.2f} |

On 2 cores the forward pass keeps both cores busy, so decoding cannot hide behind it: the
decode time adds to the forward time, and tag / forward is bounded by
forward_time / (forward_time + decode_time) for whichever engine is faster.

{_start_up_markdown(r.get("load_and_warm_up"))}
Head training on the cached features of all images, {len(r["val_metrics"])} tasks:
**{r["head_training_seconds"]:.1f} s** ({r["head_training_epochs"]} epochs; target <= 60 s).
Whole `fit` including feature extraction/cache lookup: {r["fit_seconds_including_features"]:.0f} s.

### Validation metrics (frozen backbone)

| task | weighted F1 | target | met | accuracy | top-3 | macro F1 | support |
|---|---:|---:|:-:|---:|---:|---:|---:|
{rows}
"""


def write_benchmarks_md(bench_dir: Path, path: Path | None = None) -> None:
    """Concatenate every ``bench/*.md`` section into ``path`` (default: BENCHMARKS.md beside
    ``bench_dir``, so a benchmark written elsewhere, ``--out /tmp/x``, leaves the repo's alone)."""
    order = ["core.md", "core-no-bf16.md", "embed.md", "index.md", "catalog.md", "study.md"]
    parts = sorted(
        bench_dir.glob("*.md"),
        key=lambda p: (order.index(p.name) if p.name in order else 99, p.name),
    )
    body = "\n".join(p.read_text() for p in parts)
    write_text(
        path or Path(bench_dir).parent / "BENCHMARKS.md",
        "# Benchmarks\n\nGenerated by `make bench` (sections from `bench/*.md`).\n\n" + body,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data-root", type=Path, default=Path("../shared/datasets/fashion-products")
    )
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--image-size", type=int, default=DEMO_IMAGE_SIZE)
    parser.add_argument("--n-tag", type=int, default=2048)
    args = parser.parse_args()
    result = run(args.data_root, args.out, n_tag=args.n_tag, image_size=args.image_size)
    write_benchmarks_md(args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "val_metrics"}, indent=2))


if __name__ == "__main__":
    main()
