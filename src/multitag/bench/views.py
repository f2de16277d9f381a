"""Extra-view benchmark: do heads trained on extra views of the training photos, or
mirror-symmetric heads, hold better on photos from other pipelines, and what do they cost?

Takes a saved default tagger (the one :mod:`multitag.bench.shift` trains) for its frozen
encoder, its tasks and its split, and trains one set of heads per variant (``before``: as
the tagger trains them; others with extra ``views``, on every or a share of the training
rows, :mod:`multitag.data.views`, or ``flip_invariant``) on the same seeded sample of its
training rows (or all of them), choosing the epoch on its other validation rows, exactly as
``fit`` trains heads (:meth:`~multitag.tagger.estimator.MultiTaskTagger.fit_head_set`); a
variant given as ``None`` is the saved heads as they are. Every variant is scored on the
photo sets of :mod:`multitag.bench.shift`: a seeded sample of the validation photos,
fashion-products-hires as supplied and at 60x80, and synthetic shifts of the validation
photos. The encoder is frozen and shared, so every photo set is encoded once (feature cache).
Also measures what a view costs: encoding speed with and without it on the same photos, and
the size of its feature cache.

Writes ``bench/views.json`` and ``bench/views.md`` (a section of BENCHMARKS.md). Run with
``python -m multitag.bench.views --model DIR``; ``--train-rows`` sizes the sample (``all``:
the model's whole training split; each view then costs one more encoder pass over it).
fashion-products-hires is a yardstick only: nothing here trains on it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from multitag.bench.core import TASKS
from multitag.bench.provenance import git_commit
from multitag.bench.shift import (
    HIRES_TASKS,
    MIN_SUPPORT,
    SHIFT_TARGET_TASKS,
    SHIFTS,
    write_variant,
)
from multitag.core.io import write_json, write_text
from multitag.core.progress import bar
from multitag.data.manifest import load_manifest
from multitag.data.tasks import encode_all
from multitag.data.views import view_id
from multitag.evaluation.report import report_from_arrays
from multitag.multitask.net import TaggerNet
from multitag.tagger.config import flat_settings, from_flat
from multitag.tagger.estimator import FitData, MultiTaskTagger
from multitag.vision.extraction import FeatureCache, FeatureResult, extract_features, run_encoder

#: variant name -> MultiTaskTagger parameters on top of the saved tagger's
#: in the order they run (and are written after each): the saved heads, the reference, first;
#: ``before`` (retrained like the others) last, as a measure of retraining noise
DEFAULT_VARIANTS: dict[str, dict | None] = {
    "as saved": None,
    "+ flip": {"views": ["flip"]},
    "+ flip, jpeg60": {"views": ["flip", "jpeg60"]},
    "+ flip, jpeg60 on 25 %": {"views": ["flip", "jpeg60"], "view_fraction": 0.25},
    "before": {"views": "none"},
}
SYNTHETIC_TARGETS = (
    "upscale 2x",
    "upscale 4x",
    "upscale 8x",
    "JPEG q60",
    "white canvas 2x",
    "mirror",
)


def extraction_cost(tagger: MultiTaskTagger, paths: list[str], views: list[str]) -> dict:
    """Images/s of encoding ``paths`` as they are and as each view makes them (no cache,
    alternated, the faster of two rounds), so the view's own transform is what differs."""
    speed: dict[str, float] = {}
    encoder = tagger.net_.encoder
    seed = tagger.settings("training").seed
    kw = {
        "precision": tagger.settings("training").precision,
        "engine": tagger.settings("runtime").engine,
        "progress": False,
    }
    run_encoder(encoder, paths[:64], **kw)  # engine conversion, untimed
    for _ in range(2):
        for view in [None, *views]:
            start = time.perf_counter()
            run_encoder(encoder, paths, view=view, view_seed=seed, **kw)
            rate = len(paths) / (time.perf_counter() - start)
            speed[view or "photos"] = max(speed.get(view or "photos", 0.0), rate)
    return speed


