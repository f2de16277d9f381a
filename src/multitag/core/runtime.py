"""CPU/GPU runtime choices: device, bf16 autocast, memory format, thread counts."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path

import torch


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


#: glibc ``mallopt`` parameters (malloc.h) and the value given to both
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _KEEP_BELOW = -1, -3, 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc serve blocks below 1 GiB from its heap and keep freed memory for
    reuse (``mallopt``), once per process.

    Training steps and image batches allocate tensors of tens of MB each time. Above glibc's
    mmap threshold (at most 32 MB by default) each one is mapped in from the system page by
    page and unmapped on free, and those page faults can cost more than the arithmetic on
    the tensor. Allocators such as jemalloc avoid this; this is the same effect without one.
    The process then keeps its peak memory instead of handing it back. The command line
    calls it at start. Linux with glibc only; returns whether it applied."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW) and mallopt(_M_TRIM_THRESHOLD, _KEEP_BELOW))


def default_cache_dir() -> Path:
    """``$MULTITAG_CACHE`` or ``~/.cache/multitag``, read when used (not at import time): the
    root of the feature cache (``features/``) and of converted OpenVINO models (``openvino/``)."""
    return Path(os.environ.get("MULTITAG_CACHE", Path.home() / ".cache" / "multitag"))


def feature_cache_folder(cache_dir) -> Path | None:
    """An estimator's ``cache_dir`` setting as a folder: ``"default"`` = the default cache's
    ``features/``, ``None`` = no cache, else the path given."""
    if cache_dir is None:
        return None
    if str(cache_dir) == "default":
        return default_cache_dir() / "features"
    return Path(cache_dir)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = ("auto", "int8", "bf16", "fp32")


def check_precision(precision: str, where: str = "precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming it."""
    if precision not in PRECISIONS:
        raise ValueError(f"{where} must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def resolve_precision(precision: str, device: torch.device) -> str:
    """The float precision PyTorch computes in: ``auto`` -> ``bf16`` where the hardware runs
    it fast, else ``fp32``. ``int8`` is an inference engine's precision
    (:func:`multitag.vision.engines.inference_precision`); training under it computes as
    ``auto``."""
    if check_precision(precision) not in ("auto", "int8"):
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast for ``bf16``; a no-op for ``fp32``."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def loader_workers(requested: int | None = None) -> int:
    """Decode workers: requested, else one per spare core (at least one, so decoding overlaps)."""
    if requested is not None:
        return max(0, requested)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cores or 2) // 2))
