"""Evaluate a tagger on labelled data: predictions -> :mod:`multitag.evaluation.metrics` reports."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from multitag.data.photo_profile import photo_profile, profile_warnings
from multitag.data.tasks import Task, encode_all
from multitag.evaluation.metrics import evaluate_tasks, write_html, write_json


def report_from_arrays(
    tasks: Sequence[Task], targets: Mapping[str, np.ndarray], proba: Mapping[str, np.ndarray]
) -> dict:
    """Metrics for every task from encoded targets and predicted probabilities."""
    return evaluate_tasks(
        {
            t.name: {
                "kind": t.kind,
                "y_true": targets[t.name],
                "proba": proba[t.name],
                "classes": t.classes,
            }
            for t in tasks
        }
    )


def evaluate_split(tagger) -> dict:
    """Metrics on the validation split kept aside by :meth:`MultiTaskTagger.fit`.

    Uses the cached features of the val images when the backbone was frozen, so no image
    is decoded twice; a fine-tuned model is re-run on the images. A tagger fitted with
    ``refit=True`` has since trained on those rows too: it reports the heads before the
    refit (``val_proba_``), and ``split`` says so.
    """
    refit = getattr(tagger, "refit_", None)
    if refit is not None:
        proba = tagger.val_proba_
    elif tagger.settings("training").freeze == "all":
        proba = tagger.predict_proba_features(tagger.val_features_)
    else:
        proba = tagger.predict_proba(tagger.val_paths_)["proba"]
    report = report_from_arrays(tagger.tasks_, tagger.val_targets_, proba)
    if refit is None:
        report["split"] = {
            "n_train": len(tagger.split_["train_ids"]),
            "n_val": len(tagger.split_["val_ids"]),
        }
    else:
        report["split"] = {
            "n_train": refit["rows_before"],
            "n_val": refit["val_rows"],
            "scored": "heads before the refit; the saved heads then trained on train + val",
            "refit": refit,
        }
    return report


def evaluate_frame(tagger, frame: pd.DataFrame, batch_size: int = 64) -> dict:
    """Metrics on a labelled manifest frame (``id``, ``path``, task columns).

    The model's tasks that have a column in ``frame`` are scored; the others are listed under
    ``skipped_tasks`` (a ``ValueError`` when none has one). Unreadable images are skipped and
    listed under ``rejects``; labels the model has never seen count as missing for that task
    (reported under ``unknown_labels``). When the photos clearly differ from the model's
    training photos (size, aspect ratio, colour mode), ``source_warnings`` says how.
    """
    tasks = [t for t in tagger.tasks_ if t.name in frame.columns]
    skipped = [t.name for t in tagger.tasks_ if t.name not in frame.columns]
    if not tasks:
        raise ValueError(
            f"the data has none of the model's task columns {skipped}: add at least one of "
            "them (labels to score against)"
        )
    out = tagger.predict_proba(frame["path"].tolist(), batch_size=batch_size)
    ok = np.array([i not in out["errors"] for i in range(len(frame))], dtype=bool)
    targets = encode_all(frame, tasks)
    unknown, unknown_values = {}, {}
    for t in tasks:
        filled = frame[t.name].astype(str).str.strip() != ""
        lab = targets[t.name] >= 0 if targets[t.name].ndim == 1 else ~(targets[t.name] < 0).all(1)
        n_unknown = int((filled.to_numpy() & ~lab).sum())
        if n_unknown:
            unknown[t.name] = n_unknown
        known = set(t.classes) | set(t.folded)
        names = Counter(
            label
            for v in frame[t.name].astype(str)
            for label in t.labels_of(v)
            if label not in known
        )
        if names:  # which labels, so a typo or a renamed class can be found and fixed
            unknown_values[t.name] = dict(names.most_common())
    report = report_from_arrays(
        tasks,
        {k: v[ok] for k, v in targets.items()},
        {t.name: out["proba"][t.name][ok] for t in tasks},
    )
    report["n_images"] = int(ok.sum())
    if skipped:
        report["skipped_tasks"] = skipped
    warnings = profile_warnings(
        getattr(tagger, "photo_profile_", None), photo_profile(frame["path"].tolist())
    )
    if warnings:
        report["source_warnings"] = warnings
    report["rejects"] = [
        {"id": frame["id"].iloc[i], "path": frame["path"].iloc[i], "reason": r}
        for i, r in sorted(out["errors"].items())
    ]
    if unknown:
        report["unknown_labels"] = unknown
    if unknown_values:
        report["unknown_label_values"] = unknown_values
    return report


def write_reports(
    report: dict,
    json_path: str | os.PathLike | None,
    html_path: str | os.PathLike | None,
    title: str = "multitag evaluation",
) -> None:
    """Write the JSON and/or HTML report (atomically)."""
    if json_path:
        write_json(report, Path(json_path))
    if html_path:
        write_html(report, Path(html_path), title=title)
