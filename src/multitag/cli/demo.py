"""The main job end to end on fashion-products: validate, train, embed, evaluate, tag,
catalogue; then (``multitag demo --explore``, what ``make explore`` runs) the explorer over
its catalogue."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from multitag.core.io import write_table
from multitag.core.next_step import command, print_command
from multitag.data.derive import keyword_tags
from multitag.data.manifest import load_manifest
from multitag.data.tasks import infer_tasks
from multitag.data.validate import validate
from multitag.evaluation.metrics import format_table
from multitag.evaluation.report import evaluate_split, write_reports
from multitag.tagger.batch import tag_to_file
from multitag.tagger.config import SCHEDULES, schedule
from multitag.tagger.estimator import MultiTaskTagger

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
DEMO_STEPS = 6
# the head-training schedule (multitag.tagger.config.SCHEDULES; `multitag demo --schedule`):
# the three head sets train as one batched model (training/head_sets.py). "quick" trains
# everything the demo trains on cached features within a minute, for under a point of mean
# weighted F1 on unseen photos (docs/demo.md); "thorough", the tagger's default, trains the
# slower way
DEMO_SCHEDULE = "quick"
DEMO_TRAINING = SCHEDULES[DEMO_SCHEDULE]
# "similar items" = the same type, colour and gender; the embedder trains on the tagger's
# cached features (embedding/beside.py) and is saved beside it (docs/demo.md), with the
# settings of the demo's schedule
DEMO_SAME = ["articleType", "baseColour", "gender"]
DEMO_EMBEDDERS = {
    "thorough": {"epochs": 8, "batch_size": 512, "lr": 2e-3},
    "quick": {"epochs": 3, "batch_size": 512, "lr": 2e-3},
}
EXPLORE_MAKE_TARGET = "make explore"  # the Makefile target that runs `multitag demo --explore`

console = Console(width=None if sys.stdout.isatty() else 120)


class _Steps:
    """Numbered steps (``1/6 validate`` ... ``6/6 catalogue``) and how long each took."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[None]:
        label = f"{len(self.seconds) + 1}/{self.total} {name}"
        console.rule(label + (f" ({detail})" if detail else ""))
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[label] = time.perf_counter() - started


def _styles_and_images(data_root: Path) -> tuple[Path, Path]:
    styles, images = Path(data_root) / "styles.csv", Path(data_root) / "images"
    if not styles.is_file():
        raise SystemExit(
            f"{styles} not found: pass the fashion-products folder, e.g. "
            + command("demo", "--data-root", "PATH/TO/fashion-products")
        )
    return styles, images


