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
