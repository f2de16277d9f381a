"""Model-file integrity: SHA-256 of every saved file, recorded in its JSON and checked on load.

A saved model's JSON (``config.json``, ``embedding.json``) gets an ``integrity`` block: the
SHA-256 and size of each file written beside it, and the SHA-256 of the JSON itself (without
that block), so a truncated, zero-byte, bit-flipped or swapped file is refused on load with
one line naming it, instead of a traceback or, worse, silently different predictions. Files
saved before this block existed load unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from multitag.core.io import jsonable

KEY = "integrity"
FIX = "restore the folder from a backup, or save the model again (`multitag train ... --out DIR`)"


class ModelFileError(ValueError):
    """A model file that is missing, unreadable or not the one its JSON records."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical_sha256(obj: dict) -> str:
    body = {k: v for k, v in obj.items() if k != KEY}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, default=jsonable)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(obj: dict, directory: str | os.PathLike, files: list[str]) -> dict:
    """``obj`` plus its integrity block over ``files`` (names inside ``directory``)."""
    directory = Path(directory)
    plain = json.loads(json.dumps(obj, default=jsonable))  # hash what will be read back
    entries = {
        name: {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size}
        for name in files
    }
    return {
        **plain,
        KEY: {"algorithm": "sha256", "files": entries, "self": _canonical_sha256(plain)},
    }


def read_json(path: str | os.PathLike) -> dict:
    """A model JSON file, parsed and self-checked; one-line :class:`ModelFileError` if bad."""
    path = Path(path)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        size = path.stat().st_size
        state = "is empty (zero bytes)" if size == 0 else "is not valid JSON (truncated or edited)"
        raise ModelFileError(f"{path} {state}: {FIX}") from None
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path} is not a multitag model description: {FIX}")
    block = obj.get(KEY)
    if isinstance(block, dict) and block.get("self") != _canonical_sha256(obj):
        raise ModelFileError(
            f"{path} was changed after it was saved (its SHA-256 no longer matches): {FIX}"
        )
    return obj


def verify(directory: str | os.PathLike, obj: dict, json_name: str) -> None:
    """Check every file recorded in ``obj``'s integrity block; one-line error naming the first
    missing or mismatched file. No block (saved by an older multitag): nothing to check."""
    block = obj.get(KEY)
    if not isinstance(block, dict):
        return
    directory = Path(directory)
    for name, entry in block.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            raise ModelFileError(f"{path} is missing ({json_name} records it): {FIX}")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            what = (
                "is empty (zero bytes)"
                if size == 0
                else (
                    f"has {size:,} bytes, {json_name} records {entry.get('bytes'):,} "
                    "(truncated, or from another save)"
                )
            )
            raise ModelFileError(f"{path} {what}: {FIX}")
        if sha256_file(path) != entry.get("sha256"):
            raise ModelFileError(
                f"{path} does not match the SHA-256 in {json_name} (corrupted, or from "
                f"another save): {FIX}"
            )


def unreadable(path: str | os.PathLike, err: Exception) -> ModelFileError:
    """The one-line error for a weights file the loader could not read or fit."""
    size = Path(path).stat().st_size if Path(path).is_file() else None
    if size is None:
        state = "is missing"
    elif size == 0:
        state = "is empty (zero bytes)"
    elif isinstance(err, RuntimeError) and "state_dict" in str(err):
        state = "does not fit the architecture in config.json (from another model?)"
    else:
        state = f"is unreadable, truncated or corrupt ({type(err).__name__})"
    return ModelFileError(f"{path} {state}: {FIX}")
