"""``tag --engine ray``: :class:`~multitag.tagger.stream.BatchTagger` (each actor loads the
model once from its folder) on the project's one Ray engine
(:mod:`multitag.vision.ray_engine`: blocks of whole model batches, an actor pool, results
streamed back), the rows written here in the same shards and with the same resume as the
local engine. Ray is imported only when a job runs.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pyarrow as pa

from multitag.tagger.stream import BatchTagger
from multitag.vision.ray_engine import RayOptions, map_blocks, session


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
    actors: int | None = None,
    cpus_per_actor: float | None = None,
    threads: int | None = None,
) -> dict[str, int]:
    """Tag ``frame`` (``id``, ``path``) on Ray; ``commit(table, n_rows)`` each result batch
    of up to ``shard_rows`` rows. ``address``: an existing cluster (``ray://...`` or
    ``HOST:PORT``; ``None`` starts one on this machine); ``actors`` x ``cpus_per_actor``
    default to :func:`~multitag.vision.ray_engine.default_pool`. ``threads`` per actor
    default to its CPUs. Returns rows tagged per node id."""
    import torch

    options = RayOptions(address, actors, cpus_per_actor, threads)
    nodes: dict[str, int] = {}
    with session(options):
        tables = map_blocks(
            BatchTagger,
            frame,
            options,
            batch_size=batch_size,
            out_rows=shard_rows,
            args=(str(model_dir),),
            kwargs={
                "top_k": top_k,
                "batch_size": batch_size,
                "done": done,
                "threads": options.actor_threads,
                "torch_threads": torch.get_num_threads(),
            },
            nodes=nodes,
        )
        for table in tables:
            commit(table, table.num_rows)
    return nodes
