"""Process-level runtime settings (core/runtime.py)."""

from __future__ import annotations

import pytest


def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    """Before ``keep_freed_memory`` a 64 MB array is its own mmap (unmapped on free, mapped
    and zeroed afresh next time); after it, the block comes from malloc's heap and stays
    there for reuse once freed (glibc's ``mallinfo2``; run in a fresh interpreter: the
    setting is process-wide)."""
    import subprocess
    import sys

    code = """
import ctypes, numpy as np
from multitag.core.runtime import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks "
                                               "fsmblks uordblks fordblks keepcost").split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
def mapped_and_kept():
    a = np.ones(8 << 20)  # 64 MB
    mapped = libc.mallinfo2().hblkhd
    del a
    return mapped, libc.mallinfo2().fordblks
before = mapped_and_kept()
applied = keep_freed_memory()
print(applied, *before, *mapped_and_kept())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode or out.stdout.split()[0] != "True":
        pytest.skip(f"not glibc >= 2.33 (mallopt / mallinfo2): {out.stderr[-200:]}")
    mapped_before, kept_before, mapped_after, kept_after = map(int, out.stdout.split()[1:])
    block = 64 << 20
    assert mapped_before >= block and kept_before < block  # its own mapping, given back
    assert mapped_after < block and kept_after >= block  # from the heap, kept for reuse
