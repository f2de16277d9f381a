"""A bounded worker pool for model work (decoding + forward passes), off the event loop.

At most ``workers`` jobs run and ``queue`` more wait; a job beyond that is refused at once
(:class:`Busy`, answered ``503`` with ``Retry-After``) instead of piling up in memory.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Busy(Exception):
    """Every worker is busy and the queue is full; ``retry_after`` is in whole seconds."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"the server is busy with other uploads: retry in {retry_after} s")


class ModelPool:
    """``await pool.run(fn, *args)`` runs ``fn`` on one of ``workers`` threads, or raises
    :class:`Busy` when ``workers + queue`` jobs are already admitted."""

    def __init__(self, workers: int, queue: int) -> None:
        self.workers, self.queue = workers, queue
        self._slots = threading.BoundedSemaphore(workers + queue)
        self._executor: ThreadPoolExecutor | None = None  # started on first use
        self._mean_seconds = 1.0  # running mean of job time, for Retry-After
        self._admitted = 0
        self._lock = threading.Lock()

    @property
    def admitted(self) -> int:
        """Jobs running or waiting now."""
        return self._admitted

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead over the workers, times the
        mean job time (at least 1)."""
        ahead = (self.workers + self.queue) / self.workers
        return max(1, math.ceil(ahead * self._mean_seconds))

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not self._slots.acquire(blocking=False):
            raise Busy(self.retry_after())
        with self._lock:
            self._admitted += 1
        try:
            future = self._started().submit(self._timed, fn, *args)
        except BaseException:
            self._release(None)
            raise
        # the slot is freed when the job ends, not when the client stops waiting for it
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            took = time.perf_counter() - start
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * took
            _trim_heap()

    def _release(self, _future) -> None:
        with self._lock:
            self._admitted -= 1
        self._slots.release()

    def _started(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.workers, thread_name_prefix="multitag-model"
                )
            return self._executor

    def shutdown(self) -> None:
        """Wait for running jobs, drop queued ones; a later :meth:`run` starts afresh (an app
        may see several lifespans, e.g. under test clients)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def _load_libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


def _trim_heap() -> None:
    """Give freed heap back to the OS after a job (glibc): a decoded upload is tens of MB, and
    without this the worker threads' malloc arenas keep their high-water mark for good."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
