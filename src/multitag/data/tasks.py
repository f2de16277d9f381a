"""Task schema: which columns are tasks, their kind and classes; label encoding.

The schema is the single source of truth for a model's outputs: it is inferred from the
training manifest, written into the model's ``config.json`` and read back on load.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

Kind = Literal["multiclass", "multilabel"]
DEFAULT_DELIMITER = "|"


@dataclass
class Task:
    """One attribute to predict: a manifest column, its kind and its ordered classes."""

    name: str
    kind: Kind
    classes: list[str]
    delimiter: str | None = None
    other: str | None = None
    folded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def labels_of(self, value: str) -> list[str]:
        """The raw labels in one cell (blank -> none)."""
        value = str(value).strip()
        if not value:
            return []
        if self.kind == "multilabel":
            return [v.strip() for v in value.split(self.delimiter) if v.strip()]
        return [value]

    def _map(self, label: str) -> int | None:
        if label in self._index:
            return self._index[label]
        if self.other is not None and label in self._folded_set:
            return self._index[self.other]
        return None

    def __post_init__(self) -> None:
        self._index = {c: i for i, c in enumerate(self.classes)}
        self._folded_set = set(self.folded)

    def encode(self, values: Sequence[str] | pd.Series) -> np.ndarray:
        """Multiclass: int64 class index, -1 = missing/unknown. Multilabel: (n, C) float32 in
        {0, 1}, a row of -1 = missing."""
        values = list(values)
        if self.kind == "multiclass":
            out = np.full(len(values), -1, dtype=np.int64)
            for i, v in enumerate(values):
                labels = self.labels_of(v)
                if labels:
                    idx = self._map(labels[0])
                    out[i] = -1 if idx is None else idx
            return out
        out = np.zeros((len(values), self.n_classes), dtype=np.float32)
        for i, v in enumerate(values):
            labels = self.labels_of(v)
            if not labels:
                out[i] = -1
                continue
            for label in labels:
                idx = self._map(label)
                if idx is not None:
                    out[i, idx] = 1
        return out

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    @classmethod
    def from_dict(cls, d: Mapping) -> Task:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _looks_multilabel(values: pd.Series, delimiter: str) -> bool:
    filled = values[values.str.strip() != ""]
    return len(filled) > 0 and filled.str.contains(delimiter, regex=False).mean() >= 0.01


def infer_tasks(
    frame: pd.DataFrame,
    columns: Sequence[str],
    *,
    multilabel: Mapping[str, str] | Sequence[str] | None = None,
    delimiter: str = DEFAULT_DELIMITER,
    min_count: int = 5,
    rare: Literal["other", "drop"] = "other",
    other_name: str = "other",
) -> list[Task]:
    """Infer each task's kind and classes from ``frame`` (string columns, blank = missing).

    A column is multi-label when named in ``multilabel`` (a list, or a mapping to its
    delimiter) or when at least 1% of its filled cells contain ``delimiter``. Classes seen
    fewer than ``min_count`` times are folded into an explicit ``other`` class, or dropped
    (their rows then count as unlabelled for that task); :attr:`Task.folded` /
    :attr:`Task.dropped` record which.
    """
    if rare not in ("other", "drop"):
        raise ValueError(f"rare must be 'other' or 'drop', not {rare!r}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"task column(s) {missing} not in the manifest; its columns are {list(frame.columns)}"
        )
    ml = (
        dict(multilabel)
        if isinstance(multilabel, Mapping)
        else {c: delimiter for c in multilabel or []}
    )
    tasks = []
    for col in columns:
        values = frame[col].astype(str)
        is_ml = col in ml or _looks_multilabel(values, delimiter)
        kind: Kind = "multilabel" if is_ml else "multiclass"
        delim = ml.get(col, delimiter) if is_ml else None
        probe = Task(col, kind, [], delimiter=delim)
        counts = Counter(label for v in values for label in probe.labels_of(v))
        if not counts:
            raise ValueError(f"task {col!r} has no labels at all: every cell is blank")
        keep = sorted(c for c, n in counts.items() if n >= min_count)
        rare_classes = sorted(c for c, n in counts.items() if n < min_count)
        other = None
        folded, dropped = [], []
        if rare_classes and rare == "other":
            other = other_name
            while other in counts:  # never collide with a real class name
                other = "_" + other
            keep.append(other)
            folded = rare_classes
        elif rare_classes:
            dropped = rare_classes
        if len(keep) < (1 if is_ml else 2):
            raise ValueError(
                f"task {col!r} has fewer than 2 classes with at least {min_count} examples "
                f"({dict(counts.most_common(5))}); lower --min-count or drop the task"
            )
        tasks.append(Task(col, kind, keep, delim, other, folded, dropped))
    return tasks


def encode_all(frame: pd.DataFrame, tasks: Sequence[Task]) -> dict[str, np.ndarray]:
    """Encode every task column of ``frame``."""
    return {t.name: t.encode(frame[t.name].astype(str)) for t in tasks}


def labelled_mask(target: np.ndarray) -> np.ndarray:
    """Rows with a label: multiclass ``!= -1``; multilabel rows not all -1."""
    return target >= 0 if target.ndim == 1 else ~(target < 0).all(axis=1)
