"""Shared pieces of the command line: consoles, common options, error exit, manifest loading."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out_console = Console(width=None if sys.stdout.isatty() else 160)  # logs: don't squeeze tables

DataOpt = Annotated[
    Path, typer.Option("--data", help="CSV/Parquet manifest or folder-per-class tree.")
]
ImagesOpt = Annotated[Path | None, typer.Option("--images", help="Folder of images (<id>.jpg).")]
IdColOpt = Annotated[str, typer.Option("--id-col", help="Manifest column with the image id.")]
PathColOpt = Annotated[
    str | None, typer.Option("--path-col", help="Manifest column with image paths.")
]
ExtOpt = Annotated[str, typer.Option("--ext", help="Image file extension after the id.")]
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
CacheDirOpt = Annotated[Path | None, typer.Option(help="Feature cache folder.")]


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}")  # a message is text, not markup
    raise typer.Exit(2)


def _load_frame(data: Path, images: Path | None, id_col: str, path_col: str | None, ext: str):
    from multitag.data.manifest import load_manifest

    try:
        return load_manifest(data, images, id_col=id_col, path_col=path_col, ext=ext)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
