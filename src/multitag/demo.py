"""The main job end to end on fashion-products: validate, train, evaluate, tag."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console

from multitag.data.derive import keyword_tags
from multitag.data.manifest import load_manifest
from multitag.data.tasks import infer_tasks
from multitag.data.validate import validate
from multitag.evaluate import evaluate_split, write_reports
from multitag.io import write_table
from multitag.metrics import format_table
from multitag.tagger import MultiTaskTagger
from multitag.tagging import tag_to_file

DEMO_TASKS = [
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "usage",
    "pattern",
]
DEMO_IMAGE_SIZE = 224

console = Console(width=None if sys.stdout.isatty() else 120)


def run_demo(data_root: Path, out: Path, image_size: int | None = None) -> dict:
    """Run the demo; returns the paths it wrote."""
    started = time.perf_counter()
    data_root = Path(data_root)
    styles, images = data_root / "styles.csv", data_root / "images"
    if not styles.is_file():
        raise SystemExit(f"{styles} not found: pass --data-root to the fashion-products folder")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    console.rule("1/4 validate")
    frame = load_manifest(styles, images)
    # a multi-label attribute from the product names: pattern/material words
    frame["pattern"] = keyword_tags(frame["productDisplayName"])
    manifest = out / "manifest.csv"
    write_table(frame.drop(columns=["path"]), manifest)
    tasks = infer_tasks(frame, DEMO_TASKS, multilabel=["pattern"])
    report = validate(frame, tasks)
    console.print(
        f"{report.n_rows} rows; missing files {len(report.missing_files)}, "
        f"unreadable {len(report.unreadable)}, duplicate ids {len(report.duplicate_ids)}"
    )
    for t in tasks:
        info = report.tasks[t.name]
        console.print(
            f"  {t.name:15s} {t.kind:10s} {t.n_classes:3d} classes, "
            f"{info['missing']:5d} missing, {len(t.folded)} rare folded into 'other'"
        )

    console.rule("2/4 train (frozen backbone: features once, then 3 sets of heads)")
    # three head sets from three seeds, averaged: +0.004 mean weighted F1 over one set on the
    # full-size benchmark (bench/study.md) for about 3 more minutes of head training.
    # framing="auto": photos from other sources (square / landscape canvas, tight crop, wide
    # margins) are tagged like catalogue photos: 0.885 mean weighted F1 on each, against
    # 0.77-0.85 squash-resized, for -0.0014 on the catalogue itself (docs/study.md)
    # prior_shift="auto": a shift towards rare classes where it raises weighted F1 out of fold
    # (articleType +0.005 on unseen photos); refit=True: each head set then trains again on
    # train + val for the epochs it chose, so the saved model learns from every labelled
    # photo (articleType 0.8811 -> 0.8924 on unseen photos, docs/study.md), for about twice
    # the head-training time. Step 3 reports the heads before the refit.
    tagger = MultiTaskTagger(
        DEMO_TASKS,
        multilabel=["pattern"],
        image_size=image_size or DEMO_IMAGE_SIZE,
        ensemble=3,
        framing="auto",
        prior_shift="auto",
        refit=True,
    )
    tagger.fit(frame, validation=report)
    model_dir = out / "model"
    tagger.save(model_dir)
    console.print(
        f"framing: {tagger.net_.encoder.preprocessing.framing}; "
        f"{tagger.ensemble} head sets trained in "
        f"{sum(h.seconds for h in tagger.member_histories_):.1f}s (best epochs "
        f"{', '.join(str(h.best_epoch + 1) for h in tagger.member_histories_)})"
    )
    shifted = {n: s["tau"] for n, s in tagger.prior_shift_.items() if s["tau"]}
    console.print(f"prior shift: {shifted or 'none chosen'}")
    if tagger.refit_:
        console.print(
            f"refit: every head set trained again on {tagger.refit_['rows_after']} rows "
            f"(train + val); step 3 scores the heads before the refit"
        )

    console.rule("3/4 evaluate on the validation split (heads before the refit)")
    metrics = evaluate_split(tagger)
    write_reports(
        metrics,
        model_dir / "metrics.json",
        model_dir / "report.html",
        title="fashion-products: validation split",
    )
    console.print(format_table(metrics))

    console.rule("4/4 tag the validation images with the saved model")
    val_manifest = out / "val.csv"
    val = frame[frame["path"].isin(set(tagger.val_paths_))]  # the rows step 3 scored
    write_table(val[["id"]], val_manifest)
    reloaded = MultiTaskTagger.load(model_dir)
    tags_path, rejects, n_ok, n_bad = tag_to_file(
        reloaded, [val_manifest], out / "tags.parquet", images=images
    )
    console.rule("done")
    paths = {
        "model": model_dir,
        "tags": tags_path,
        "report": model_dir / "report.html",
        "metrics": model_dir / "metrics.json",
    }
    console.print(f"model:   {model_dir}")
    console.print(
        f"tags:    {tags_path} ({n_ok} images"
        + (f", {n_bad} rejected -> {rejects})" if rejects else ")")
    )
    console.print(f"report:  {model_dir / 'report.html'}")
    console.rule("catalogue: tags, topics, 2-D map, clusters, similar-items index")
    from multitag.catalog import build_catalog

    catalog_dir = out / "catalog"
    catalog = build_catalog(model_dir, [manifest], catalog_dir, images=images)
    paths["catalog"] = catalog_dir
    console.print(f"catalog: {catalog_dir} ({catalog['n_items']} items)")
    console.print(
        f"explore: multitag serve {catalog_dir} --model {model_dir}  then open http://127.0.0.1:8000/"
    )
    console.print(f"finished in {time.perf_counter() - started:.0f}s")
    return paths
