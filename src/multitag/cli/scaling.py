"""CLI options and runner of streamed jobs (``tag --out FOLDER``, ``--engine ray``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from multitag.cli.common import console, fail

EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        help="local (this process) or ray (Ray Data actors, each holding the model; needs "
        "multitag[ray]; writes a dataset folder).",
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray cluster to join (HOST:PORT or ray://HOST:10001); default: start Ray on "
        "this machine.",
    ),
]
ActorsOpt = Annotated[int, typer.Option("--actors", min=1, help="Ray actors (model copies).")]
CpusPerActorOpt = Annotated[
    float,
    typer.Option("--cpus-per-actor", min=0.01, help="CPUs each Ray actor reserves and uses."),
]
ShardRowsOpt = Annotated[
    int, typer.Option("--shard-rows", min=1, help="Rows per Parquet shard of a folder --out.")
]


def tag_dataset(
    model_dir: Path,
    found,
    out: Path,
    top_k: int,
    batch_size: int,
    shard_rows: int,
    engine: str,
    ray_options: dict,
) -> None:
    """``multitag tag ... --out FOLDER``: the streamed job, reported in a few lines."""
    from multitag.core.locks import WriterLocked
    from multitag.tagger.stream_job import tag_to_dataset

    try:
        report = tag_to_dataset(
            model_dir,
            found,
            out,
            top_k=top_k,
            batch_size=batch_size,
            shard_rows=shard_rows,
            engine=engine,
            ray_options=ray_options,
        )
    except (FileNotFoundError, ValueError, ImportError, WriterLocked, OSError) as err:
        fail(str(err))
    done = f", {report.skipped_done} already there" if report.skipped_done else ""
    console.print(
        f"tagged {report.written - report.errors} image(s) -> {out} "
        f"({report.shards} new shard(s){done})"
    )
    if report.nodes:
        console.print(f"rows per Ray node: {', '.join(map(str, report.nodes.values()))}")
    if report.errors:
        console.print(f"[yellow]{report.errors} unreadable image(s): error rows in {out}[/yellow]")
    if report.rejects:
        console.print(
            f"[yellow]{report.n_rejected_inputs} input(s) skipped -> {report.rejects}[/yellow]"
        )
