"""Deterministic crash points for the reliability tests.

``MULTITAG_TEST_KILL_AT=NAME`` (or ``NAME#N``: the N-th time) makes the process SIGKILL itself
when it reaches :func:`kill_point` ``NAME``, so a test can crash a build exactly inside a
commit or publish step and check that a rerun ends identical to an uninterrupted run. Unset,
a kill point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "MULTITAG_TEST_KILL_AT"
_hits: dict[str, int] = {}


def kill_point(name: str) -> None:
    """SIGKILL this process if ``MULTITAG_TEST_KILL_AT`` names this point (and count)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition("#")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
