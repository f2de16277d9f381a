"""Source-shift benchmark: how well the default tagger's tags hold on photos from elsewhere.

Scores one model, with its level-of-detail step off ("before") and on ("after",
:mod:`multitag.data.detail`), on

(a) its own validation photos (a seeded sample), the reference of (d);
(b) fashion-products-hires as supplied (900x1200 px studio photos of products the model never
    saw), and (c) the same photos downscaled to the catalogue's 60x80 px, the reference of (b);
(d) synthetic shifts of the validation photos that real photo pipelines produce: sharp
    upscales, JPEG re-compression, a larger white canvas, a tight crop, a grey background, a
    mirror image and a small rotation.

Writes ``bench/shift.json`` and ``bench/shift.md`` (a section of BENCHMARKS.md). Run with
``python -m multitag.bench.shift`` (``--model DIR`` scores a saved model instead of training
the default one). fashion-products-hires is a yardstick only: nothing here trains on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from multitag.bench.core import TASKS
from multitag.bench.provenance import git_commit
from multitag.cli.demo import DEMO_IMAGE_SIZE
from multitag.core.io import write_json, write_text
from multitag.core.progress import bar
from multitag.data.framing import background_colour, product_box
from multitag.data.manifest import load_manifest
from multitag.evaluation.report import evaluate_frame
from multitag.tagger.config import FeatureConfig
from multitag.tagger.estimator import MultiTaskTagger

#: Tasks scored on fashion-products-hires (the others have too few rows per class there).
HIRES_TASKS = ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "usage"]
#: Tasks with targets under synthetic shifts (issue #34): within 2 points of the clean score.
SHIFT_TARGET_TASKS = ["gender", "masterCategory", "subCategory", "articleType"]
MIN_SUPPORT = 100  # rows a task needs on hires for its target to count


def _upscale(k: int) -> Callable[[Image.Image], Image.Image]:
    return lambda im: im.resize((im.width * k, im.height * k), Image.Resampling.LANCZOS)


def _canvas(im: Image.Image) -> Image.Image:
    """Centred on a white canvas twice as wide and high."""
    out = Image.new("RGB", (im.width * 2, im.height * 2), (255, 255, 255))
    out.paste(im, (im.width // 2, im.height // 2))
    return out


def _tight_crop(im: Image.Image) -> Image.Image:
    """Cropped to the product's bounding box (no margin)."""
    box = product_box(np.asarray(im))
    return im if box is None else im.crop((box[2], box[0], box[3], box[1]))


def _grey_background(im: Image.Image) -> Image.Image:
    """The near-background pixels replaced with a light grey, as on a grey studio sweep."""
    a = np.asarray(im).copy()
    diff = np.abs(a.astype(np.int16) - background_colour(a).astype(np.int16)).sum(-1)
    a[diff <= 30] = (190, 190, 190)
    return Image.fromarray(a)


#: name -> (transform of a decoded RGB photo, JPEG quality to save it with; None = PNG)
SHIFTS: dict[str, tuple[Callable[[Image.Image], Image.Image], int | None]] = {
    "upscale 2x": (_upscale(2), None),
    "upscale 4x": (_upscale(4), None),
    "upscale 8x": (_upscale(8), None),
    "JPEG q60": (lambda im: im, 60),
    "JPEG q30": (lambda im: im, 30),
    "white canvas 2x": (_canvas, None),
    "tight crop": (_tight_crop, None),
    "grey background": (_grey_background, None),
    "mirror": (lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), None),
    "rotate 5 deg": (
        lambda im: im.rotate(5, Image.Resampling.BICUBIC, expand=True, fillcolor=(255,) * 3),
        None,
    ),
}


