"""The Ray Data engine (``--engine ray``), one for every batch job that runs a model over
photos: ``tag`` (:mod:`multitag.tagger.ray_engine`) and every encoder pass of ``catalog
build``, ``index build`` and ``train`` (:class:`RayEncoder`).

The rows to process become a Ray dataset cut into blocks of whole model batches;
``map_batches`` runs a pool of actors (``ActorPoolStrategy``), each building its callable
once (a tagger loaded from its folder, or an encoder shipped from this process), and the
results stream back to this process, which writes them (tag shards, feature-cache shards).
Ray is imported only here, and only when a job asks for it (``multitag[ray]``).

Pitfalls handled (ray 2.60, measured on a 2-core machine): actors holding every CPU starve
Ray's read tasks and the job hangs without an error, so a local Ray declares CPUs for both;
Ray sets an actor's OMP threads to its CPUs, so the inference engine's threads (and
PyTorch's, to the driver's count: the same numbers as the local engine) are set
explicitly; Ray runs its workers 15 nice levels below the driver, so a local Ray runs them
at the job's priority; a small input is one block, so it is split for every actor to get
work; no dashboard.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from multitag.core.progress import bar
from multitag.vision.engines import inference_precision, resolve_engine, set_threads
from multitag.vision.extraction import RemoteEncoder, run_encoder

NODE_COLUMN = "_node"
#: Environment of every Ray worker this job starts: PyTorch's OpenMP threads spin between
#: operations by default, and an actor shares its cores with the other actors and Ray's own
#: processes, so its idle threads sleep instead.
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
#: Ray settings of a cluster this job starts on its machine: Ray lowers its workers'
#: priority by 15 by default, so the actors doing the job lost the cores to the driver, Ray's
#: own processes and anything else running; they run at the job's own priority instead.
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}
#: a block is at most this many model batches, whatever the job's size: at a job's end one
#: actor may still work through its last block while the others have none left, so blocks
#: stay small (a block costs one Ray task and a decode pipeline fill, little next to its
#: forward passes)
MAX_BATCHES_PER_BLOCK = 4


#: cores per actor of the default pool on this machine: on 2 cores one actor of 2 CPUs (it
#: decodes while its two inference streams run, as the local engine does) took less CPU per
#: photo than two 1-CPU actors (bench/ray.md); larger machines (not measured) get an actor
#: per 4 cores, the shape docs/scaling.md plans a cluster node with
LOCAL_CORES_PER_ACTOR = 4
#: the default pool on a cluster (``address`` given): actors x CPUs each
CLUSTER_POOL = (2, 1)


def default_pool(
    address: str | None, actors: int | None, cpus_per_actor: float | None
) -> tuple[int, float]:
    """``(actors, cpus_per_actor)`` with what is not given filled in: on this machine
    (``address`` None) the actors share every core, one actor per
    :data:`LOCAL_CORES_PER_ACTOR` cores; on a cluster :data:`CLUSTER_POOL`."""
    if address is not None:
        return actors or CLUSTER_POOL[0], cpus_per_actor or CLUSTER_POOL[1]
    cores = os.cpu_count() or 1
    if actors is None:
        actors = max(1, int(cores // (cpus_per_actor or LOCAL_CORES_PER_ACTOR)))
    return actors, cpus_per_actor or max(1, cores // actors)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a job runs on Ray: ``address`` of an existing cluster
    (``HOST:PORT`` or ``ray://HOST:10001``; ``None`` starts Ray on this machine), ``actors``
    (model copies), ``cpus_per_actor`` (each reserves and uses; both default to
    :func:`default_pool`), ``threads`` per actor for the inference engine (default: its
    CPUs)."""

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.actors is not None and (
            not isinstance(self.actors, int) or isinstance(self.actors, bool) or self.actors < 1
        ):
            raise ValueError(f"actors={self.actors!r}: must be an integer >= 1")
        if self.cpus_per_actor is not None and not self.cpus_per_actor > 0:
            raise ValueError(f"cpus_per_actor={self.cpus_per_actor!r}: must be > 0 (e.g. 1)")
        actors, cpus = default_pool(self.address, self.actors, self.cpus_per_actor)
        object.__setattr__(self, "actors", actors)
        object.__setattr__(self, "cpus_per_actor", cpus)

    @property
    def actor_threads(self) -> int:
        return self.threads or max(1, int(self.cpus_per_actor))


