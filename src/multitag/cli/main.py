"""The ``multitag`` command line: thin Typer commands over the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    help="Multi-task tagging and visual search for product images.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
from multitag.cli.common import (  # noqa: E402
    DEFAULT_BACKBONE,
    BackboneOpt,
    CacheDirOpt,
    DataOpt,
    DetailOpt,
    ExtOpt,
    FramingOpt,
    IdColOpt,
    ImageSizeOpt,
    ImagesOpt,
    PathColOpt,
    PrecisionOpt,
    ScheduleOpt,
    TasksOpt,
    check_schedule,
    console,
    detail_setting,
    fail,
    load_frame,
    out_console,
    resolve_photos,
    split_names,
    task_list,
    views_setting,
)
from multitag.cli.scaling import (  # noqa: E402
    ActorsOpt,
    AddressOpt,
    CpusPerActorOpt,
    EncodeEngineOpt,
    EngineOpt,
    ShardRowsOpt,
    encoder_engine,
    tag_dataset,
)


@app.command("validate")
def validate_cmd(
    data: DataOpt,
    images: ImagesOpt = None,
    tasks: Annotated[str | None, typer.Option(help="Comma-separated label columns.")] = None,
    multilabel: Annotated[
        str | None, typer.Option(help="Multi-label columns (comma-separated).")
    ] = None,
    delimiter: Annotated[str, typer.Option(help="Delimiter inside multi-label cells.")] = "|",
    min_count: Annotated[
        int, typer.Option(min=1, help="Classes rarer than this are folded/dropped.")
    ] = 5,
    id_col: IdColOpt = None,
    path_col: PathColOpt = None,
    ext: ExtOpt = ".jpg",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON.")
    ] = None,
) -> None:
    """Report missing files, unreadable images, duplicate ids, empty tasks and class counts."""
    from multitag.core.io import write_json
    from multitag.data.tasks import infer_tasks
    from multitag.data.validate import validate

    found = resolve_photos([data], images, id_col, path_col, ext)
    frame = found.frame
    names = task_list(frame, tasks)
    report = validate(frame, names)
    task_objs = []
    if report.ok:
        try:
            task_objs = infer_tasks(
                frame,
                names,
                multilabel=split_names(multilabel),
                delimiter=delimiter,
                min_count=min_count,
            )
        except ValueError as err:
            fail(str(err))
        report.tasks = validate(frame, task_objs, decode=False, progress=False).tasks
    table = Table(title=f"{data}: {report.n_rows} rows")
    for col in ("task", "kind", "labelled", "missing", "classes", "top classes", "rare (folded)"):
        table.add_column(col)
    for name, info in report.tasks.items():
        counts = info.get("class_counts", {})
        top = ", ".join(f"{k} {v}" for k, v in list(counts.items())[:4])
        rare = info.get("folded_into_other") or info.get("dropped") or []
        table.add_row(
            name,
            info.get("kind", "?"),
            str(info["labelled"]),
            str(info["missing"]),
            str(len(counts)),
            top,
            f"{len(rare)}: {', '.join(rare[:4])}" if rare else "0",
        )
    out_console.print(table)
    for line in report.problems():
        console.print(f"[yellow]problem:[/yellow] {line}")
    console.print(
        f"skipped inputs: {len(found.skipped)}, "
        f"missing files: {len(report.missing_files)}, unreadable: {len(report.unreadable)}, "
        f"duplicate ids: {len(report.duplicate_ids)}, empty tasks: {len(report.empty_tasks)}, "
        f"identical-image groups: {len(report.duplicate_images)}"
    )
    for name, c in report.conflict_summary().items():
        if c["conflicting"]:
            console.print(
                f"{name}: {c['conflicting']} of {c['groups']} identical-image groups disagree "
                f"({c['share']:.1%})"
            )
    if json_out:
        skipped = found.skipped_frame().to_dict(orient="records")
        write_json(json_out, {**report.to_dict(), "skipped_inputs": skipped})
    if not report.ok:
        raise typer.Exit(1)


def _print_rare_classes(tasks, min_count: int) -> None:
    """The classes rarer than ``--min-count`` that training folded into ``other`` or dropped
    (the README promises they are reported)."""
    for task in tasks:
        for rare, what in ((task.folded, f"folded into {task.other!r}"), (task.dropped, "dropped")):
            if rare:
                shown = ", ".join(rare[:12]) + (
                    f" and {len(rare) - 12} more" if len(rare) > 12 else ""
                )
                console.print(
                    f"{task.name}: {len(rare)} class(es) with fewer than {min_count} examples "
                    f"{what}: {escape(shown)}"
                )


def _print_prior_shift(shifts: dict[str, dict]) -> None:
    for name, shift in shifts.items():
        console.print(
            f"prior shift {name}: tau {shift['tau']:+.1f} "
            f"(cross-fitted weighted F1 gain {shift['cross_fitted_gain']:+.4f})"
        )


@app.command("train")
def train_cmd(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Model directory to write.")],
    images: ImagesOpt = None,
    tasks: TasksOpt = None,
    backbone: BackboneOpt = DEFAULT_BACKBONE,
    weights: Annotated[
        str, typer.Option(help="auto, package, hub, or a state-dict file.")
    ] = "auto",
    freeze: Annotated[
        str, typer.Option(help="'all' (heads only) or the last frozen stage, e.g. blocks.4.")
    ] = "all",
    image_size: ImageSizeOpt = None,
    framing: FramingOpt = "auto",
    detail: DetailOpt = "auto",
    views: Annotated[
        str,
        typer.Option(
            help="Extra views of the training photos to also train the heads on (cached "
            "features, comma-separated): flip, jpeg60, grey, down2; 'auto' = flip,jpeg60 "
            "with a frozen backbone; 'none' (docs/robustness.md)."
        ),
    ] = "auto",
    view_fraction: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of the training photos (seeded) that get the --views; below 1 a view "
            "costs that share of an encoder pass.",
        ),
    ] = 1.0,
    flip_invariant: Annotated[
        bool,
        typer.Option(
            help="Average every feature with its mirror-image feature before the heads, so a "
            "photo and its mirror image get the same tags."
        ),
    ] = False,
    epochs: Annotated[
        int | None,
        typer.Option(
            min=1, help="Maximum epochs (early stopping on val); default: the schedule's."
        ),
    ] = None,
    schedule: ScheduleOpt = "thorough",
    finetune_epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Fine-tuning epochs with --freeze (default min(epochs, 5))."),
    ] = None,
    finetune_lr: Annotated[
        float, typer.Option(min=0.0, help="Backbone learning rate when fine-tuning.")
    ] = 5e-4,
    head: Annotated[
        str, typer.Option(help="linear (on the shared trunk) or mlp (a hidden layer per task).")
    ] = "linear",
    head_sets: Annotated[
        int,
        typer.Option(
            min=1,
            help="Head sets fitted from seeds seed, seed+1, ... on the same features, their "
            "probabilities averaged (one encoder pass; `combine` averages whole models).",
        ),
    ] = 1,
    prior_shift: Annotated[
        str,
        typer.Option(
            help="'auto': shift each multi-class task's decisions between frequent and rare "
            "classes where that raises weighted F1 on val rows it was not chosen on; "
            "'none': off."
        ),
    ] = "none",
    refit: Annotated[
        bool,
        typer.Option(
            help="Once each head set has chosen its epochs on the val split, train it again on "
            "train + val (frozen backbone): the model learns from every labelled photo; the "
            "printed scores are those of the heads before the refit."
        ),
    ] = False,
    multilabel: Annotated[
        str | None, typer.Option(help="Multi-label columns (comma-separated).")
    ] = None,
    delimiter: Annotated[str, typer.Option(help="Delimiter inside multi-label cells.")] = "|",
    min_count: Annotated[
        int, typer.Option(min=1, help="Classes rarer than this are folded/dropped.")
    ] = 5,
    rare: Annotated[str, typer.Option(help="'other' (fold rare classes) or 'drop'.")] = "other",
    val_fraction: Annotated[
        float, typer.Option(min=0.01, max=0.9, help="Validation share (stratified).")
    ] = 0.2,
    class_weight: Annotated[str, typer.Option(help="none, sqrt or balanced.")] = "none",
    seed: Annotated[int, typer.Option(min=0, help="Random seed (split, init, order).")] = 0,
    cache_dir: CacheDirOpt = None,
    precision: PrecisionOpt = None,
    id_col: IdColOpt = None,
    path_col: PathColOpt = None,
    ext: ExtOpt = ".jpg",
    encode_on: EncodeEngineOpt = "local",
    address: AddressOpt = None,
    actors: ActorsOpt = None,
    cpus_per_actor: CpusPerActorOpt = None,
) -> None:
    """Train a multi-task tagger and save it; evaluates on the validation split.

    With --engine ray the photos' features are extracted by Ray actors into the feature
    cache; the heads then train here as usual."""
    from multitag import MultiTaskTagger
    from multitag.evaluation.report import evaluate_split, write_reports
    from multitag.tagger.config import from_flat

    kwargs = check_schedule(schedule)  # batch size, lr, epochs, patience, warm refit
    if epochs is not None:
        kwargs["epochs"] = epochs
    frame = load_frame(data, images, id_col, path_col, ext, out / "inputs.rejects.csv")
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    if precision is not None:  # recorded: the model then tags as it was trained
        kwargs["precision"] = precision
    settings = dict(  # the flags by their flat names; from_flat groups them
        backbone=backbone,
        weights=weights,
        freeze=freeze,
        finetune_epochs=finetune_epochs,
        finetune_lr=finetune_lr,
        image_size=image_size,
        framing=framing,
        detail=detail_setting(detail),
        views=views_setting(views),
        view_fraction=view_fraction,
        flip_invariant=flip_invariant,
        head=head,
        head_sets=head_sets,
        prior_shift=prior_shift,
        refit=refit,
        multilabel=split_names(multilabel),
        delimiter=delimiter,
        min_count=min_count,
        rare=rare,
        val_fraction=val_fraction,
        class_weight=class_weight,
        seed=seed,
        **kwargs,
    )
    tagger = MultiTaskTagger(task_list(frame, tasks), **from_flat(settings))
    from multitag.core.locks import writer_lock

    try:
        with (
            writer_lock(out, "model (train)", folder=True),  # held from fit to save
            encoder_engine(encode_on, address, actors, cpus_per_actor),
        ):
            tagger.fit(frame)
            tagger.save(out)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    for problem in tagger.validation_.problems()[:20]:
        console.print(f"[yellow]skipped:[/yellow] {problem}")
    _print_rare_classes(tagger.tasks_, min_count)
    report = evaluate_split(tagger)
    write_reports(
        report, out / "metrics.json", out / "report.html", title=f"{out.name}: validation"
    )
    from multitag.evaluation.metrics import format_table

    console.print(format_table(report))
    _print_prior_shift(tagger.prior_shift_)
    if tagger.refit_:
        r = tagger.refit_
        how = "warm, epochs" if r.get("warm") else "epochs"
        console.print(
            f"refit: scores above are on {r['val_rows']} val rows, before the heads were "
            f"trained again on all {r['rows_after']} rows ({how} "
            f"{', '.join(map(str, r['epochs']))}); score the saved model on new photos"
        )
    console.print(f"model: {out}  (report: {out / 'report.html'})")
    from multitag.core.next_step import print_command

    # `catalog build` reads its photos with the same input options as train
    where = [data] + (["--images", images] if images is not None else [])
    where += ["--id-col", id_col] if id_col is not None else []
    where += ["--path-col", path_col] if path_col is not None else []
    where += ["--ext", ext] if ext != ".jpg" else []
    catalog = out.with_name(f"{out.name}-catalog")
    print_command(console, "browse the photos", "catalog", "build", out, *where, "--out", catalog)


@app.command("evaluate")
def evaluate_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model directory.")],
    data: DataOpt,
    json_out: Annotated[Path, typer.Option("--json", help="Metrics JSON to write.")],
    images: ImagesOpt = None,
    html: Annotated[Path | None, typer.Option("--html", help="HTML report with plots.")] = None,
    held_out: Annotated[
        bool,
        typer.Option(
            "--held-out",
            help="Score only the rows the model (every member) did not train on, e.g. the "
            "validation rows of the manifest it was trained from.",
        ),
    ] = False,
    precision: PrecisionOpt = None,
    id_col: IdColOpt = None,
    path_col: PathColOpt = None,
    ext: ExtOpt = ".jpg",
) -> None:
    """Per-task accuracy, top-3, macro/weighted F1 (+ mAP for multi-label) on a labelled set."""
    from multitag.evaluation.metrics import format_table
    from multitag.evaluation.report import evaluate_frame, write_reports
    from multitag.tagger.batch import rejects_path
    from multitag.tagger.held_out import held_out_rows, seen_rows

    tagger = _load_model(model_dir)
    frame = load_frame(data, images, id_col, path_col, ext, rejects_path(json_out))
    if held_out:
        try:
            rows = held_out_rows(tagger, frame, str(data))
        except ValueError as err:
            fail(str(err))
        frame = rows.frame
        console.print(rows.summary("scoring"))
    elif n_seen := len(seen_rows(tagger, frame)):
        console.print(
            f"[yellow]{n_seen} of {len(frame)} row(s) were in the model's training split: "
            "their scores are optimistic; --held-out scores only the others[/yellow]"
        )
    try:
        report = evaluate_frame(tagger, frame)
    except ValueError as err:
        fail(f"{data}: {err}")
    write_reports(report, json_out, html, title=f"{model_dir.name} on {data.name}")
    console.print(format_table(report))
    if report.get("skipped_tasks"):
        console.print(
            f"[yellow]skipped task(s) with no column in {data.name}: "
            f"{', '.join(report['skipped_tasks'])}[/yellow]"
        )
    for warning in report.get("source_warnings", []):
        console.print(
            f"[yellow]these photos differ from the training photos: {warning}; scores on "
            "the validation split may not hold here[/yellow]"
        )
    if report.get("rejects"):
        console.print(f"[yellow]{len(report['rejects'])} unreadable image(s) skipped[/yellow]")
    for name, labels in report.get("unknown_label_values", {}).items():
        shown = ", ".join(f"{label!r} ({n})" for label, n in list(labels.items())[:8])
        more = f" and {len(labels) - 8} more" if len(labels) > 8 else ""
        console.print(
            f"[yellow]{data}: {name!r} has labels the model does not know: {escape(shown)}"
            f"{more}; those rows are not scored on {name!r} (check spelling and case)[/yellow]"
        )


def _load_model(model_dir: Path):
    from multitag.tagger.loading import load_any_tagger

    try:
        model = load_any_tagger(model_dir)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    if hasattr(model, "release_engines"):  # an ensemble: one member's engine in memory at once
        model.release_engines = True
    return model


@app.command("tag")
def tag_cmd(
    model_dir: Annotated[
        Path,
        typer.Argument(help="Model directory, or a backbone name for its ImageNet tags only."),
    ],
    paths: Annotated[list[Path], typer.Argument(help="Image files, folders or manifests.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output .parquet, .csv or .jsonl file; or a folder (no suffix): a Parquet "
            "dataset written shard by shard as it goes, which a rerun resumes.",
        ),
    ],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Tags per task.")] = 3,
    images: ImagesOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 64,
    precision: PrecisionOpt = None,
    id_col: IdColOpt = None,
    path_col: PathColOpt = None,
    ext: ExtOpt = ".jpg",
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    actors: ActorsOpt = None,
    cpus_per_actor: CpusPerActorOpt = None,
    shard_rows: ShardRowsOpt = 4096,
) -> None:
    """Tag images: top-k labels with probabilities per task + ImageNet tags."""
    from multitag.catalog.backbone_tagger import BackboneTagger, is_backbone_name
    from multitag.core.io import OutputNotWritten, check_table_suffix
    from multitag.tagger.batch import tag_to_file

    if out.is_dir() or not out.suffix:
        if is_backbone_name(model_dir):
            fail(
                f"{model_dir} is a backbone name: its ImageNet tags go to one .parquet, .csv or "
                ".jsonl file; a dataset folder (--out without a suffix, --engine ray) needs a "
                "model directory from `multitag train`"
            )
        found = resolve_photos(paths, images, id_col, path_col, ext)
        ray_options = dict(address=address, actors=actors, cpus_per_actor=cpus_per_actor)
        tag_dataset(model_dir, found, out, top_k, batch_size, shard_rows, engine, ray_options)
        return
    if engine != "local":
        fail(f"--engine {engine} writes a dataset folder: give --out a folder (no suffix)")
    try:
        check_table_suffix(out)
    except ValueError as err:
        fail(str(err))
    if is_backbone_name(model_dir):  # no trained model: the backbone's ImageNet tags
        tagger = BackboneTagger(str(model_dir))
    else:
        tagger = _load_model(model_dir)
    found = resolve_photos(paths, images, id_col, path_col, ext)
    try:
        written, rejects, n_ok, n_bad = tag_to_file(
            tagger, found, out, top_k=top_k, batch_size=batch_size
        )
    except (FileNotFoundError, ValueError, OutputNotWritten) as err:
        fail(str(err))
    console.print(f"tagged {n_ok} image(s) -> {written}")
    if rejects:
        console.print(
            f"[yellow]{n_bad} input(s) not tagged ({len(found.skipped)} skipped, "
            f"{n_bad - len(found.skipped)} unreadable) -> {rejects}[/yellow]"
        )


@app.command("export")
def export_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model directory.")],
    onnx: Annotated[Path, typer.Option("--onnx", help="Output .onnx file (+ a .json sidecar).")],
) -> None:
    """Export a tagger to ONNX: uint8 images in, per-task probabilities out."""
    from multitag.tagger.export import export_onnx

    tagger = _load_model(model_dir)
    try:
        path = export_onnx(tagger, onnx)
    except (ValueError, RuntimeError) as err:
        fail(str(err))
    console.print(
        f"ONNX model -> {path} (inputs, outputs and classes in {path.with_suffix('.json')})"
    )


@app.command("combine")
def combine_cmd(
    out: Annotated[Path, typer.Argument(help="Ensemble directory to write.")],
    model_dirs: Annotated[
        list[Path], typer.Argument(help="Two or more saved taggers with the same tasks.")
    ],
    weight: Annotated[
        list[float] | None,
        typer.Option("--weight", min=0.0, help="One per model, in order (default: equal)."),
    ] = None,
    prior_shift_data: Annotated[
        Path | None,
        typer.Option(
            "--prior-shift-data",
            help="Labelled manifest of photos no member trained on (e.g. their val split): "
            "choose a shift between frequent and rare classes per task where it raises "
            "weighted F1 out of fold.",
        ),
    ] = None,
    images: ImagesOpt = None,
    id_col: IdColOpt = None,
    path_col: PathColOpt = None,
    ext: ExtOpt = ".jpg",
) -> None:
    """Average saved taggers (e.g. two backbones) into one model that `tag` and `evaluate`
    take: it runs every member's encoder, so it costs the sum of their inference."""
    from multitag.tagger.ensemble import TaggerEnsemble

    if len(model_dirs) < 2:
        fail("combine needs two or more model directories")
    try:
        ensemble = TaggerEnsemble.from_dirs(model_dirs, weight or None)
        ensemble.release_engines = True
        if prior_shift_data is not None:
            frame = load_frame(prior_shift_data, images, id_col, path_col, ext)
            ensemble.fit_prior_shift(frame)
            console.print(ensemble.prior_shift_rows_.summary("prior shift fitted on"))
        ensemble.save(out)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    _print_prior_shift(ensemble.prior_shift_)
    console.print(f"ensemble of {len(model_dirs)} taggers -> {out}  ({escape(repr(ensemble))})")