def write_variant(
    frame: pd.DataFrame,
    out_dir: Path,
    transform: Callable[[Image.Image], Image.Image],
    quality: int | None,
) -> pd.DataFrame:
    """``frame`` with every photo transformed and saved under ``out_dir`` (paths replaced)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for path, id_ in zip(frame["path"], frame["id"]):
        with Image.open(path) as im:
            shifted = transform(im.convert("RGB"))
        target = out_dir / f"{id_}.{'png' if quality is None else 'jpg'}"
        if quality is None:
            shifted.save(target)
        else:
            shifted.save(target, quality=quality)
        paths.append(str(target))
    return frame.assign(path=paths)


def _scores(report: dict, tasks: list[str]) -> dict:
    return {
        t: {
            "weighted_f1": report["tasks"][t]["weighted_f1"],
            "accuracy": report["tasks"][t]["accuracy"],
            "support": report["tasks"][t]["support"],
        }
        for t in tasks
    }


def _without_detail(model_dir: Path) -> MultiTaskTagger:
    """The saved model with its level-of-detail step off (what models did before it)."""
    off = MultiTaskTagger.load(model_dir)
    off.net_.encoder.preprocessing = dataclasses.replace(
        off.net_.encoder.preprocessing, detail=None
    )
    off.set_params(runtime__progress=False)
    return off


def tagging_speed(before: MultiTaskTagger, after: MultiTaskTagger, paths: list) -> dict:
    """Images/s of ``predict_proba`` on catalogue photos with the step off and on, measured
    alternately (two rounds each, the faster kept) so both see the same machine load."""
    speeds: dict[str, float] = {"before": 0.0, "after": 0.0}
    for model in (before, after):
        model.predict_proba(paths[:64])  # engine conversion / compilation, untimed
    for _ in range(2):
        for label, model in (("before", before), ("after", after)):
            start = time.perf_counter()
            model.predict_proba(paths)
            speeds[label] = max(speeds[label], len(paths) / (time.perf_counter() - start))
    return {**speeds, "ratio": speeds["after"] / speeds["before"], "n": len(paths)}


def default_model(data_root: Path, model_dir: Path) -> MultiTaskTagger:
    """The default tagger (the core benchmark's settings) trained on fashion-products, saved to
    ``model_dir``; loaded from there when it already holds one."""
    if not (model_dir / "config.json").is_file():
        frame = load_manifest(data_root / "styles.csv", data_root / "images")
        MultiTaskTagger(TASKS, features=FeatureConfig(image_size=DEMO_IMAGE_SIZE)).fit(frame).save(
            model_dir
        )
    return MultiTaskTagger.load(model_dir)


def run(
    data_root: Path,
    hires_root: Path,
    out_dir: Path,
    model_dir: Path | None = None,
    n_val: int = 2000,
    seed: int = 0,
) -> dict:
    """Every measurement of the module docstring; returns the results dict."""
    started = time.perf_counter()
    model_dir = model_dir or out_dir / "bench-model-shift"
    after = default_model(data_root, model_dir)
    after.set_params(runtime__progress=False)
    before = _without_detail(model_dir)
    detail = after.net_.encoder.preprocessing.detail
    if detail is None:
        raise SystemExit(f"{model_dir}: this model has no level-of-detail step to compare")

    catalogue = load_manifest(data_root / "styles.csv", data_root / "images")
    val_ids = set(after.split_["val_ids"])
    val = catalogue[catalogue["id"].astype(str).isin({str(i) for i in val_ids})]
    val = val.sample(min(n_val, len(val)), random_state=seed).sort_values("id")
    hires = load_manifest(hires_root / "styles.csv", hires_root / "images")

    sets: dict[str, tuple[pd.DataFrame, list[str]]] = {}
    with tempfile.TemporaryDirectory(prefix="multitag-shift-") as tmp:
        tmp = Path(tmp)
        sets["validation photos"] = (val, TASKS)
        sets["hires as supplied"] = (hires, HIRES_TASKS)
        sets["hires at 60x80"] = (
            write_variant(
                hires,
                tmp / "hires-60x80",
                lambda im: im.resize((60, 80), Image.Resampling.LANCZOS),
                90,
            ),
            HIRES_TASKS,
        )
        with bar("writing shifted photos", len(SHIFTS)) as pbar:
            for i, (name, (transform, quality)) in enumerate(SHIFTS.items()):
                sets[name] = (write_variant(val, tmp / f"shift-{i}", transform, quality), TASKS)
                pbar.advance()
        results: dict[str, dict] = {}
        with bar("scoring", 2 * len(sets)) as pbar:
            for name, (frame, tasks) in sets.items():
                results[name] = {"n": len(frame)}
                for label, model in (("before", before), ("after", after)):
                    report = evaluate_frame(model, frame)
                    results[name][label] = _scores(report, tasks)
                    pbar.advance()
    speed = tagging_speed(before, after, val["path"].tolist()[:1024])
    out = {
        "date": date.today().isoformat(),
        "commit": git_commit(),
        "command": "python -m multitag.bench.shift"
        + (f" --model {model_dir}" if model_dir != out_dir / "bench-model-shift" else ""),
        "model": {
            "dir": str(model_dir),
            "backbone": after.settings("features").backbone,
            "image_size": after.net_.encoder.preprocessing.image_size,
            "framing": after.net_.encoder.preprocessing.to_dict().get("framing"),
            "detail": detail.to_json(),
            "views": (after.views_ or {}).get("views"),
        },
        "results": results,
        "tagging_speed": speed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out["targets"] = _targets(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "shift.json", out)
    write_text(out_dir / "shift.md", to_markdown(out))
    return out


REFERENCES = ("validation photos", "hires at 60x80")


def _reference(name: str) -> str:
    if name == "hires as supplied":
        return "hires at 60x80"
    return "validation photos"


def _drop(results: dict, name: str, label: str, task: str, key: str = "weighted_f1") -> float:
    ref = results[_reference(name)][label][task][key]
    return results[name][label][task][key] - ref


def _targets(results: dict) -> dict:
    """The issue's targets, checked on the 'after' scores."""
    hires = {
        t: round(_drop(results, "hires as supplied", "after", t), 4)
        for t in HIRES_TASKS
        if results["hires as supplied"]["after"][t]["support"] >= MIN_SUPPORT
    }
    synthetic = {}
    for name in ["upscale 2x", "upscale 4x", "upscale 8x", "JPEG q60", "white canvas 2x", "mirror"]:
        synthetic[name] = {
            t: round(_drop(results, name, "after", t), 4) for t in SHIFT_TARGET_TASKS
        }
    return {
        "hires_within_1_point": {"drops": hires, "met": all(d >= -0.01 for d in hires.values())},
        "synthetic_within_2_points": {
            "drops": synthetic,
            "met": all(d >= -0.02 for v in synthetic.values() for d in v.values()),
        },
    }


def _table(results: dict, label: str, key: str) -> list[str]:
    names = list(results)
    lines = [
        "| photos | n | " + " | ".join(TASKS) + " |",
        "|---|---:|" + "---:|" * len(TASKS),
    ]
    for name in names:
        cells = []
        for t in TASKS:
            score = results[name][label].get(t)
            if score is None:
                cells.append("")
                continue
            value = score[key]
            if name in REFERENCES:
                cells.append(f"{value:.3f}")
            else:
                cells.append(f"{value:.3f} ({_drop(results, name, label, t, key):+.3f})")
        lines.append(f"| {name} | {results[name]['n']} | " + " | ".join(cells) + " |")
    return lines


def _detail_words(detail: int | dict) -> str:
    if isinstance(detail, dict):
        return (
            f"a photo with more than {detail['framed']:,} pixels after framing keeps those it "
            f"would have had the whole photo been {detail['photo']:,} pixels, the training "
            f"photos' size, but at least {detail['floor']:,}, their median after framing"
        )
    return (
        f"photos with more than {detail:,} pixels after framing are first downscaled to that many"
    )


def to_markdown(out: dict) -> str:
    """The BENCHMARKS.md section."""
    r, m, tg = out["results"], out["model"], out["targets"]
    lines = [
        "## Source shift: tags on photos from other sources (`bench/shift.md`)",
        "",
        f"`{out['command']}` at commit `{out['commit']}` on {out['date']} "
        f"({out['seconds'] / 60:.0f} min). Model: the core benchmark's default tagger "
        f"({m['backbone']}, {m['image_size']} px, framing {m['framing']}, extra training views "
        f"{m.get('views')}) trained on fashion-products; **before** = its level-of-detail step "
        f"off (as every model before it), **after** = on ({_detail_words(m['detail'])}; "
        "`multitag.data.detail`). Each cell: the score and, "
        "in brackets, its change against the reference row: *hires at 60x80* for *hires as "
        "supplied* (the same 428 photos, downscaled to the catalogue's 60x80 px), *validation "
        f"photos* ({r['validation photos']['n']} of the model's own, seeded) for every "
        "synthetic shift of those same photos. hires tasks are scored where labelled; season "
        "is left out there (its labels follow the catalogue year, not the photo).",
        "",
    ]
    for label, title in (("before", "Before (detail step off)"), ("after", "After (detail on)")):
        for key, what in (("weighted_f1", "weighted F1"), ("accuracy", "accuracy")):
            lines += [f"**{title}: {what}**", "", *_table(r, label, key), ""]
    hires = tg["hires_within_1_point"]
    syn = tg["synthetic_within_2_points"]
    worst = min(
        ((d, n, t) for n, v in syn["drops"].items() for t, d in v.items()), key=lambda x: x[0]
    )
    lines += [
        "Targets (after): fashion-products-hires as supplied within 1 point of weighted F1 of "
        f"the same photos at 60x80 for every task with >= {MIN_SUPPORT} labelled rows: "
        f"**{'met' if hires['met'] else 'not met'}** ("
        + ", ".join(f"{t} {d:+.3f}" for t, d in hires["drops"].items())
        + "); synthetic shifts (resolution, JPEG >= 60, canvas, mirror) within 2 points for "
        f"gender, masterCategory, subCategory, articleType: **{'met' if syn['met'] else 'not met'}** "
        f"(largest drop {worst[0]:+.3f}, {worst[2]} under {worst[1]}).",
        "",
        f"Tagging speed on {out['tagging_speed']['n']} catalogue photos (same run, alternated): "
        f"{out['tagging_speed']['before']:.0f} images/s before, "
        f"{out['tagging_speed']['after']:.0f} after (ratio "
        f"{out['tagging_speed']['ratio']:.3f}); catalogue-sized photos skip the step.",
        "",
    ]
    return "\n".join(lines)


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
    args = parser.parse_args()
    result = run(args.data_root, args.hires_root, args.out, args.model, args.n_val)
    print(json.dumps(result["targets"], indent=2))


if __name__ == "__main__":
    main()
