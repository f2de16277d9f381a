"""Check a labelled image set before training: files, images, ids, tasks and class counts."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd

from multitag.data.images import ImageDecodeError, load_image
from multitag.data.tasks import Task
from multitag.progress import bar


@dataclass
class ValidationReport:
    """What is wrong or notable in a dataset. Rows listed as problems are skipped by training."""

    n_rows: int
    missing_files: list[dict] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    empty_tasks: list[str] = field(default_factory=list)
    tasks: dict[str, dict] = field(default_factory=dict)

    @property
    def bad_rows(self) -> set[int]:
        """Rows that cannot be used (missing or unreadable image)."""
        return {p["row"] for p in self.missing_files + self.unreadable}

    @property
    def ok(self) -> bool:
        """No fatal problem (bad rows are skipped, duplicate ids and empty tasks are fatal)."""
        return not self.duplicate_ids and not self.empty_tasks

    def to_dict(self) -> dict:
        return {
            "n_rows": self.n_rows,
            "ok": self.ok,
            "missing_files": self.missing_files,
            "unreadable": self.unreadable,
            "duplicate_ids": self.duplicate_ids,
            "empty_tasks": self.empty_tasks,
            "tasks": self.tasks,
        }

    def problems(self) -> list[str]:
        """One line per problem, each naming the row/file and what to do."""
        lines = [
            f"row {p['row']} id={p['id']}: image file not found: {p['path']} "
            "(fix the path or remove the row)"
            for p in self.missing_files
        ]
        lines += [
            f"row {p['row']} id={p['id']}: {p['path']}: {p['reason']}" for p in self.unreadable
        ]
        if self.duplicate_ids:
            shown = ", ".join(self.duplicate_ids[:10])
            lines.append(
                f"{len(self.duplicate_ids)} duplicate id(s): {shown} (ids must be unique; "
                "de-duplicate the manifest)"
            )
        lines += [
            f"task {t!r} has no labels (all blank): remove it from --tasks"
            for t in self.empty_tasks
        ]
        return lines


def _check_image(path: str) -> str | None:
    try:
        load_image(path, target_size=64)
    except ImageDecodeError as err:
        return err.reason
    return None


def validate(
    frame: pd.DataFrame,
    tasks: Sequence[Task] | Sequence[str],
    *,
    decode: bool = True,
    progress: bool = True,
    workers: int = 4,
) -> ValidationReport:
    """Check files exist (and decode, if ``decode``), ids are unique, every task has labels,
    and count classes (including the rare classes folded into ``other`` or dropped)."""
    report = ValidationReport(n_rows=len(frame))
    ids = frame["id"].astype(str)
    counts = Counter(ids)
    report.duplicate_ids = sorted(i for i, n in counts.items() if n > 1)
    paths = frame["path"].tolist()
    exists = [os.path.isfile(p) for p in paths]
    for row, (ok, p, i) in enumerate(zip(exists, paths, ids)):
        if not ok:
            report.missing_files.append({"row": row, "id": i, "path": p})
    if decode:
        rows = [r for r, ok in enumerate(exists) if ok]
        enabled = progress and len(rows) > 2000
        with (
            bar("checking images", len(rows), enabled=enabled) as pbar,
            ThreadPoolExecutor(workers) as pool,
        ):
            for row, reason in zip(rows, pool.map(_check_image, [paths[r] for r in rows])):
                if reason:
                    report.unreadable.append(
                        {"row": row, "id": ids.iloc[row], "path": paths[row], "reason": reason}
                    )
                pbar.advance()
    for task in tasks:
        name = task if isinstance(task, str) else task.name
        if name not in frame.columns:
            raise ValueError(f"task column {name!r} not in the manifest: {list(frame.columns)}")
        values = frame[name].astype(str).str.strip()
        filled = values[values != ""]
        if filled.empty:
            report.empty_tasks.append(name)
        info: dict = {"labelled": int(len(filled)), "missing": int(len(values) - len(filled))}
        if isinstance(task, Task):
            raw = Counter(label for v in filled for label in task.labels_of(v))
            info.update(
                kind=task.kind,
                n_classes=task.n_classes,
                class_counts=dict(raw.most_common()),
                folded_into_other=task.folded,
                dropped=task.dropped,
            )
        else:
            info["class_counts"] = dict(Counter(filled).most_common())
        report.tasks[name] = info
    return report
