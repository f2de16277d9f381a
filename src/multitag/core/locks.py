"""One writer at a time: an advisory lock beside what a command writes.

A catalogue folder, a model folder or a ``--out`` file gets a lock file (``DIR/.multitag.lock``
or ``.NAME.lock`` beside a file) holding ``fcntl.flock`` for as long as the writer runs, and
the writer's PID, host, start time and command. A second writer fails at once with
:class:`WriterLocked` naming the holder. A clean release removes the lock file. The kernel
drops a flock when its process dies, so a lock file left by a killed writer is stale by
construction: the next writer takes it over and says whose it was. (Hand-written rather than
``filelock``: that truncates the lock file on every attempt, which would erase the holder's
name before the loser could read it.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".multitag.lock"
log = logging.getLogger(__name__)
_held: dict[Path, int] = {}  # lock file -> nesting depth in this process


class WriterLocked(ValueError):
    """Another live process is writing the same catalogue, model folder or output file."""


def lock_file(target: str | os.PathLike, folder: bool) -> Path:
    """The lock file guarding ``target``: inside it for a folder, beside it for a file."""
    target = Path(target)
    return target / LOCK_NAME if folder else target.with_name(f".{target.name}.lock")


def _describe(holder: dict) -> str:
    return (
        f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
        f"{holder.get('started', '?')} ({holder.get('command', '?')})"
    )


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError:
        return {}


@contextlib.contextmanager
def writer_lock(target: str | os.PathLike, what: str, *, folder: bool) -> Iterator[Path]:
    """Hold the writer lock of ``target`` (a ``folder`` or a file) for the ``with`` block;
    re-entrant within a process. ``what`` names the writer in messages ("catalogue").

    Raises :class:`WriterLocked` at once, naming the holder, when another process holds it.
    """
    path = lock_file(target, folder).absolute()
    if path in _held:  # this process already writes it (e.g. train -> save)
        _held[path] += 1
        try:
            yield path
        finally:
            _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, target, what)
    try:
        stale = _read(fd)
        if stale:  # a holder that died without releasing: the kernel already freed its flock
            log.warning(
                "%s: taking over a stale lock from %s, which is no longer running",
                target,
                _describe(stale),
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        _held[path] = 1
        try:
            yield path
        finally:
            del _held[path]
            path.unlink(missing_ok=True)  # while still locked: a clean release leaves nothing
    finally:
        os.close(fd)  # closing drops the flock


def _acquire(path: Path, target, what: str) -> int:
    """Open and flock ``path``; retry if it was unlinked by a releasing holder meanwhile
    (then our lock would be on a file no one else can see)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise WriterLocked(
                f"{target}: another {what} writer is running ({_describe(holder)}); wait for "
                "it to finish or stop it, then run again"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
