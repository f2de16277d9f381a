"""``multitag study CONFIG`` (the transfer-learning study from a YAML grid) and
``multitag learning-curve`` (tag quality against the number of labelled photos)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from multitag.cli.common import (
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
    TasksOpt,
)


def _parse_targets(values: list[str]) -> dict[str, float]:
    from multitag.cli.common import fail

    out = {}
    for value in values:
        task, _, f1 = value.partition("=")
        try:
            out[task.strip()] = float(f1)
        except ValueError:
            out[task.strip()] = -1.0  # not a number: fails the range check below
        if not task.strip() or not 0 < out[task.strip()] <= 1:
            fail(f"--target {value!r}: write TASK=F1 with F1 in (0, 1], e.g. articleType=0.9")
    return out


def register(app: typer.Typer) -> None:
    """Add the ``study`` and ``learning-curve`` commands to the ``multitag`` app."""

    @app.command("study")
    def study_cmd(
        config: Annotated[Path, typer.Argument(help="Study YAML (see examples/study.yaml).")],
        out: Annotated[Path, typer.Option("--out", help="Study folder (resumable).")] = Path(
            "artifacts/study"
        ),
    ) -> None:
        """Backbones x freeze points x sharing x loss balancing: table + HTML report."""
        from multitag.cli.common import fail, out_console
        from multitag.research.study import StudyConfig, run_study

        if not config.is_file():
            fail(f"{config}: no such study config")
        try:
            cfg = StudyConfig.load(config)
            table = run_study(cfg, out)
        except (ValueError, FileNotFoundError) as err:
            fail(str(err))
            return
        cols = [c for c in table.columns if not c.endswith("_acc")]
        out_console.print(table[cols].to_string(index=False))
        if (out / "inputs.rejects.csv").is_file():
            out_console.print(f"inputs skipped (not in the study): {out / 'inputs.rejects.csv'}")
        out_console.print(f"report: {out / 'report.html'}  table: {out / 'study.csv'}")

    @app.command("learning-curve")
    def learning_curve_cmd(
        data: DataOpt,
        out: Annotated[Path, typer.Option("--out", help="Folder for the CSV, JSON and plot.")],
        images: ImagesOpt = None,
        tasks: TasksOpt = None,
        fractions: Annotated[
            str, typer.Option(help="Shares of the training rows to train on, comma-separated.")
        ] = "0.0625,0.125,0.25,0.5,1",
        seeds: Annotated[
            int, typer.Option(min=1, help="Subset draws (and head seeds) per size.")
        ] = 2,
        target: Annotated[
            list[str] | None,
            typer.Option(help="TASK=F1: how many labelled rows would reach it (repeatable)."),
        ] = None,
        backbone: BackboneOpt = DEFAULT_BACKBONE,
        image_size: ImageSizeOpt = None,
        framing: FramingOpt = "auto",
        detail: DetailOpt = "auto",
        epochs: Annotated[int, typer.Option(min=1, help="Maximum head epochs per fit.")] = 25,
        val_fraction: Annotated[
            float, typer.Option(min=0.01, max=0.9, help="Validation share (fixed).")
        ] = 0.2,
        min_count: Annotated[
            int, typer.Option(min=1, help="Classes rarer than this are folded into 'other'.")
        ] = 5,
        seed: Annotated[int, typer.Option(min=0, help="Random seed (split, subsets, init).")] = 0,
        cache_dir: CacheDirOpt = None,
        id_col: IdColOpt = None,
        path_col: PathColOpt = None,
        ext: ExtOpt = ".jpg",
    ) -> None:
        """Weighted F1 per task against the number of labelled training photos: heads on
        frozen features, refitted on growing shares of the training split, scored on one
        fixed validation split; a power-law fit says what more labels would buy."""
        from multitag import MultiTaskTagger
        from multitag.cli.common import (
            detail_setting,
            fail,
            load_frame,
            out_console,
            split_names,
            task_list,
        )
        from multitag.research.learning_curve import check_targets, learning_curve
        from multitag.tagger.config import from_flat

        targets = _parse_targets(target or [])
        try:
            shares = [float(f) for f in split_names(fractions)]
        except ValueError:
            fail(f"--fractions {fractions!r}: comma-separated numbers in (0, 1], e.g. 0.25,0.5,1")
        frame = load_frame(data, images, id_col, path_col, ext, out / "inputs.rejects.csv")
        kwargs = {"cache_dir": cache_dir} if cache_dir is not None else {}
        settings = from_flat(dict(
            backbone=backbone, image_size=image_size, framing=framing,
            detail=detail_setting(detail), epochs=epochs, val_fraction=val_fraction,
            min_count=min_count, seed=seed, **kwargs,
        ))  # fmt: skip
        tagger = MultiTaskTagger(task_list(frame, tasks), **settings)
        try:  # before the run, not after minutes of fitting
            check_targets(targets, tagger.tasks)
        except ValueError as err:
            fail(f"--target: {err}")
        try:
            curve = learning_curve(tagger, frame, shares, seeds)
        except (ValueError, FileNotFoundError) as err:
            fail(str(err))
            return
        curve.save(out, targets)
        table = curve.extrapolate(targets)
        cols = [
            "task", "n_train", "weighted_f1", "last_doubling_gain", "next_doubling_gain",
            "target", "rows_for_target",
        ]  # fmt: skip
        out_console.print(table[cols].to_string(index=False, float_format="%.4f"))
        out_console.print(
            f"{curve.n_val} validation rows; plot: {out / 'learning_curve.png'}  "
            f"table: {out / 'learning_curve.json'}"
        )
