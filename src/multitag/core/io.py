"""Atomic file writes and table output by file type (.parquet, .csv, .jsonl)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temps(folder: str | os.PathLike, name: str = "*") -> int:
    """Remove the temporary files :func:`atomic_path` left for ``name`` in ``folder`` when
    its process was killed (SIGKILL skips the clean-up). Call it only while holding the
    writer lock of ``folder`` / ``name``: another writer's temp file is not stale."""
    removed = 0
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def jsonable(value):
    """``json.dumps`` ``default=``: numpy scalars and arrays as plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2, default=jsonable, ensure_ascii=False) + "\n")


def check_table_suffix(path: str | os.PathLike) -> str:
    """The table type of ``path``, or a ValueError naming the supported ones."""
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: output must end in one of {', '.join(TABLE_SUFFIXES)}")
    return suffix


class OutputNotWritten(RuntimeError):
    """An output could not be written (disk full, no permission); the previous file is kept."""


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``frame`` atomically as Parquet, CSV or JSON Lines (by suffix).

    Nested columns (lists of dicts) stay nested in Parquet and JSONL; CSV gets JSON strings.
    """
    suffix = check_table_suffix(path)
    with atomic_path(path) as tmp:
        dump_table(frame, tmp, suffix)


def dump_table(frame: pd.DataFrame, tmp: Path, suffix: str) -> None:
    """Write ``frame`` to ``tmp`` in the format of ``suffix`` (not atomic: see write_table)."""
    if suffix == ".parquet":
        frame.to_parquet(tmp, index=False)
    elif suffix == ".jsonl":
        with open(tmp, "w", encoding="utf-8") as fh:
            for record in frame.to_dict(orient="records"):
                fh.write(json.dumps(record, default=jsonable, ensure_ascii=False) + "\n")
    else:
        flat = frame.copy()
        for col in flat.columns:
            if flat[col].map(lambda v: isinstance(v, (list, dict, np.ndarray))).any():
                flat[col] = flat[col].map(lambda v: json.dumps(v, default=jsonable))
        flat.to_csv(tmp, index=False)


def read_table_any(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table`."""
    suffix = check_table_suffix(path)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    return pd.read_csv(path, dtype=str, keep_default_na=False)
