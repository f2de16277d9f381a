"""Precision benchmark: int8, bf16 and fp32 inference side by side, in one run (issue #38).

One model, the default tagger trained on cached bf16 features (the source-shift benchmark's,
``bench/bench-model-shift``, reused when present), applied through each precision
(:func:`multitag.vision.engines.inference_precision`; int8 = its OpenVINO encoder quantized by
:mod:`multitag.vision.quantize` on a seeded sample of its *training* photos). Per precision:

- images/s of ``tag`` end to end (decode, forward, heads, Parquet) and of the forward pass
  alone on pre-decoded tensors, both measured in alternating rounds (the best of each kept),
  so every precision sees the same machine load; the naive PyTorch loop
  (:func:`multitag.bench.naive_loop`) once, in the same run;
- weighted F1 per task on a seeded sample of the model's validation split and on
  fashion-products-hires (a yardstick only: it never trains or calibrates anything).

int8 counts as safe when it is within :data:`INT8_TOLERANCE` of bf16's weighted F1 on every
task of both sets; ``auto`` picks int8 only then. Writes ``bench/precision.{json,md}``; run
with ``python -m multitag.bench.precision`` (``make bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import date
from pathlib import Path

from multitag.bench.core import TASKS, forward_only, naive_loop, write_benchmarks_md
from multitag.bench.shift import HIRES_TASKS, default_model
from multitag.core.io import write_json, write_text
from multitag.data.manifest import load_manifest
from multitag.evaluation.report import evaluate_frame
from multitag.tagger.batch import tag_to_file
from multitag.tagger.estimator import MultiTaskTagger
from multitag.vision import quantize
from multitag.vision.engines import inference_precision

PRECISIONS = ("fp32", "bf16", "int8")
INT8_TOLERANCE = 0.003  # weighted F1, on every task of the validation sample and of hires


def calibrated(model_dir: Path, catalogue) -> MultiTaskTagger:
    """The saved model, with int8 calibration photos drawn from its training split when it
    was saved before it recorded them."""
    tagger = MultiTaskTagger.load(model_dir)
    tagger.set_params(runtime__progress=False)
    enc = tagger.net_.encoder
    if getattr(enc, "calibration", None) is None:
        train = {str(i) for i in tagger.split_["train_ids"]}
        paths = catalogue[catalogue["id"].astype(str).isin(train)]["path"].tolist()
        enc.calibration = quantize.Calibration.sample(paths, seed=tagger.settings("training").seed)
    return tagger


def speeds(tagger: MultiTaskTagger, paths: list[str], rounds: int = 2) -> dict:
    """Per precision: ``tag`` end to end and forward-only images/s, alternated, best kept."""
    out = {p: {"tag": 0.0, "forward": 0.0} for p in PRECISIONS}
    with tempfile.TemporaryDirectory(prefix="multitag-precision-") as tmp:
        target = Path(tmp) / "tags.parquet"
        for _ in range(rounds):
            for p in PRECISIONS:
                # one compiled engine in memory
                tagger.release_engine().set_params(training__precision=p)
                tag_to_file(tagger, paths[:64], target)  # compiles it, untimed
                start = time.perf_counter()
                tag_to_file(tagger, paths, target)
                out[p]["tag"] = max(out[p]["tag"], len(paths) / (time.perf_counter() - start))
                out[p]["forward"] = max(out[p]["forward"], forward_only(tagger, len(paths)))
    return out


def scores(tagger: MultiTaskTagger, frame, tasks: list[str]) -> dict:
    """Weighted F1 per task of ``tagger`` (at its current precision) on ``frame``."""
    report = evaluate_frame(tagger, frame)
    return {t: report["tasks"][t]["weighted_f1"] for t in tasks}


def run(
    data_root: Path,
    hires_root: Path,
    out_dir: Path,
    model_dir: Path | None = None,
    n_val: int = 2000,
    n_tag: int = 1024,
    n_naive: int = 128,
    seed: int = 0,
) -> dict:
    """Every measurement of the module docstring; returns the results dict."""
    started = time.perf_counter()
    os.environ.pop("MULTITAG_PRECISION", None)  # each precision as set here, no override
    model_dir = model_dir or out_dir / "bench-model-shift"
    default_model(data_root, model_dir)  # trains and saves it when absent
    catalogue = load_manifest(data_root / "styles.csv", data_root / "images")
    tagger = calibrated(model_dir, catalogue)
    val_ids = {str(i) for i in tagger.split_["val_ids"]}
    val = catalogue[catalogue["id"].astype(str).isin(val_ids)]
    val = val.sample(min(n_val, len(val)), random_state=seed).sort_values("id")
    hires = load_manifest(hires_root / "styles.csv", hires_root / "images")
    calibrating = {Path(p).name for p in tagger.net_.encoder.calibration.paths}
    if calibrating & {Path(p).name for p in val["path"]}:
        raise SystemExit(f"{model_dir}: its int8 calibration photos include validation photos")

    results: dict[str, dict] = {}
    for p in PRECISIONS:
        tagger.release_engine().set_params(training__precision=p)
        started_p = time.perf_counter()
        results[p] = {
            "validation": scores(tagger, val, TASKS),
            "hires": scores(tagger, hires, HIRES_TASKS),
            "scoring_seconds": round(time.perf_counter() - started_p, 1),
        }
    paths = catalogue.sort_values("id")["path"].tolist()[:n_tag]
    speed = speeds(tagger, paths)
    size = tagger.net_.encoder.preprocessing.image_size
    naive = naive_loop(paths[:n_naive], size)
    for p in PRECISIONS:
        s = speed[p]
        results[p].update(
            tag_images_per_s=s["tag"],
            forward_only_images_per_s=s["forward"],
            tag_vs_naive=s["tag"] / naive,
            tag_vs_forward=s["tag"] / s["forward"],
        )
    deltas = {
        where: {
            t: results["int8"][where][t] - results["bf16"][where][t] for t in results["bf16"][where]
        }
        for where in ("validation", "hires")
    }
    safe = all(abs(d) <= INT8_TOLERANCE for v in deltas.values() for d in v.values())
    out = {
        "date": date.today().isoformat(),
        "command": "python -m multitag.bench.precision"
        + (f" --model {model_dir}" if model_dir != out_dir / "bench-model-shift" else ""),
        "model": {
            "dir": str(model_dir),
            "backbone": tagger.settings("features").backbone,
            "image_size": size,
        },
        "engine": "openvino",
        "resolved": {p: inference_precision(p) for p in PRECISIONS},
        "calibration": {
            "photos": len(tagger.net_.encoder.calibration.paths),
            "digest": tagger.net_.encoder.calibration.digest,
            "nncf": quantize.nncf_version(),
        },
        "scheme": quantize.SCHEME,
        "n_validation": len(val),
        "n_hires": len(hires),
        "n_tag": len(paths),
        "naive_loop_images_per_s": naive,
        "results": results,
        "int8_vs_bf16": deltas,
        "int8_within_tolerance": safe,
        "tolerance": INT8_TOLERANCE,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "precision.json", out)
    write_text(out_dir / "precision.md", to_markdown(out))
    return out


def to_markdown(out: dict) -> str:
    """The BENCHMARKS.md section."""
    r = out["results"]
    speed_rows = [
        f"| {p} | {r[p]['tag_images_per_s']:.1f} | {r[p]['forward_only_images_per_s']:.1f} | "
        f"**{r[p]['tag_vs_naive']:.2f}** | **{r[p]['tag_vs_forward']:.2f}** |"
        for p in PRECISIONS
    ]

    def f1_rows(where: str) -> list[str]:
        tasks = list(r["bf16"][where])
        rows = ["| precision | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
        for p in PRECISIONS:
            cells = []
            for t in tasks:
                d = r[p][where][t] - r["bf16"][where][t]
                cells.append(f"{r[p][where][t]:.4f}" + ("" if p == "bf16" else f" ({d:+.4f})"))
            rows.append(f"| {p} | " + " | ".join(cells) + " |")
        return rows

    worst = min(
        ((d, w, t) for w, v in out["int8_vs_bf16"].items() for t, d in v.items()),
        key=lambda x: -abs(x[0]),
    )
    cal = out["calibration"]
    verdict = "within" if out["int8_within_tolerance"] else "**not** within"
    return "\n".join(
        [
            "## Inference precision: int8 / bf16 / fp32 (`bench/precision.md`)",
            "",
            f"`{out['command']}` on {out['date']} ({out['seconds'] / 60:.0f} min; shared "
            "2-core host, so compare ratios within this run). One model (the default tagger, "
            f"{out['model']['backbone']} at {out['model']['image_size']} px, trained on cached "
            "bf16 features) applied through each precision of the OpenVINO engine. int8: the "
            f"backbone quantized by NNCF {cal['nncf']} on {cal['photos']} of the model's "
            f"training photos (`multitag.vision.quantize`, scheme `{out.get('scheme', '?')}`).",
            "",
            "| precision | `tag` end to end (images/s) | forward only (images/s) | "
            "tag / naive (target >= 5) | tag / forward (target >= 0.85) |",
            "|---|---:|---:|---:|---:|",
            *speed_rows,
            "",
            f"Naive loop (timm + PIL, one image at a time, eager fp32): "
            f"{out['naive_loop_images_per_s']:.1f} images/s, measured once after the rounds "
            "(on a loaded host its two torch threads can stall far more than the engines, "
            "so read tag / naive against `bench/core.md` too). Speeds: "
            f"{out['n_tag']} catalogue photos, two alternating rounds, the faster kept.",
            "",
            f"**Weighted F1, validation sample** ({out['n_validation']} photos of the "
            "model's validation split; in brackets: against bf16)",
            "",
            *f1_rows("validation"),
            "",
            f"**Weighted F1, fashion-products-hires** ({out['n_hires']} photos; season left "
            "out, as in `bench/shift.md`)",
            "",
            *f1_rows("hires"),
            "",
            f"int8 is {verdict} {out['tolerance'] * 100:.1f} points of bf16 on every task "
            f"(largest change {worst[0] * 100:+.2f} points, {worst[2]} on {worst[1]}).",
            "",
            *([f"Note: {out['note']}", ""] if out.get("note") else []),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root", type=Path, default=Path("../shared/datasets/fashion-products")
    )
    parser.add_argument(
        "--hires-root", type=Path, default=Path("../shared/datasets/fashion-products-hires")
    )
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--model", type=Path, default=None, help="Score this saved model.")
    parser.add_argument("--n-val", type=int, default=2000)
    parser.add_argument("--n-tag", type=int, default=1024)
    args = parser.parse_args()
    result = run(
        args.data_root, args.hires_root, args.out, args.model, args.n_val, n_tag=args.n_tag
    )
    write_benchmarks_md(args.out)
    print(json.dumps({k: result[k] for k in ("int8_vs_bf16", "int8_within_tolerance")}, indent=2))


if __name__ == "__main__":
    main()
