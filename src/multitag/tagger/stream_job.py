"""``tag`` as a streamed, resumable job: inputs in batches through
:class:`~multitag.tagger.stream.BatchTagger`, each batch's rows committed as a shard of a
Parquet dataset (:mod:`multitag.tagger.shards`), in this process or on Ray
(:mod:`multitag.tagger.ray_engine`).

A row is keyed by ``(id, content digest)`` and the folder by the model's fingerprint: a rerun
after a kill skips the keys already written and ends with the rows of an uninterrupted run,
none twice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from multitag.core.io import write_table
from multitag.core.locks import writer_lock
from multitag.core.progress import bar
from multitag.data.inputs import Inputs
from multitag.tagger import shards
from multitag.tagger.stream import BatchTagger

ENGINES = ("local", "ray")


@dataclass
class JobReport:
    """What a streamed job did: rows written now, rows skipped as already written, error
    rows among those written, shards, and rows per Ray node (empty for the local engine)."""

    out: Path
    written: int = 0
    skipped_done: int = 0
    errors: int = 0
    shards: int = 0
    rejects: Path | None = None
    n_rejected_inputs: int = 0
    nodes: dict[str, int] = field(default_factory=dict)


def tag_to_dataset(
    model_dir: str | os.PathLike,
    inputs: Inputs | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    top_k: int = 3,
    batch_size: int = 64,
    shard_rows: int = 4096,
    engine: str = "local",
    ray_options: dict | None = None,
    progress: bool = True,
    images: str | os.PathLike | None = None,
    **options,
) -> JobReport:
    """Tag ``inputs`` into the Parquet dataset folder ``out``, one shard per ``shard_rows``
    inputs (local engine; rounded up to whole model batches) or per ``shard_rows`` results
    (Ray), resuming a killed job. Memory holds one shard's rows, whatever the job's size.

    ``engine``: ``local`` (this process) or ``ray`` (Ray Data actors, ``ray_options`` as
    :func:`multitag.tagger.ray_engine.run`). Inputs are one row per id (later duplicates
    and inputs that are no photo are listed in ``out/_rejects.csv``).
    """
    from multitag.tagger.batch import as_inputs, check_at_least

    for name, value in (("top_k", top_k), ("batch_size", batch_size), ("shard_rows", shard_rows)):
        check_at_least(name, value, 1)
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: use one of {', '.join(ENGINES)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file: a streamed --out is a folder (or give a table suffix)")
    out.mkdir(parents=True, exist_ok=True)
    with writer_lock(out, "tag", folder=True):
        found = as_inputs(inputs, images, **options).unique_ids()
        frame = found.frame[["id", "path"]].astype({"id": str, "path": str})
        schema, model = shards.model_schema(model_dir), shards.model_fingerprint(model_dir)
        about = {"model_dir": str(Path(model_dir).resolve()), "top_k": top_k}
        writer = shards.ShardWriter(out, schema, model, about)
        done = frozenset(writer.done_keys())
        report = JobReport(out)
        skipped = found.skipped_frame()[["id", "path", "reason"]]
        report.n_rejected_inputs = len(skipped)
        if len(skipped):
            report.rejects = out / shards.REJECTS
            write_table(skipped, report.rejects)
        else:
            (out / shards.REJECTS).unlink(missing_ok=True)
        with bar("tagging", len(frame), enabled=progress and len(frame) > 0) as pbar:

            def commit(table: pa.Table, n_inputs: int) -> None:
                if writer.write(table) is not None:
                    report.shards += 1
                report.written += table.num_rows
                report.errors += table.num_rows - table.column("error").null_count
                pbar.advance(n_inputs)

            if engine == "local":
                local = BatchTagger(model_dir, top_k=top_k, batch_size=batch_size, done=done)
                step = -(-shard_rows // batch_size) * batch_size  # batches as Ray's blocks
                for start in range(0, len(frame), step):
                    chunk = frame.iloc[start : start + step]
                    commit(local(chunk), len(chunk))
            else:
                from multitag.tagger import ray_engine

                report.nodes = ray_engine.run(
                    model_dir,
                    frame,
                    done,
                    commit,
                    top_k=top_k,
                    batch_size=batch_size,
                    shard_rows=shard_rows,
                    **(ray_options or {}),
                )
        report.skipped_done = len(frame) - report.written
    return report