def run_demo(
    data_root: Path, out: Path, image_size: int | None = None, schedule: str = DEMO_SCHEDULE
) -> dict:
    """Run the demo with the head-training ``schedule`` (:data:`DEMO_EMBEDDERS` for the
    embedder); returns the paths it wrote and ``seconds`` per step."""
    embedder = demo_embedder(schedule)  # a bad name fails before any work
    started = time.perf_counter()
    styles, images = _styles_and_images(data_root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = _Steps(DEMO_STEPS)

    with steps.step("validate"):
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

    with steps.step("train", "frozen backbone: features once, then 3 sets of heads"):
        # three head sets from three seeds, averaged (BENCHMARKS.md, "Study targets at full
        # size"), trained together as one batched model.
        # framing="auto": photos from other sources (square / landscape canvas, tight crop,
        # wide margins) are tagged like catalogue photos, for a small loss on the catalogue
        # itself (research/LOG.md, "Photos framed differently: product framing").
        # prior_shift="auto": a shift towards rare classes where it raises weighted F1 out of
        # fold; refit=True: the head sets then train again on train + val for the epochs they
        # chose, so the saved model learns from every labelled photo (BENCHMARKS.md, "Refit on
        # train + val, scored on unseen photos"). The evaluate step reports the heads before
        # the refit.
        tagger = demo_tagger(image_size, schedule)
        tagger.fit(frame, validation=report)
        model_dir = out / "model"
        tagger.save(model_dir)
        console.print(
            f"framing: {tagger.net_.encoder.preprocessing.framing}; "
            f"{tagger.settings('heads').head_sets} head sets trained in "
            f"{sum(h.seconds for h in tagger.member_histories_):.1f}s (best epochs "
            f"{', '.join(str(h.best_epoch + 1) for h in tagger.member_histories_)})"
        )
        shifted = {n: s["tau"] for n, s in tagger.prior_shift_.items() if s["tau"]}
        console.print(f"prior shift: {shifted or 'none chosen'}")
        if tagger.refit_:
            console.print(
                f"refit: every head set trained again on {tagger.refit_['rows_after']} rows "
                f"(train + val); the evaluate step scores the heads before the refit"
            )

    with steps.step("embed", "similar-items embedding on the same cached features"):
        embedding = _train_embedder(tagger, frame, model_dir, embedder)

    with steps.step("evaluate", "validation split, heads before the refit"):
        metrics = evaluate_split(tagger)
        write_reports(
            metrics,
            model_dir / "metrics.json",
            model_dir / "report.html",
            title="fashion-products: validation split",
        )
        console.print(format_table(metrics))

    with steps.step("tag", "the validation images, with the saved model reloaded"):
        val_manifest = out / "val.csv"
        val = frame[frame["path"].isin(set(tagger.val_paths_))]  # the rows the evaluate step scored
        write_table(val[["id"]], val_manifest)
        reloaded = MultiTaskTagger.load(model_dir)
        tags_path, rejects, n_ok, n_bad = tag_to_file(
            reloaded, [val_manifest], out / "tags.parquet", images=images
        )
        console.print(f"tagged {n_ok} image(s) -> {tags_path}")

    with steps.step("catalogue", "tags, topics, 2-D map, clusters, similar-items index"):
        from multitag.catalog import build_catalog

        catalog_dir = out / "catalog"
        catalog = build_catalog(model_dir, [manifest], catalog_dir, images=images)
        console.print(f"{catalog['n_items']} items -> {catalog_dir}")

    paths = {
        "model": model_dir,
        "tags": tags_path,
        "report": model_dir / "report.html",
        "metrics": model_dir / "metrics.json",
        "catalog": catalog_dir,
        "seconds": dict(steps.seconds),
    }
    where = {
        "model": str(model_dir),
        "tags": f"{tags_path} ({n_ok} images"
        + (f", {n_bad} rejected -> {rejects})" if rejects else ")"),
        "report": f"{model_dir / 'report.html'} (metrics: {model_dir / 'metrics.json'})",
        "embedding": f"{model_dir / 'embedding.json'} ({embedding})",
        "catalogue": f"{catalog_dir} ({catalog['n_items']} items, similar items by "
        f"{catalog['embedding']['source']})",
    }
    _summary(where, metrics, steps.seconds, time.perf_counter() - started)
    print_command(
        console,
        "explore",
        "serve",
        catalog_dir,
        "--model",
        model_dir,
        after="   then open http://127.0.0.1:8000/",
    )
    return paths


def demo_tagger(
    image_size: int | None = None, schedule_name: str = DEMO_SCHEDULE, **overrides
) -> MultiTaskTagger:
    """The tagger the demo trains with the head-training schedule ``schedule_name``
    (:data:`~multitag.tagger.config.SCHEDULES`); ``overrides``: any of its settings by flat
    name (:func:`~multitag.tagger.config.from_flat`), e.g. for a benchmark of another one."""
    from multitag.tagger.config import from_flat

    params = dict(
        multilabel=["pattern"],
        image_size=image_size or DEMO_IMAGE_SIZE,
        head_sets=3,
        framing="auto",
        prior_shift="auto",
        refit=True,
        # no extra training views: each costs an encoder pass over the training photos and
        # the cold demo must stay within 10 minutes (docs/robustness.md, what they buy)
        views="none",
        **schedule(schedule_name),
    )
    return MultiTaskTagger(DEMO_TASKS, **from_flat({**params, **overrides}))


def demo_embedder(schedule_name: str = DEMO_SCHEDULE) -> dict:
    """The embedder settings of the demo's schedule ``schedule_name`` (a copy)."""
    schedule(schedule_name)  # the same one-line error for a bad name
    return dict(DEMO_EMBEDDERS[schedule_name])


def _train_embedder(tagger: MultiTaskTagger, frame, model_dir: Path, params: dict) -> str:
    """Train the similar-items embedder with ``params`` on the tagger's train rows (its
    cached features: no second encoder pass), save it beside the tagger and score it on the
    val rows; returns the line the summary prints."""
    from multitag.embedding.beside import fit_beside
    from multitag.embedding.evaluate import retrieval_metrics
    from multitag.embedding.model import same_key

    val = frame["path"].isin(set(tagger.val_paths_)).to_numpy()
    emb = fit_beside(tagger, frame, DEMO_SAME, rows=np.flatnonzero(~val), **params)
    emb.save(model_dir)
    key = same_key(frame.set_index("path").loc[tagger.val_paths_], DEMO_SAME).to_numpy()
    has = key != ""
    feats = tagger.val_features_[has]
    scores = {
        name: retrieval_metrics(vectors, key[has], ks=(1,), nmi=False)["recall@1"]
        for name, vectors in (("trained", emb.transform_features(feats)), ("raw", feats))
    }
    line = (
        f"{emb.dim}-d, same {'+'.join(DEMO_SAME)}: recall@1 on the val split "
        f"{scores['trained']:.3f}, raw features {scores['raw']:.3f}"
    )
    console.print(f"embedder -> {model_dir / 'embedding.json'}; {line}", soft_wrap=True)
    return line


def _summary(where: dict[str, str], metrics: dict, seconds: dict[str, float], total: float):
    """One screen: where everything is, the validation table, and each step's time."""
    console.rule("summary")
    for name, text in where.items():
        console.print(f"{name + ':':11s}{text}", soft_wrap=True, markup=False)
    console.print("\nvalidation split (heads before the refit):")
    console.print(format_table(metrics))
    timing = Table(show_edge=False, box=None, pad_edge=False)
    timing.add_column("step")
    timing.add_column("time", justify="right")
    for label, s in seconds.items():
        timing.add_row(label, _duration(s))
    timing.add_row("total", _duration(total))
    console.print(timing)


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes}m{s:02d}s" if minutes else f"{s}s"


