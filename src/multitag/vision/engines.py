"""Inference engines for a frozen :class:`~multitag.vision.features.Encoder`: uint8 images in,
``(features, imagenet_logits)`` out, whichever runtime computes them.

- ``torch``: the module itself under bf16 autocast + channels_last (see :mod:`runtime`);
- ``openvino``: the same graph converted with ``openvino.convert_model`` and run by OpenVINO's
  CPU plugin (bf16 where the CPU has it); :meth:`OpenVINORunner.stream` keeps one whole batch
  per inference request with several in flight, so every core stays busy. It is several
  times faster than PyTorch on CPU (BENCHMARKS.md, "Core tagger", the ``engine="torch"``
  rows); outputs differ from PyTorch's only by bf16 rounding.
- ``auto`` (default): ``openvino`` on CPU when the package is installed, else ``torch``.
  ``MULTITAG_ENGINE`` overrides ``auto`` for a whole process.

Precision (:func:`inference_precision`): ``bf16`` / ``fp32`` on either engine, ``int8`` on
OpenVINO only (the backbone quantized by NNCF, :mod:`multitag.vision.quantize`).
``MULTITAG_PRECISION`` (what the CLI's ``--precision`` sets) replaces a model's own setting
for a whole process.

Engines only run inference. Training (heads, fine-tuning, metric learning) stays in PyTorch;
the feature cache keys include the engine, so cached features always match the engine that
will compute features of new images at tagging time.
"""

from __future__ import annotations

import collections
import importlib.util
import itertools
import os
import threading
import warnings
import weakref
from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from multitag.core import runtime
from multitag.vision import engine_cache, quantize

ENGINES = ("auto", "torch", "openvino")
T = TypeVar("T")
Out = tuple[torch.Tensor, torch.Tensor | None]  # (features, ImageNet logits or None), on CPU


class Runner(Protocol):
    """What every engine offers: one batch, or a pipelined stream of batches."""

    def __call__(self, images: torch.Tensor) -> Out: ...

    def stream(
        self, batches: Iterable[tuple[T, torch.Tensor | None]]
    ) -> Iterator[tuple[T, Out]]: ...


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def set_threads(threads: int | None, torch_threads: int | None = None) -> None:
    """Pin this process's threads: ``threads`` for the OpenVINO encoder (a Ray actor gets its
    CPU share, not every core of the machine: ``MULTITAG_THREADS``, read when a runner is
    compiled), ``torch_threads`` for what runs in PyTorch (Ray sets an actor's OMP threads to
    its CPUs; the driver's count keeps the numbers bit-identical to the local engine's on
    the same machine)."""
    if threads is not None:
        os.environ["MULTITAG_THREADS"] = str(threads)
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)


def resolve_engine(engine: str = "auto", device: torch.device | None = None) -> str:
    """``auto`` -> ``openvino`` (CPU, package installed) or ``torch``; checks explicit names."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    device = device or runtime.default_device()
    if engine == "auto":
        engine = os.environ.get("MULTITAG_ENGINE", "auto")
        if engine not in ENGINES:
            raise ValueError(
                f"MULTITAG_ENGINE={engine!r} is not an engine; use one of {', '.join(ENGINES)}"
            )
    if engine == "auto":
        return "openvino" if device.type == "cpu" and openvino_available() else "torch"
    if engine == "openvino":
        if not openvino_available():
            from multitag.core.next_step import install_extra

            raise ImportError(
                f"engine='openvino' needs the openvino package: {install_extra('fast')} "
                "(or choose engine='torch')"
            )
        if device.type != "cpu":
            raise ValueError(f"engine='openvino' runs on the CPU; this device is {device}")
    return engine


def inference_precision(
    precision: str = "auto", engine: str = "auto", device: torch.device | None = None
) -> str:
    """The precision an engine runs ``precision`` in: ``MULTITAG_PRECISION`` when set (the
    CLI's ``--precision``: this run's choice beats the model's), then ``int8`` as is (the
    OpenVINO engine only), else :func:`runtime.resolve_precision` (``auto`` -> bf16 / fp32)."""
    override = os.environ.get("MULTITAG_PRECISION", "")
    if override:
        precision = runtime.check_precision(override, "MULTITAG_PRECISION (--precision)")
    device = device or runtime.default_device()
    if runtime.check_precision(precision) == "int8":
        if resolve_engine(engine, device) != "openvino":
            raise ValueError(
                "precision 'int8' runs on the openvino engine (CPU, the fast extra); "
                "with the torch engine use --precision bf16 or fp32"
            )
        return "int8"
    return runtime.resolve_precision(precision, device)


class TorchRunner:
    """The encoder module under the resolved precision (bf16 autocast or fp32)."""

    def __init__(self, encoder: nn.Module, precision: str, device: torch.device) -> None:
        # outside inference mode: converted weights must stay trainable tensors
        with torch.inference_mode(False):
            self.encoder = encoder.eval().to(device, memory_format=torch.channels_last)
        self.precision, self.device = precision, device

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> Out:
        with runtime.autocast(self.precision, self.device):
            feats, logits = self.encoder(images.to(self.device))
        return feats.float().cpu(), None if logits is None else logits.float().cpu()

    def stream(self, batches: Iterable[tuple[T, torch.Tensor | None]]) -> Iterator[tuple[T, Out]]:
        """``(meta, images)`` in -> ``(meta, outputs or None)`` out, in order."""
        for meta, images in batches:
            yield meta, None if images is None else self(images)


class _FeaturesOnly(nn.Module):
    """OpenVINO converts tensors, not ``None``: drop the absent logits output."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)[0]


