"""Content digests of files: the feature cache's key, the split's photo identity and the
int8 calibration set's fingerprint all hash a photo's bytes the same way."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence


def file_digest(path: str | os.PathLike) -> str:
    """Content hash of a file (blake2b, 128 bits): the cache key part that follows the pixels."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def photo_digests(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Content digest of every photo (the feature cache's key, :func:`file_digest`); ``""``
    where the file cannot be read. Copies of a photo under other names share a digest."""
    out = []
    for p in paths:
        try:
            out.append(file_digest(p))
        except OSError:
            out.append("")
    return out