def prepare_explore(
    data_root: Path, out: Path, image_size: int | None = None, schedule: str = DEMO_SCHEDULE
) -> tuple[Path, Path]:
    """``(catalog_dir, model_dir)`` of the demo in ``out``, building what is missing first:
    the whole demo when there is no model yet, else the catalogue when it is not finished
    (a killed build resumes)."""
    from multitag.catalog import build_catalog
    from multitag.catalog.store import is_built

    out = Path(out)
    model_dir, catalog_dir, manifest = out / "model", out / "catalog", out / "manifest.csv"
    if not (model_dir / "config.json").is_file():
        console.print(f"no demo model in {model_dir} yet: running the demo first")
        run_demo(data_root, out, image_size=image_size, schedule=schedule)
    elif not is_built(catalog_dir):
        _, images = _styles_and_images(data_root)
        if not manifest.is_file():
            raise SystemExit(
                f"{manifest} is missing, so the catalogue cannot be built: run the demo again, "
                + command("demo", "--data-root", data_root, "--out", out)
            )
        console.rule(f"catalogue of {manifest} (the demo's last step)")
        catalog = build_catalog(model_dir, [manifest], catalog_dir, images=images)
        console.print(f"{catalog['n_items']} items -> {catalog_dir}")
    return catalog_dir, model_dir