def convert(encoder: nn.Module, image_size: int, with_logits: bool):
    """``encoder`` (in eval mode) traced to an ``openvino.Model`` on uint8 NCHW input."""
    import openvino as ov

    module = encoder if with_logits else _FeaturesOnly(encoder)
    example = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its torch.jit.trace use
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return ov.convert_model(module, example_input=example)


class OpenVINORunner:
    """A converted encoder (:func:`convert`) compiled for the CPU plugin; a batch is split
    across the plugin's streams."""

    request_batch = 32  # most images per inference request in :meth:`stream`

    def __init__(self, graph, precision: str, with_logits: bool) -> None:
        import openvino as ov

        self.with_logits = with_logits
        # int8: the quantized convolutions run int8, the rest bf16 where the CPU has it
        bf16 = precision == "bf16" or (precision == "int8" and runtime.cpu_has_bf16())
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
            "PERFORMANCE_HINT": "THROUGHPUT",
        }
        threads = os.environ.get("MULTITAG_THREADS")
        if threads:  # a Ray actor's CPU share (multitag.vision.ray_engine), not every core
            config["INFERENCE_NUM_THREADS"] = int(threads)
        compiled = ov.Core().compile_model(graph, "CPU", config)
        self.queue = ov.AsyncInferQueue(compiled)
        # results by a key unique per submission, so concurrent callers (API threads) and
        # a running stream never see each other's outputs; the lock serialises submissions
        results: dict[int, list[np.ndarray]] = {}
        self.results = results
        self._keys = itertools.count()
        self._lock = threading.RLock()

        def done(request, key: int) -> None:
            results[key] = [t.data.copy() for t in request.output_tensors]

        # the callback holds the results, not self: a bound method would make a cycle
        # through the C++ queue that Python's collector cannot see, so a dropped runner
        # (release_runner, changed weights) would keep its compiled model and buffers
        self.queue.set_callback(done)

    def _outputs(self, out: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = torch.from_numpy(out[0])
        return feats, torch.from_numpy(out[1]) if self.with_logits else None

    def __call__(self, images: torch.Tensor) -> Out:
        """One batch, split across the plugin's requests (all streams work on it)."""
        x = np.ascontiguousarray(images.cpu().numpy())
        chunks = np.array_split(np.arange(len(x)), min(len(self.queue), len(x)))
        with self._lock:
            keys = [next(self._keys) for _ in chunks]
            for key, rows in zip(keys, chunks):
                self.queue.start_async({0: x[rows[0] : rows[-1] + 1]}, userdata=key)
            self.queue.wait_all()
        outs = [self.results.pop(k) for k in keys]
        return self._outputs([np.concatenate(parts) for parts in zip(*outs)])

    def stream(self, batches: Iterable[tuple[T, torch.Tensor | None]]) -> Iterator[tuple[T, Out]]:
        """``(meta, images)`` in -> ``(meta, outputs or None)`` out, in order, with several
        requests in flight: no stream waits for another between batches (the decode thread
        fills the queue meanwhile). A batch larger than :attr:`request_batch` is split across
        requests: one request of 64 images at 224 px ran slower per image than two of 32 on
        the 2-core dev machine (its activations no longer fit the caches)."""
        pending: collections.deque = collections.deque()  # (meta, keys or None)

        def ready() -> bool:
            keys = pending[0][1]
            return keys is None or all(k in self.results for k in keys)

        def pop() -> tuple[T, Out | None]:
            meta, keys = pending.popleft()
            if keys is None:
                return meta, None
            parts = [self.results.pop(k) for k in keys]
            return meta, self._outputs([np.concatenate(p) for p in zip(*parts)])

        for meta, images in batches:
            keys = None
            if images is not None:  # start_async blocks while every request is busy
                x = np.ascontiguousarray(images.numpy())
                keys = []
                for s in range(0, len(x), self.request_batch):
                    key = next(self._keys)
                    with self._lock:
                        self.queue.start_async({0: x[s : s + self.request_batch]}, userdata=key)
                    keys.append(key)
            pending.append((meta, keys))
            while pending and ready():
                yield pop()
        with self._lock:
            self.queue.wait_all()
        while pending:
            yield pop()


# encoder -> (engine, precision, weight fingerprint, runner): the fast path for one object
_RUNNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# (content key, precision) -> runner, most recent last: equal encoders (a reloaded model, the
# API's and the CLI's copies of one tagger) share one compiled model; a few are kept
_BY_CONTENT: collections.OrderedDict = collections.OrderedDict()
_BY_CONTENT_KEEP = 4
_CONVERT_LOCK = threading.Lock()  # concurrent first requests convert once


def _fingerprint(module: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or updated in place."""
    tensors = [*module.parameters(), *module.buffers()]
    return tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors)


def runner_for(
    encoder: nn.Module,
    engine: str = "auto",
    precision: str = "auto",
    device: torch.device | None = None,
) -> Runner:
    """A callable ``uint8 NCHW -> (features, logits or None)`` for ``encoder`` (CPU tensors).

    OpenVINO runners are memoised per encoder object (redone when its weights change), shared
    between encoders that compute the same function, and their conversions are cached on disk
    across processes (:mod:`multitag.vision.engine_cache`): a reloaded model skips the trace.
    """
    device = device or runtime.default_device()
    engine = resolve_engine(engine, device)
    precision = inference_precision(precision, engine, device)
    if engine == "torch":
        return TorchRunner(encoder, precision, device)
    key = (engine, precision, _fingerprint(encoder), _calibration_digest(encoder, precision))
    cached = _RUNNERS.get(encoder)
    if cached is not None and cached[0] == key:
        return cached[1]
    with _CONVERT_LOCK:
        runner = _openvino_runner(encoder.eval(), precision)
    _RUNNERS[encoder] = (key, runner)
    return runner


def release_runner(encoder: nn.Module) -> bool:
    """Forget the compiled engine of ``encoder``, so its memory is freed once nothing else
    holds it; the next :func:`runner_for` rebuilds it (from the on-disk conversion cache).
    ``False`` when there was none (e.g. the torch engine, which keeps nothing)."""
    cached = _RUNNERS.pop(encoder, None)
    if cached is None:
        return False
    for key in [k for k, runner in _BY_CONTENT.items() if runner is cached[1]]:
        del _BY_CONTENT[key]
    return True


def _calibration_digest(encoder: nn.Module, precision: str) -> str | None:
    """The digest of ``encoder``'s int8 calibration set (``None`` below int8); a ValueError
    saying what to do when an int8 run has none."""
    if precision != "int8":
        return None
    calibration = getattr(encoder, "calibration", None)
    if calibration is None:
        raise ValueError(
            "precision 'int8' needs calibration photos, which a model records when it is "
            "trained: retrain it with this multitag (`multitag train`), or use --precision bf16"
        )
    return calibration.digest


def _openvino_runner(encoder: nn.Module, precision: str) -> OpenVINORunner:
    with_logits = bool(getattr(encoder, "with_imagenet", True))
    size = encoder.preprocessing.image_size
    content = engine_cache.content_key(encoder, size, with_logits)
    memo = (content, precision, _calibration_digest(encoder, precision))
    if content is not None and memo in _BY_CONTENT:
        _BY_CONTENT.move_to_end(memo)
        return _BY_CONTENT[memo]
    graph = _graph(encoder, content, size, with_logits, precision == "int8")
    runner = OpenVINORunner(graph, precision, with_logits)
    if content is not None:
        _BY_CONTENT[memo] = runner
        while len(_BY_CONTENT) > _BY_CONTENT_KEEP:
            _BY_CONTENT.popitem(last=False)
    return runner


def _graph(encoder: nn.Module, content: str | None, size: int, with_logits: bool, int8: bool):
    """The converted (``int8``: and quantized) encoder, from the on-disk cache when there;
    made and cached otherwise (int8 from the float conversion, itself cached)."""
    key = content
    if int8 and content is not None:
        scheme = f"{quantize.nncf_version()}+{quantize.SCHEME}"
        key = engine_cache.int8_key(content, encoder.calibration.digest, scheme)
    on_disk = key is not None and engine_cache.enabled()
    graph = engine_cache.load(key) if on_disk else None
    if graph is None:
        if int8:
            float_graph = _graph(encoder, content, size, with_logits, False)
            graph = quantize.quantize(float_graph, encoder, encoder.calibration)
        else:
            graph = convert(encoder, size, with_logits)
        if on_disk:  # and read it back: the compiled model is then the same bit for bit
            engine_cache.save(key, graph)  # as later processes', whose outputs match
            graph = engine_cache.load(key) or graph
    return graph
