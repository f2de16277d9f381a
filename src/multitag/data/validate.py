"""Check a labelled image set before training: files, images, ids, tasks and class counts,
and pixel-identical images whose labels disagree (label noise a model cannot learn past)."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from multitag.core.progress import bar
from multitag.data.images import ImageDecodeError, load_image
from multitag.data.tasks import Task


@dataclass
class ValidationReport:
    """What is wrong or notable in a dataset. Rows listed as problems are skipped by training."""

    n_rows: int
    missing_files: list[dict] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    empty_tasks: list[str] = field(default_factory=list)
    tasks: dict[str, dict] = field(default_factory=dict)
    duplicate_images: list[list[int]] = field(default_factory=list)
    label_conflicts: dict[str, list[dict]] = field(default_factory=dict)
    duplicate_groups_labelled: dict[str, int] = field(default_factory=dict)
    label_variants: dict[str, list[dict[str, int]]] = field(default_factory=dict)

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
            "duplicate_images": self.duplicate_images,
            "label_conflicts": self.label_conflicts,
            "duplicate_groups_labelled": self.duplicate_groups_labelled,
            "label_variants": self.label_variants,
        }

    def conflict_summary(self) -> dict[str, dict]:
        """Per task: duplicate groups labelled in that task, how many disagree, and the share."""
        out = {}
        for task, groups in self.duplicate_groups_labelled.items():
            bad = len(self.label_conflicts.get(task, []))
            out[task] = {
                "groups": groups,
                "conflicting": bad,
                "share": bad / groups if groups else 0.0,
            }
        return out

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
        for task, groups in self.label_variants.items():
            for group in groups:
                forms = ", ".join(f"{label!r} ({n})" for label, n in group.items())
                lines.append(
                    f"task {task!r}: labels differ only by case or spaces: {forms}; they are "
                    "separate classes: spell them one way in the manifest"
                )
        for task, conflicts in self.label_conflicts.items():
            for c in conflicts[:5]:
                labels = ", ".join(f"id={i}: {v!r}" for i, v in zip(c["ids"], c["labels"]))
                lines.append(
                    f"rows {c['rows']} hold identical images but disagree on {task!r} ({labels}); "
                    "check these labels (a model cannot satisfy both)"
                )
            if len(conflicts) > 5:
                lines.append(
                    f"... and {len(conflicts) - 5} more identical-image groups disagree on {task!r}"
                )
        return lines


def _check_image(path: str) -> tuple[str | None, str | None]:
    """(reason it is unusable or None, digest of its decoded pixels or None)."""
    try:
        img = load_image(path, target_size=64)
    except ImageDecodeError as err:
        return err.reason, None
    pixels = np.asarray(img)
    digest = hashlib.blake2b(pixels.tobytes(), digest_size=16)
    digest.update(str(pixels.shape).encode())
    return None, digest.hexdigest()


def label_variants(labels: Counter) -> list[dict[str, int]]:
    """Groups of distinct labels that differ only by letter case or spaces (``Men``, ``men``,
    ``Sports  Shoes``), each ``{label: count}``, most frequent first."""
    by_key: dict[str, dict[str, int]] = {}
    for label, n in labels.most_common():
        by_key.setdefault(" ".join(str(label).split()).casefold(), {})[label] = n
    return [forms for forms in by_key.values() if len(forms) > 1]


def _duplicate_groups(digests: dict[int, str]) -> list[list[int]]:
    """Groups (sorted rows) of two or more rows whose images decode to identical pixels."""
    by_digest: dict[str, list[int]] = {}
    for row, digest in digests.items():
        by_digest.setdefault(digest, []).append(row)
    return sorted(sorted(rows) for rows in by_digest.values() if len(rows) > 1)


def _label_conflicts(
    frame: pd.DataFrame, name: str, groups: list[list[int]], ids: pd.Series
) -> tuple[int, list[dict]]:
    """(duplicate groups with >= 2 labelled rows in ``name``, the groups that disagree)."""
    values = frame[name].astype(str).str.strip().to_numpy()
    labelled, conflicts = 0, []
    for rows in groups:
        rows = [r for r in rows if values[r] != ""]
        if len(rows) < 2:
            continue
        labelled += 1
        if len({values[r] for r in rows}) > 1:
            conflicts.append(
                {"rows": rows, "ids": [str(ids.iloc[r]) for r in rows],
                 "labels": [str(values[r]) for r in rows]}
            )  # fmt: skip
    return labelled, conflicts


def validate(
    frame: pd.DataFrame,
    tasks: Sequence[Task] | Sequence[str],
    *,
    decode: bool = True,
    progress: bool = True,
    workers: int = 4,
) -> ValidationReport:
    """Check files exist (and decode, if ``decode``), ids are unique, every task has labels,
    and count classes (including the rare classes folded into ``other`` or dropped).

    With ``decode``, rows whose images decode to identical pixels are grouped
    (``duplicate_images``) and, per task, the groups whose labels disagree are listed
    (``label_conflicts``): their share bounds how consistent the labels of that task are."""
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
            digests = {}
            for row, (reason, digest) in zip(
                rows, pool.map(_check_image, [paths[r] for r in rows])
            ):
                if reason:
                    report.unreadable.append(
                        {"row": row, "id": ids.iloc[row], "path": paths[row], "reason": reason}
                    )
                else:
                    digests[row] = digest
                pbar.advance()
        report.duplicate_images = _duplicate_groups(digests)
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
            variants = label_variants(raw)
            info.update(
                kind=task.kind,
                n_classes=task.n_classes,
                class_counts=dict(raw.most_common()),
                folded_into_other=task.folded,
                dropped=task.dropped,
            )
        else:
            raw = Counter(filled)
            variants = label_variants(raw)
            info["class_counts"] = dict(raw.most_common())
        if variants:
            report.label_variants[name] = variants
        if decode:
            report.duplicate_groups_labelled[name], conflicts = _label_conflicts(
                frame, name, report.duplicate_images, ids
            )
            if conflicts:
                report.label_conflicts[name] = conflicts
        report.tasks[name] = info
    return report
