"""A Parquet dataset written shard by shard, so a job's memory does not grow with its size
and a killed job resumes where it stopped.

Layout of ``OUT/``: ``part-NNNNNN.parquet`` (each committed by one rename: a kill leaves
whole shards only), ``_multitag.json`` (the model's fingerprint and the columns) and
``_rejects.csv`` (inputs that were not photos). Names starting with ``_`` or ``.`` are
skipped by Parquet readers, so ``pandas.read_parquet(OUT)`` reads the rows alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from multitag.core.faults import kill_point
from multitag.core.integrity import sha256_file
from multitag.core.io import atomic_path, remove_stale_temps, write_json

META = "_multitag.json"
REJECTS = "_rejects.csv"
_PART = re.compile(r"^part-(\d{6})\.parquet$")
#: the columns every tag dataset starts with; ``error`` is null on tagged rows
KEY_COLUMNS = ("id", "path", "digest", "model", "error")


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """SHA-256 naming a saved model's content: over every ``config.json`` under ``model_dir``
    (an ensemble's members too), whose integrity record holds the SHA-256 of each weights
    file; for a model saved before that record, over its files themselves."""
    root = Path(model_dir)
    digest = hashlib.sha256()
    configs = sorted(root.rglob("config.json"), key=lambda p: p.relative_to(root).as_posix())
    if not configs:
        raise FileNotFoundError(f"{root}: no config.json (not a saved multitag model)")
    for config in configs:
        raw = config.read_bytes()
        digest.update(config.relative_to(root).as_posix().encode() + b"\0" + raw)
        if b'"integrity"' not in raw:
            for f in sorted(p for p in config.parent.iterdir() if p.is_file()):
                if not f.name.startswith(".") and f.name != "config.json":
                    digest.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return digest.hexdigest()


_TOP = pa.list_(pa.struct([("label", pa.string()), ("prob", pa.float64())]))


def tag_schema(task_names: list[str], imagenet: bool) -> pa.Schema:
    """The columns of a tag dataset: the keys, then per task ``<task>`` (top-1 or ``|``-joined
    labels), ``<task>_prob`` and ``<task>_top`` (top-k ``{label, prob}``), then
    ``imagenet_top5`` where the backbone has an ImageNet classifier."""
    fields = [pa.field(name, pa.string()) for name in KEY_COLUMNS]
    for name in task_names:
        fields += [
            pa.field(name, pa.string()),
            pa.field(f"{name}_prob", pa.float32()),
            pa.field(f"{name}_top", _TOP),
        ]
    if imagenet:
        fields.append(pa.field("imagenet_top5", _TOP))
    return pa.schema(fields)


def model_schema(model_dir: str | os.PathLike) -> pa.Schema:
    """:func:`tag_schema` of the model saved in ``model_dir``, read from its ``config.json``
    (an ensemble's: its tasks, and ImageNet tags if a member has them) without loading it."""
    from multitag.tagger.persistence import ENSEMBLE_KIND, read_config

    config = read_config(model_dir)
    if config.get("kind") == ENSEMBLE_KIND:
        members = [read_config(Path(model_dir) / m) for m in config["members"]]
    else:
        members = [config]
    imagenet = any(m["backbone"].get("with_imagenet") for m in members)
    return tag_schema([t["name"] for t in config["tasks"]], imagenet)


def to_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """``frame`` as a table of ``schema``: a column it lacks, or a missing value (``None``,
    ``NaN``), is null; column by column, so an all-missing column still gets its type."""
    n = len(frame)
    columns = [
        pa.array(
            frame[f.name].tolist() if f.name in frame else [None] * n, f.type, from_pandas=True
        )
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def part_numbers(folder: str | os.PathLike) -> list[int]:
    """The committed shards' numbers, ascending."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = (_PART.match(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def read_dataset(folder: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """Every committed row of a tag dataset (shards in order)."""
    folder = Path(folder)
    files = [folder / f"part-{n:06d}.parquet" for n in part_numbers(folder)]
    if not files:
        return pd.DataFrame(columns=columns or list(KEY_COLUMNS))
    return pd.concat(
        [pq.read_table(f, columns=columns).to_pandas() for f in files], ignore_index=True
    )


class ShardWriter:
    """Appends shards to ``folder`` for one model; the caller holds the folder's writer lock.

    A folder written for another model (fingerprint) is refused: one dataset, one model.
    """

    def __init__(self, folder: str | os.PathLike, schema: pa.Schema, model: str, about: dict):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{self.folder} is a file: --out without a table suffix is a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.folder)  # halves of shards a killed job was writing
        meta_path = self.folder / META
        if meta_path.is_file():
            old = json.loads(meta_path.read_text(encoding="utf-8"))
            if old.get("model") != model:
                raise ValueError(
                    f"{self.folder} holds tags of another model ({old.get('model_dir')}): use a "
                    "new --out folder, or delete this one to tag again"
                )
            if old.get("top_k", about.get("top_k")) != about.get("top_k"):
                raise ValueError(
                    f"{self.folder} was written with --top-k {old['top_k']}: rerun with it, or "
                    "use a new --out folder"
                )
        elif part_numbers(self.folder):
            raise ValueError(f"{self.folder} holds shards without {META}: use a new --out folder")
        else:
            write_json(
                meta_path,
                {"kind": "multitag-tags", "model": model, **about, "columns": schema.names},
            )
        self.schema, self.model = schema, model
        numbers = part_numbers(self.folder)
        self.next_part = numbers[-1] + 1 if numbers else 0

    def done_keys(self) -> set[tuple[str, str]]:
        """``(id, digest)`` of every row already written: the rows a rerun skips."""
        rows = read_dataset(self.folder, ["id", "digest"])
        return set(zip(rows["id"].astype(str), rows["digest"].fillna("").astype(str)))

    def write(self, table: pa.Table) -> Path | None:
        """Commit ``table`` as the next shard (nothing for an empty one)."""
        if table.num_rows == 0:
            return None
        path = self.folder / f"part-{self.next_part:06d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table.select(self.schema.names).cast(self.schema), tmp)
        self.next_part += 1
        kill_point("tag.shard")
        return path
