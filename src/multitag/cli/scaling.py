"""CLI options and runners of batch jobs on an engine: streamed ``tag --out FOLDER`` and
``--engine ray`` for ``tag``, ``catalog build``, ``index build`` and ``train``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from multitag.cli.common import console, fail

EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        help="local (this process) or ray (Ray Data actors, each holding the model; needs "
        "multitag\\[ray]; writes a dataset folder).",
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
EncodeEngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        help="local (this process) or ray (every encoder pass on Ray Data actors, the "
        "features into this machine's feature cache; needs multitag\\[ray]).",
    ),
]
ActorsOpt = Annotated[
    int | None,
    typer.Option(
        "--actors",
        min=1,
        help="Ray actors (model copies); default: one per 4 cores of this machine (at least "
        "one), 2 on a cluster (--address).",
    ),
]
CpusPerActorOpt = Annotated[
    float | None,
    typer.Option(
        "--cpus-per-actor",
        min=0.01,
        help="CPUs each Ray actor reserves and uses; default: this machine's cores shared "
        "by the actors, 1 on a cluster (--address).",
    ),
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


@contextlib.contextmanager
def encoder_engine(
    engine: str, address: str | None, actors: int | None, cpus_per_actor: float | None
) -> Iterator[object | None]:
    """The block's encoder passes on ``engine``: nothing changes for ``local``; ``ray`` runs
    them on a pool of Ray actors (:class:`multitag.vision.ray_engine.RayEncoder`), connected
    at the first pass and shut down after the block; then prints the photos per node."""
    if engine == "local":
        yield None
        return
    if engine != "ray":
        fail(f"--engine {engine}: use local or ray")
    from multitag.vision.extraction import encoding_on
    from multitag.vision.ray_engine import RayEncoder, RayOptions, import_ray

    try:
        import_ray()
        remote = RayEncoder(RayOptions(address, actors, cpus_per_actor))
    except (ImportError, ValueError) as err:
        fail(str(err))
    with encoding_on(remote):
        yield remote
    if remote.nodes:
        counts = ", ".join(map(str, remote.nodes.values()))
        console.print(f"photos encoded per Ray node: {counts}")