def import_ray():
    """``ray`` (with Ray Data), or an ImportError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        from multitag.core.next_step import install_extra

        raise ImportError(f"--engine ray needs Ray Data: {install_extra('ray')}") from None
    return ray


def connect(options: RayOptions) -> bool:
    """Join the cluster at ``options.address``, or start a local one that declares enough
    logical CPUs for the actors plus two for Ray's read tasks and runs its workers at this
    process's priority. Returns whether this call started Ray (and should shut it down); an
    already connected process is left as it is."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = dict(
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": WORKER_ENV},
    )
    if options.address:
        ray.init(address=options.address, **quiet)
    else:
        cores = os.cpu_count() or 1
        need = int(-(-options.actors * options.cpus_per_actor // 1)) + 2
        # "local": a new instance even where RAY_ADDRESS or another job's cluster on this
        # machine (/tmp/ray/ray_current_cluster) would be joined, which refuses num_cpus
        ray.init(
            address="local",
            num_cpus=max(cores, need),
            _system_config=LOCAL_SYSTEM_CONFIG,
            **quiet,
        )
    return True


@contextlib.contextmanager
def session(options: RayOptions) -> Iterator[None]:
    """Ray connected for the block's duration; shut down after it if this started it."""
    started = connect(options)
    try:
        yield
    finally:
        if started:
            import_ray().shutdown()


def blocks(frame: pd.DataFrame, batch_size: int, actors: int) -> list[pd.DataFrame]:
    """``frame`` cut into Ray blocks of a multiple of ``batch_size`` rows: every actor gets
    several (a one-file input would be one block, one busy actor), and each block's model
    batches start where the local engine's do, so both compute on the same batches."""
    per_actor = -(-len(frame) // (batch_size * actors * 4))
    step = batch_size * max(1, min(MAX_BATCHES_PER_BLOCK, per_actor))
    return [frame.iloc[s : s + step] for s in range(0, len(frame), step)]


class OnNode:
    """Ray actor around ``make(*args, **kwargs)``: calls it on each block and adds the
    block's Ray node id (column :data:`NODE_COLUMN`), so a job can say where rows ran. The
    result may be a ``pyarrow.Table`` or a dict of arrays."""

    def __init__(self, make: Callable, *args, **kwargs) -> None:
        import ray

        from multitag.core.runtime import keep_freed_memory

        keep_freed_memory()  # the worker does the job's work, as the command line's process
        self.fn = make(*args, **kwargs)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pd.DataFrame):
        out = self.fn(batch)
        if isinstance(out, dict):
            n = len(next(iter(out.values())))
            return {**out, NODE_COLUMN: np.array([self.node] * n, dtype=object)}
        import pyarrow as pa

        return out.append_column(NODE_COLUMN, pa.array([self.node] * out.num_rows, pa.string()))


def map_blocks(
    make: Callable,
    frame: pd.DataFrame,
    options: RayOptions,
    *,
    batch_size: int,
    out_rows: int,
    args: Sequence = (),
    kwargs: dict | None = None,
    batch_format: str = "pyarrow",
    nodes: dict[str, int] | None = None,
) -> Iterator:
    """Run ``make(*args, **kwargs)`` (built once per actor) on ``frame`` in blocks of whole
    ``batch_size`` batches on a pool of ``options.actors`` actors (Ray must be connected:
    :func:`session`); yields the results in batches of up to ``out_rows`` rows
    (``batch_format``: ``pyarrow`` tables or ``numpy`` dicts), without the node column,
    whose counts go to ``nodes``."""
    ray = import_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # multitag's bar counts the rows written
    ctx.print_on_execution_start = False
    if frame.empty:
        return
    ds = ray.data.from_pandas(blocks(frame, batch_size, options.actors))
    ds = ds.map_batches(
        OnNode,
        fn_constructor_args=(make, *args),
        fn_constructor_kwargs=kwargs or {},
        batch_size=None,  # a whole block: its model batches are the local engine's
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=options.cpus_per_actor,
    )
    for out in ds.iter_batches(batch_size=out_rows, batch_format=batch_format):
        if batch_format == "numpy":
            where = out.pop(NODE_COLUMN)
        else:
            where = out.column(NODE_COLUMN).to_numpy(zero_copy_only=False)
            out = out.drop_columns([NODE_COLUMN])
        if nodes is not None:
            for node, n in zip(*np.unique(where.astype(str), return_counts=True)):
                nodes[str(node)] = nodes.get(str(node), 0) + int(n)
        yield out


class EncoderActor:
    """What a Ray actor runs for :class:`RayEncoder`: ``encoder`` (shipped from the driver,
    so a model being trained needs no folder) over a block of ``pos``, ``path`` rows ->
    ``pos``, ``features`` (zero for a photo that failed), ``error`` (``""`` if none) and,
    when asked, ImageNet ``logits``."""

    def __init__(self, encoder, *, threads: int, torch_threads: int, logits: bool, **options):
        set_threads(threads, torch_threads)
        self.encoder, self.logits, self.options = encoder.eval(), logits, options

    def __call__(self, batch: pd.DataFrame) -> dict[str, np.ndarray]:
        paths = batch["path"].tolist()
        res = run_encoder(self.encoder, paths, progress=False, **self.options)
        out = {
            "pos": batch["pos"].to_numpy(np.int64),
            "features": res.features,
            "error": np.array([res.errors.get(i, "") for i in range(len(paths))], dtype=object),
        }
        if self.logits:  # one width in every block, even one where no photo decoded
            n_classes = getattr(self.encoder.model, "num_classes", 1000)
            lg = res.imagenet_logits
            out["logits"] = np.zeros((len(paths), n_classes), np.float32) if lg is None else lg
        return out


class RayEncoder(RemoteEncoder):
    """Encoder passes on Ray actors: what ``--engine ray`` activates
    (:func:`multitag.vision.extraction.encoding_on`) around ``catalog build``, ``index
    build`` and ``train``. Every :func:`~multitag.vision.extraction.encode_batches` call (and
    :func:`~multitag.vision.extraction.extract_features`' uncached photos, in one pass) then
    ships the encoder to a pool of actors and streams the features back to this process,
    which fills the feature cache as the local engine does. Ray is connected on first use
    and shut down by :meth:`close` if this started it. ``nodes``: rows encoded per node."""

    def __init__(self, options: RayOptions | None = None, *, out_rows: int = 1024) -> None:
        super().__init__()
        self.options = options or RayOptions()
        self.out_rows = out_rows
        self.nodes: dict[str, int] = {}
        self._session: contextlib.ExitStack | None = None

    def encode(
        self,
        encoder,
        paths: Sequence[str | os.PathLike],
        *,
        batch_size: int = 64,
        workers: int | None = None,
        precision: str = "auto",
        engine: str = "auto",
        progress: bool = True,
        description: str = "features",
        view: str | None = None,
        view_seed: int = 0,
        logits: bool = True,
        **_,
    ) -> Iterator[tuple[np.ndarray, dict[int, str], torch.Tensor | None, torch.Tensor | None]]:
        """``encode_batches``' stream for ``paths`` computed on Ray: per result batch
        ``(rows, errors, features, logits)`` (rows in any order; ``logits`` None unless
        asked for and the encoder has a classifier)."""
        if self._session is None:
            self._session = contextlib.ExitStack()
            self._session.enter_context(session(self.options))
        frame = pd.DataFrame({"pos": np.arange(len(paths)), "path": [str(p) for p in paths]})
        logits = logits and bool(getattr(encoder, "with_imagenet", False))
        options = dict(
            batch_size=batch_size,
            workers=workers,
            # resolved here: an actor does not see this process's MULTITAG_* settings
            precision=inference_precision(precision, engine),
            engine=resolve_engine(engine),
            view=view,
            view_seed=view_seed,
        )
        results = map_blocks(
            EncoderActor,
            frame,
            self.options,
            batch_size=batch_size,
            out_rows=self.out_rows,
            args=(encoder,),
            kwargs=dict(
                threads=self.options.actor_threads,
                torch_threads=torch.get_num_threads(),
                logits=logits,
                **options,
            ),
            batch_format="numpy",
            nodes=self.nodes,
        )
        with bar(f"{description} (Ray)", len(paths), enabled=progress and len(paths) > 0) as pbar:
            for out in results:
                pos, error = out["pos"], out["error"]
                bad = error != ""
                errors = {int(p): str(e) for p, e in zip(pos[bad], error[bad])}
                ok = ~bad
                feats = torch.from_numpy(np.ascontiguousarray(out["features"][ok], np.float32))
                lg = out.get("logits")
                lg = None if lg is None else torch.from_numpy(np.ascontiguousarray(lg[ok]))
                yield pos[ok], errors, feats if ok.any() else None, lg if ok.any() else None
                pbar.advance(len(pos))

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