def cache_size(tagger: MultiTaskTagger, view: str | None) -> dict:
    """Rows and bytes on disk of the feature cache of the photos (``view=None``) or a view."""
    ident = tagger.encoder_id()
    if view is not None:
        ident = {**ident, "view": view_id(view, tagger.settings("training").seed)}
    cache = FeatureCache(tagger.feature_cache_dir(), ident)
    size = sum(p.stat().st_size for p in cache.dir.glob("shard-*.npy"))
    return {"rows": len(cache), "bytes": size}


def _variant(base: MultiTaskTagger, params: dict | None, data: FitData, epochs: int | None):
    """Heads of one variant trained on ``data`` as ``fit`` trains them; returns the tagger
    (the saved one's encoder, new heads) and what the training took. ``params=None``: the
    saved tagger as it is."""
    if params is None:
        return base, {"params": None, "training_rows": len(base.split_["train_ids"]),
                      "view_rows": {}, "view_seconds": 0.0, "head_seconds": None,
                      "head_cpu_seconds": None,
                      "best_epoch": base.config_["training"]["history"]["best_epoch"]}  # fmt: skip
    settings = {**flat_settings(base), **params, "progress": False}
    if epochs is not None:
        settings["epochs"] = epochs
    tagger = MultiTaskTagger(base.tasks, **from_flat(settings))
    tagger.tasks_ = base.tasks_
    tagger.net_ = TaggerNet(base.net_.encoder, base.net_.heads, base.tasks_)
    data = FitData(
        data.frame,
        FeatureResult(data.features.features, {}),
        data.targets,
        data.digests,
        data.train_rows,
        data.val_rows,
    )
    start = time.perf_counter()
    tagger._add_views(data)
    view_seconds = time.perf_counter() - start
    cpu = time.process_time()
    heads, history = tagger.fit_head_set(
        data.features.features,
        data.targets,
        data.train_rows,
        data.val_rows,
        tagger.settings("training").seed,
        False,
    )
    tagger.net_.heads = heads.eval()
    info = {
        "params": params,
        "training_rows": int(len(data.train_rows)),
        "view_rows": (tagger.views_ or {}).get("rows", {}),
        "view_seconds": round(view_seconds, 1),
        "head_seconds": round(history.seconds, 1),
        "head_cpu_seconds": round(time.process_time() - cpu, 1),
        "best_epoch": history.best_epoch,
    }
    return tagger, info


def _score(tagger: MultiTaskTagger, features: np.ndarray, frame: pd.DataFrame, tasks) -> dict:
    kept = [t for t in tagger.tasks_ if t.name in tasks]
    proba = tagger.predict_proba_features(features)
    report = report_from_arrays(
        kept, encode_all(frame, kept), {t.name: proba[t.name] for t in kept}
    )
    return {
        t.name: {
            "weighted_f1": report["tasks"][t.name]["weighted_f1"],
            "accuracy": report["tasks"][t.name]["accuracy"],
            "support": report["tasks"][t.name]["support"],
        }
        for t in kept
    }


