"""Shared pieces of the command line: consoles, common options, error exit, manifest loading."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out_console = Console(width=None if sys.stdout.isatty() else 160)  # logs: don't squeeze tables

DataOpt = Annotated[
    Path,
    typer.Option(
        "--data",
        help="Manifest (CSV, TSV, Parquet, JSONL), folder of images or folder-per-class tree.",
    ),
]
# the input options every command that takes photos shares (multitag.data.inputs reads them)
ImagesOpt = Annotated[
    Path | None,
    typer.Option(
        "--images",
        help="Folder a manifest's relative paths (or <id><ext> files) are in "
        "(default: the manifest's folder).",
    ),
]
IdColOpt = Annotated[
    str | None,
    typer.Option(
        "--id-col", help="Manifest column with the image id (default: id, else the path)."
    ),
]
PathColOpt = Annotated[
    str | None,
    typer.Option(
        "--path-col",
        help="Manifest column with image paths (default: a path, filepath or file column).",
    ),
]
ExtOpt = Annotated[
    str, typer.Option("--ext", help="Image file extension after the id (no path column).")
]
# the model options that train and learning-curve share (one help text, one default each)
TasksOpt = Annotated[str | None, typer.Option(help="Comma-separated label columns.")]
BackboneOpt = Annotated[str, typer.Option(help="Registered backbone or any timm name.")]
DEFAULT_BACKBONE = "tf_efficientnet_lite0"
ImageSizeOpt = Annotated[
    int | None, typer.Option(min=32, max=1024, help="Square input size (default: backbone's).")
]
FramingOpt = Annotated[
    str,
    typer.Option(
        help="'auto': crop every photo to its product and centre it on the catalogue's "
        "canvas (measured on the training images), so photos framed differently tag "
        "alike; 'none': squash-resize only."
    ),
]
DetailOpt = Annotated[
    str,
    typer.Option(
        help="'auto': bring every photo larger than the training photos down to their level "
        "of detail (measured on the training images) before the square resize, so sharp, "
        "large photos tag like the training photos; 'none': off; or a pixel count, e.g. 4800."
    ),
]
CacheDirOpt = Annotated[Path | None, typer.Option(help="Feature cache folder.")]


def _set_precision(value: str | None) -> str | None:
    """``--precision``: this run's inference precision for every engine it starts, set in one
    place (``MULTITAG_PRECISION``, read by :func:`multitag.vision.engines.inference_precision`, so
    worker processes see it too)."""
    from multitag.core.runtime import PRECISIONS

    if value is None:
        return None
    if value not in PRECISIONS:
        fail(f"--precision {value!r} is not a precision: use one of {', '.join(PRECISIONS)}")
    os.environ["MULTITAG_PRECISION"] = value
    return value


# every command that runs an engine takes it (tag, evaluate, train, catalog build, serve)
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        callback=_set_precision,
        help="Inference precision of the backbone: int8 (OpenVINO, quantized with NNCF on "
        "the model's training photos; cached after the first run), bf16, fp32 or auto "
        "(default: the model's own, auto = bf16 where the CPU has it). int8 features are "
        "cached apart from float ones.",
    ),
]


ScheduleOpt = Annotated[
    str,
    typer.Option(
        help="Head-training schedule (multitag.tagger.config.SCHEDULES): 'thorough' (the "
        "default settings, refit from scratch) or 'quick' (bigger batches, fewer epochs, a warm "
        "refit: a fraction of the time for a little accuracy; docs/demo.md).",
    ),
]


def check_schedule(name: str) -> dict:
    """``--schedule``: its flat training settings, or a one-line error (exit 2)."""
    from multitag.tagger.config import schedule

    try:
        return schedule(name)
    except ValueError as err:
        fail(f"--{err}")


def split_names(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def fail(message: str) -> None:
    # a message is text, not markup; one unbroken line, so a command in it pastes as printed
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


def detail_setting(value: str) -> str | int:
    """``--detail``: 'auto', 'none' or a pixel count (validated by the estimator)."""
    return int(value) if value.strip().isdigit() else value.strip()


def views_setting(value: str) -> str | list[str]:
    """``--views``: 'auto', 'none' or comma-separated view names (validated by the estimator)."""
    value = value.strip()
    return value if value in ("auto", "none") else split_names(value)


def resolve_photos(
    inputs,
    images: Path | None,
    id_col: str | None,
    path_col: str | None,
    ext: str,
    rejects: Path | None = None,
):
    """:func:`multitag.data.inputs.resolve_inputs` for a command: errors end it (exit 2),
    skipped inputs and remarks are printed, and listed in ``rejects`` (CSV) if given."""
    from multitag.core.io import write_table
    from multitag.data.inputs import resolve_inputs

    try:
        found = resolve_inputs(inputs, images, id_col=id_col, path_col=path_col, ext=ext)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    for line in found.summary():
        console.print(f"[yellow]inputs:[/yellow] {escape(line)}")
    if rejects is not None and found.skipped:
        rejects.parent.mkdir(parents=True, exist_ok=True)
        write_table(found.skipped_frame(), rejects)
        console.print(f"skipped inputs listed in {escape(str(rejects))}")
    return found


def load_frame(
    data: Path,
    images: Path | None,
    id_col: str | None,
    path_col: str | None,
    ext: str,
    rejects: Path | None = None,
):
    """The rows of ``--data`` (see :func:`resolve_photos`)."""
    return resolve_photos([data], images, id_col, path_col, ext, rejects).frame


def _bindable(host: str, port: int) -> bool:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind((host, port))
        return True
    except OSError:
        return False


def check_port(host: str, port: int) -> None:
    """Fail before any slow work when ``host:port`` is taken, with a free port to rerun on."""
    from multitag.core.next_step import rerun_with

    if _bindable(host, port):
        return
    free = next((p for p in range(port + 1, port + 100) if _bindable(host, p)), None)
    rerun = rerun_with("--port", str(free)) if free else None
    fail(
        f"{host}:{port} is already in use (another server?): "
        + (f"rerun on a free port, {rerun}" if rerun else "pass another --port")
    )


def task_list(frame, tasks: str | None) -> list[str]:
    """The label columns to learn: ``--tasks`` as given, else a folder tree's ``label``."""
    from multitag.data.manifest import FOLDER_TASK

    names = split_names(tasks)
    if names:
        return names
    if FOLDER_TASK in frame.columns:
        return [FOLDER_TASK]
    fail("name the label columns to learn with --tasks col1,col2,...")
    return []
