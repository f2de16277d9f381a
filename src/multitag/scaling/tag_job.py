"""``tag`` as a streamed, resumable job: inputs in batches through :class:`BatchTagger`, each
batch's rows committed as a shard of a Parquet dataset (:mod:`multitag.scaling.shards`).

Both engines run the same :class:`BatchTagger` (the local one in this process, Ray's in
actors), so their outputs are the same rows. A row is keyed by ``(id, content digest)`` and
the folder by the model's fingerprint: a rerun after a kill skips the keys already written
and ends with the rows of an uninterrupted run, none twice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from multitag.data.inputs import Inputs
from multitag.extraction import file_digest
from multitag.io import write_table
from multitag.locks import writer_lock
from multitag.progress import bar
from multitag.scaling import shards

ENGINES = ("local", "ray")


def set_threads(threads: int | None, torch_threads: int | None = None) -> None:
    """Pin this process's threads: ``threads`` for the OpenVINO encoder (a Ray actor gets its
    CPU share, not every core of the machine), ``torch_threads`` for the heads and softmax in
    PyTorch (Ray sets an actor's OMP threads to its CPUs; the driver's count keeps the
    probabilities bit-identical to the local engine's on the same machine)."""
    if threads is not None:
        os.environ["MULTITAG_THREADS"] = str(threads)
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)


class BatchTagger:
    """Callable: a batch of inputs (``id``, ``path``) -> its output rows (a ``pyarrow.Table``
    in :func:`~multitag.scaling.shards.tag_schema`), without the rows whose ``(id, digest)``
    is in ``done``. The model is loaded once, when constructed (once per Ray actor).

    A photo that cannot be read or decoded becomes a row with ``error`` set, never an
    exception: one bad photo loses no other work.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        top_k: int = 3,
        batch_size: int = 64,
        done: frozenset | set = frozenset(),
        threads: int | None = None,
        torch_threads: int | None = None,
    ) -> None:
        from multitag.model_dir import load_any_tagger

        set_threads(threads, torch_threads)
        self.tagger = load_any_tagger(model_dir)
        self.tagger.progress = False  # the job shows one bar over every batch
        if hasattr(self.tagger, "release_engines"):
            self.tagger.release_engines = True
        self.model = shards.model_fingerprint(model_dir)
        self.top_k, self.batch_size, self.done = top_k, batch_size, done
        self.schema = shards.model_schema(model_dir)

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        from multitag.tagging import tag_frame

        ids = batch["id"].astype(str).tolist()
        paths = batch["path"].astype(str).tolist()
        digests, errors = [], {}
        for i, p in enumerate(paths):
            try:
                digests.append(file_digest(p))
            except OSError as err:
                digests.append("")
                errors[i] = f"cannot read file ({err.strerror or type(err).__name__})"
        todo = [i for i in range(len(ids)) if (ids[i], digests[i]) not in self.done]
        readable = [i for i in todo if i not in errors]
        # positions as ids: tag_frame's rows and rejects map back to input order
        out = pd.DataFrame(index=pd.Index(todo, dtype=np.int64))
        if readable:
            frame = pd.DataFrame({"id": readable, "path": [paths[i] for i in readable]})
            tags, rejects = tag_frame(
                self.tagger, frame, top_k=self.top_k, batch_size=self.batch_size
            )
            errors.update(zip(rejects["id"].tolist(), rejects["reason"].tolist()))
            out = out.join(tags.set_index("id").drop(columns="path"), how="left")
        out.insert(0, "id", [ids[i] for i in todo])
        out.insert(1, "path", [paths[i] for i in todo])
        out.insert(2, "digest", [digests[i] for i in todo])
        out.insert(3, "model", self.model)
        out.insert(4, "error", [errors.get(i) for i in todo])
        return shards.to_table(out, self.schema)  # no readable photo: no tag columns


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
    :func:`multitag.scaling.ray_engine.run`). Inputs are one row per id (later duplicates
    and inputs that are no photo are listed in ``out/_rejects.csv``).
    """
    from multitag.tagging import as_inputs, check_at_least

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
                from multitag.scaling import ray_engine

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