@app.command("backbones")
def backbones_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List registered backbones: stages (freeze points), parameters, weights source."""
    from multitag.vision import backbones

    rows = [backbones.describe(s.name) for s in backbones.registered()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="registered backbones (any other timm name works online)")
    for col in ("name", "params", "stages (freeze points)", "weights", "ImageNet head"):
        table.add_column(col)
    for r in rows:
        stages = ", ".join(f"{s['module']}({s['channels']})" for s in r["stages"])
        table.add_row(
            r["name"],
            f"{r['params'] / 1e6:.1f}M",
            stages,
            r["weights"],
            "yes" if r["imagenet_classifier"] else "no",
        )
    out_console.print(table)


@app.command("demo")
def demo_cmd(
    data_root: Annotated[Path, typer.Option(help="fashion-products folder.")] = Path(
        "../shared/datasets/fashion-products"
    ),
    out: Annotated[Path, typer.Option(help="Where to write the model, tags and reports.")] = Path(
        "artifacts/demo"
    ),
    image_size: Annotated[
        int | None, typer.Option(min=32, max=1024, help="Square input size.")
    ] = None,
    explore: Annotated[
        bool,
        typer.Option(
            "--explore",
            help="Serve the demo's catalogue in the explorer (what `make explore` runs), "
            "building only what is missing first: the whole demo when there is no model yet.",
        ),
    ] = False,
    host: Annotated[str, typer.Option(help="With --explore: interface to listen on.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="With --explore: port.")] = 8000,
    schedule: ScheduleOpt = "quick",  # the demo's own (cli.demo.DEMO_SCHEDULE)
) -> None:
    """The main job end to end: validate, train, evaluate, tag, catalogue, on fashion-products."""
    from multitag.cli.demo import prepare_explore, run_demo

    check_schedule(schedule)
    if not explore:
        run_demo(data_root, out, image_size=image_size, schedule=schedule)
        return
    from multitag.cli.catalog import serve_cmd
    from multitag.cli.common import check_port

    check_port(host, port)  # before the demo or the catalogue build, not after
    try:
        catalog_dir, model_dir = prepare_explore(
            data_root, out, image_size=image_size, schedule=schedule
        )
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    serve_cmd(catalog_dir, model=model_dir, host=host, port=port)


from multitag.cli.embed import register as _register_embed  # noqa: E402

_register_embed(app)


from multitag.cli.catalog import register as _register_catalog  # noqa: E402

_register_catalog(app)


from multitag.cli.study import register as _register_study  # noqa: E402

_register_study(app)


def main() -> None:
    from multitag.core.runtime import keep_freed_memory

    keep_freed_memory()  # large per-step tensors reuse memory instead of page-faulting it in
    app()


if __name__ == "__main__":
    main()