def run(
    data_root: Path,
    hires_root: Path,
    out_dir: Path,
    model_dir: Path,
    variants: dict[str, dict | None] | None = None,
    train_rows: int | None = 8000,
    stop_rows: int | None = 1500,
    n_val: int = 2000,
    shifts: list[str] | None = None,
    epochs: int | None = None,
    seed: int = 0,
) -> dict:
    """Every measurement of the module docstring; returns the results dict. ``train_rows`` /
    ``stop_rows`` ``None``: every training row / every validation row not scored."""
    started = time.perf_counter()
    variants = variants or DEFAULT_VARIANTS
    shifts = shifts or list(SHIFTS)
    base = MultiTaskTagger.load(model_dir)
    base.set_params(runtime__progress=False)
    catalogue = load_manifest(data_root / "styles.csv", data_root / "images")
    ids = catalogue["id"].astype(str)
    train = catalogue[ids.isin({str(i) for i in base.split_["train_ids"]})]
    train = train.sample(min(train_rows or len(train), len(train)), random_state=seed)
    train = train.sort_values("id")
    val_all = catalogue[ids.isin({str(i) for i in base.split_["val_ids"]})]
    val = val_all.sample(min(n_val, len(val_all)), random_state=seed).sort_values("id")
    rest = val_all[~val_all["id"].isin(set(val["id"]))]
    stop = rest.sample(min(stop_rows or len(rest), len(rest)), random_state=seed)
    hires = load_manifest(hires_root / "styles.csv", hires_root / "images")

    def features(frame: pd.DataFrame) -> np.ndarray:
        res = extract_features(
            base.net_.encoder,
            frame["path"].tolist(),
            cache_dir=base.feature_cache_dir(),
            encoder_id=base.encoder_id(),
            precision=base.settings("training").precision,
            engine=base.settings("runtime").engine,
        )
        if res.errors:
            raise SystemExit(f"unreadable photos in the benchmark sets: {res.errors}")
        return res.features

    fit_frame = pd.concat([train, stop]).reset_index(drop=True)
    data = FitData(
        fit_frame,
        FeatureResult(features(fit_frame), {}),
        encode_all(fit_frame, base.tasks_),
        np.asarray([""] * len(fit_frame), dtype=object),
        np.arange(len(train)),
        np.arange(len(train), len(fit_frame)),
    )
    sets: dict[str, tuple[pd.DataFrame, list[str], np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="multitag-views-") as tmp:
        tmp = Path(tmp)
        small = write_variant(
            hires, tmp / "hires-60x80", lambda im: im.resize((60, 80), Image.LANCZOS), 90
        )
        named = [("validation photos", val, TASKS), ("hires as supplied", hires, HIRES_TASKS),
                 ("hires at 60x80", small, HIRES_TASKS)]  # fmt: skip
        for i, name in enumerate(shifts):
            named.append((name, write_variant(val, tmp / f"shift-{i}", *SHIFTS[name]), TASKS))
        for name, frame, tasks in named:
            sets[name] = (frame, tasks, features(frame))
    views = sorted({v for p in variants.values() for v in (p or {}).get("views") or []})
    fits: dict[str, dict] = {}
    results: dict[str, dict] = {name: {"n": len(f)} for name, (f, _, _) in sets.items()}
    out = {
        "date": date.today().isoformat(),
        "commit": git_commit(),
        "command": f"python -m multitag.bench.views --model {model_dir}"
        f" --train-rows {train_rows or 'all'} --stop-rows {stop_rows or 'all'}"
        + (f" --epochs {epochs}" if epochs else "")
        + (f" --shifts '{','.join(shifts)}'" if shifts != list(SHIFTS) else "")
        + (f" --variants '{json.dumps(variants)}'" if variants != DEFAULT_VARIANTS else ""),
        "model": {"dir": str(model_dir), "backbone": base.settings("features").backbone},
        "rows": {
            "train": len(train),
            "train_split": len(base.split_["train_ids"]),
            "epoch_choice": len(stop),
            "val": len(val),
        },  # fmt: skip
        "variants": fits,
        "variants_planned": list(variants),
        "results": results,
        "encoding_images_per_s": extraction_cost(base, train["path"].tolist()[:256], views),
    }
    with bar("variants", len(variants)) as pbar:
        for name, params in variants.items():
            tagger, fits[name] = _variant(base, params, data, epochs)
            for set_name, (frame, tasks, feats) in sets.items():
                results[set_name][name] = _score(tagger, feats, frame, tasks)
            # written after every variant: a long run that is cut short keeps what it measured
            out["feature_cache"] = {v or "photos": cache_size(base, v) for v in [None, *views]}
            out["seconds"] = round(time.perf_counter() - started, 1)
            out["targets"] = target_drops(results, list(fits))
            out_dir.mkdir(parents=True, exist_ok=True)
            write_json(out_dir / "views.json", out)
            write_text(out_dir / "views.md", to_markdown(out))
            pbar.advance()
    return out


def _reference(name: str) -> str:
    return "hires at 60x80" if name == "hires as supplied" else "validation photos"


def _drop(results: dict, name: str, variant: str, task: str, key: str = "weighted_f1") -> float:
    ref = results[_reference(name)][variant][task][key]
    return results[name][variant][task][key] - ref


def target_drops(results: dict, variants: list[str]) -> dict:
    """Per variant: the drops of the issue's target tasks under the synthetic shifts with a
    target (resolution, JPEG >= 60, canvas, mirror) and of hires as supplied, per task; the
    hires target (1 point) counts tasks with at least ``MIN_SUPPORT`` labelled photos."""
    out = {}
    for v in variants:
        syn = {
            s: {t: round(_drop(results, s, v, t), 4) for t in SHIFT_TARGET_TASKS}
            for s in SYNTHETIC_TARGETS
            if s in results
        }
        hires = {t: round(_drop(results, "hires as supplied", v, t), 4) for t in HIRES_TASKS}
        counted = [
            t for t in HIRES_TASKS if results["hires as supplied"][v][t]["support"] >= MIN_SUPPORT
        ]
        out[v] = {
            "synthetic_drops": syn,
            "synthetic_within_2_points": all(d >= -0.02 for x in syn.values() for d in x.values()),
            "hires_drops": hires,
            "hires_within_1_point": all(hires[t] >= -0.01 for t in counted),
        }
    return out


def _table(results: dict, variants: list[str], task: str) -> list[str]:
    lines = [
        "| photos | n | " + " | ".join(variants) + " |",
        "|---|---:|" + "---:|" * len(variants),
    ]
    for name, row in results.items():
        if task not in row[variants[0]]:
            continue
        cells = []
        for v in variants:
            value = row[v][task]["weighted_f1"]
            if name in ("validation photos", "hires at 60x80"):
                cells.append(f"{value:.3f}")
            else:
                cells.append(f"{value:.3f} ({_drop(results, name, v, task):+.3f})")
        lines.append(f"| {name} | {row['n']} | " + " | ".join(cells) + " |")
    return lines


def to_markdown(out: dict) -> str:
    """The BENCHMARKS.md section."""
    r, variants, rows = out["results"], list(out["variants"]), out["rows"]
    described = "; ".join(
        f"**{v}**: "
        + (
            "the saved heads, not retrained (epoch chosen on the whole validation split)"
            if f["params"] is None
            else ", ".join(f"{k}={p!r}" for k, p in f["params"].items()) or "as `fit` trains them"
        )
        for v, f in out["variants"].items()
    )
    trained_on = (
        f"all {rows['train']:,} of its training rows"
        if rows["train"] == rows.get("train_split")
        else f"a seeded sample of {rows['train']:,} of its training rows"
    )
    lines = [
        "## Extra training views (`bench/views.md`)",
        "",
        f"`{out['command']}` at commit `{out['commit']}` on {out['date']} "
        f"({out['seconds'] / 60:.0f} min, a shared host). Heads of the saved default tagger "
        f"({out['model']['backbone']}, its frozen encoder and split) trained as `fit` trains "
        f"them on {trained_on}, the epoch chosen "
        f"on {rows['epoch_choice']:,} other validation rows; variants: {described}. Each "
        "cell: weighted F1 and, in brackets, its change against the reference row "
        f"(*validation photos*, {rows['val']:,} of its own, for their synthetic shifts; "
        "*hires at 60x80* for *hires as supplied*).",
        "",
    ]
    planned = out.get("variants_planned", variants)
    if len(variants) < len(planned):
        left = ", ".join(v for v in planned if v not in out["variants"])
        lines += [f"**Cut short**: not run: {left}.", ""]
    for task in TASKS:
        lines += [f"**{task}: weighted F1**", "", *_table(r, variants, task), ""]
    lines += [
        "**What it costs**",
        "",
        "| variant | rows the heads train on | head training s | CPU s | best epoch |",
        "|---|---:|---:|---:|---:|",
    ]
    for v, f in out["variants"].items():
        extra = sum(f["view_rows"].values())
        secs = [f.get(k) for k in ("head_seconds", "head_cpu_seconds")]
        lines.append(
            f"| {v} | {f['training_rows']:,} ({extra:,} of them views) | "
            + " | ".join("(saved)" if x is None else f"{x:.0f}" for x in secs)
            + f" | {f['best_epoch'] + 1} |"
        )
    speed = out["encoding_images_per_s"]
    lines += [
        "",
        "| photos encoded | images/s (256 photos, alternated) | cache KB per photo |",
        "|---|---:|---:|",
    ]
    for name, c in out["feature_cache"].items():
        lines.append(
            f"| {name} | {speed.get(name, float('nan')):.1f} | "
            f"{c['bytes'] / max(c['rows'], 1) / 1e3:.1f} |"
        )
    lines += [
        "",
        "Largest drop of gender, masterCategory, subCategory and articleType under the "
        "shifts with a 2-point target (resolution, JPEG q60, canvas, mirror):",
        "",
    ]
    for v, t in out["targets"].items():
        worst = min(
            ((d, s, task) for s, x in t["synthetic_drops"].items() for task, d in x.items()),
            key=lambda x: x[0],
        )
        lines.append(
            f"- {v}: {worst[0]:+.3f} ({worst[2]} under {worst[1]}): "
            f"**{'met' if t['synthetic_within_2_points'] else 'not met'}**"
        )
    lines += [
        "",
        f"hires as supplied against hires at 60x80 (1-point target for tasks with >= "
        f"{MIN_SUPPORT} labelled photos), weighted F1 change:",
        "",
    ]
    for v, t in out["targets"].items():
        drops = ", ".join(f"{task} {d:+.3f}" for task, d in t["hires_drops"].items())
        met = "met" if t["hires_within_1_point"] else "not met"
        lines.append(f"- {v}: {drops}: **{met}**")
    return "\n".join(lines) + "\n"


def row_count(value: str) -> int | None:
    """A row count from the command line; ``all`` = ``None``."""
    return None if value == "all" else int(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root", type=Path, default=Path("../shared/datasets/fashion-products")
    )
    parser.add_argument(
        "--hires-root", type=Path, default=Path("../shared/datasets/fashion-products-hires")
    )
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("bench/bench-model-shift"),
        help="The saved default tagger (python -m multitag.bench.shift trains it).",
    )
    parser.add_argument("--train-rows", type=row_count, default=8000, help="A count or 'all'.")
    parser.add_argument("--stop-rows", type=row_count, default=1500, help="A count or 'all'.")
    parser.add_argument("--n-val", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=None, help="Default: the model's.")
    parser.add_argument(
        "--variants",
        type=json.loads,
        default=None,
        help="JSON {name: tagger params or null (the saved heads)}, e.g. "
        '\'{"before": {}, "after": {"views": ["flip"]}}\'.',
    )
    parser.add_argument("--shifts", default=None, help="Comma-separated subset of the shifts.")
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"{args.model}: no saved tagger; run python -m multitag.bench.shift")
    result = run(
        args.data_root,
        args.hires_root,
        args.out,
        args.model,
        args.variants,
        args.train_rows,
        args.stop_rows,
        args.n_val,
        [s.strip() for s in args.shifts.split(",")] if args.shifts else None,
        args.epochs,
    )
    print(json.dumps(result["targets"], indent=2))


if __name__ == "__main__":
    main()
