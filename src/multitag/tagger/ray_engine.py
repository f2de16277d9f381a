"""The Ray Data engine for streamed jobs: the inputs become a Ray dataset, ``map_batches``
runs :class:`~multitag.tagger.stream.BatchTagger` in a pool of actors (each loads the
model once), and this process writes the results as they stream back, in the same shards
and with the same resume as the local engine. Ray is imported only here.

Pitfalls this module handles (ray 2.60): actors holding every CPU starve the read tasks and
the job hangs without an error, so a local cluster declares CPUs for both; Ray sets an
actor's OMP threads to its CPUs, so the engine's threads are set explicitly (and PyTorch's, for
the heads, to the driver's: the same probabilities as the local engine); a small input
is one block, so it is split for every actor to get work; no dashboard.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pandas as pd
import pyarrow as pa

from multitag.tagger.stream import BatchTagger

NODE_COLUMN = "_node"
#: a block is at most this many model batches: small enough to spread, big enough to be cheap
MAX_BATCHES_PER_BLOCK = 16


class _ActorTagger(BatchTagger):
    """:class:`BatchTagger` that also names the Ray node each row was tagged on."""

    def __init__(self, *args, **kwargs) -> None:
        import ray

        super().__init__(*args, **kwargs)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        table = super().__call__(batch)
        return table.append_column(NODE_COLUMN, pa.array([self.node] * table.num_rows, pa.string()))


def import_ray():
    """``ray`` (with Ray Data), or an ImportError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        from multitag.core.next_step import install_extra

        raise ImportError(f"--engine ray needs Ray Data: {install_extra('ray')}") from None
    return ray


def check_options(actors: int, cpus_per_actor: float) -> None:
    """One-line errors for impossible pool settings."""
    if not isinstance(actors, int) or isinstance(actors, bool) or actors < 1:
        raise ValueError(f"actors={actors!r}: must be an integer >= 1")
    if not cpus_per_actor > 0:
        raise ValueError(f"cpus_per_actor={cpus_per_actor!r}: must be > 0 (e.g. 1)")


def connect(address: str | None, actors: int, cpus_per_actor: float) -> bool:
    """Join the cluster at ``address``, or start a local one that declares enough logical
    CPUs for the actors plus two for Ray's read tasks. Returns whether this call started
    Ray (and should shut it down)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        ray.init(address=address, **quiet)
    else:
        cores = os.cpu_count() or 1
        need = int(-(-actors * cpus_per_actor // 1)) + 2
        ray.init(num_cpus=max(cores, need), **quiet)
    return True


def blocks(frame: pd.DataFrame, batch_size: int, actors: int) -> list[pd.DataFrame]:
    """``frame`` cut into Ray blocks of a multiple of ``batch_size`` rows: every actor gets
    several (a one-file input would be one block, one busy actor), and each block's model
    batches start where the local engine's do, so both compute on the same batches."""
    per_actor = -(-len(frame) // (batch_size * actors * 4))
    step = batch_size * max(1, min(MAX_BATCHES_PER_BLOCK, per_actor))
    return [frame.iloc[s : s + step] for s in range(0, len(frame), step)]


def run(
    model_dir,
    frame: pd.DataFrame,
    done: frozenset,
    commit: Callable[[pa.Table, int], None],
    *,
    top_k: int,
    batch_size: int,
    shard_rows: int,
    address: str | None = None,
    actors: int = 2,
    cpus_per_actor: float = 1,
    threads: int | None = None,
) -> dict[str, int]:
    """Tag ``frame`` (``id``, ``path``) on Ray; ``commit(table, n_rows)`` each result batch
    of up to ``shard_rows`` rows. ``address``: an existing cluster (``ray://...`` or
    ``HOST:PORT``; ``None`` starts one on this machine). ``threads`` per actor default to
    its CPUs. Returns rows tagged per node id."""
    check_options(actors, cpus_per_actor)
    ray = import_ray()
    import torch

    started = connect(address, actors, cpus_per_actor)
    nodes: dict[str, int] = {}
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # multitag's bar counts the rows written
        ctx.print_on_execution_start = False
        if frame.empty:
            return nodes
        ds = ray.data.from_pandas(blocks(frame, batch_size, actors))
        ds = ds.map_batches(
            _ActorTagger,
            fn_constructor_args=(str(model_dir),),
            fn_constructor_kwargs={
                "top_k": top_k,
                "batch_size": batch_size,
                "done": done,
                "threads": threads or max(1, int(cpus_per_actor)),
                "torch_threads": torch.get_num_threads(),
            },
            batch_size=None,  # a whole block: its model batches are the local engine's
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus_per_actor,
        )
        for table in ds.iter_batches(batch_size=shard_rows, batch_format="pyarrow"):
            for node, n in pd.Series(table.column(NODE_COLUMN).to_pylist()).value_counts().items():
                nodes[node] = nodes.get(node, 0) + int(n)
            table = table.drop_columns([NODE_COLUMN])
            commit(table, table.num_rows)
    finally:
        if started:
            ray.shutdown()
    return nodes
