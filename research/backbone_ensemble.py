"""Taggers alone and averaged, scored on the bench split (research/LOG.md, "Targets from the
issue: the gap").

    python research/backbone_ensemble.py ../shared/datasets/fashion-products \
        [--backbones tf_efficientnet_lite0 tf_efficientnet_lite2] [--head-sets 3] \
        [--models bench/bench-model-blocks.4 ...] [--prior-shift] [--out F.json]

Each of ``--backbones`` is trained here, frozen at its native input size (Lite0 224 px, Lite1
240, Lite2 260; features cached, so a second run only trains heads) with the tagger's 20 %
validation split (seed 0: the same rows for every backbone) and squash-resize, as the
study's full-size tables were measured; ``NAME:auto`` frames the photos first (the product's
framing, research/LOG.md "Photos framed differently"), so one backbone can be a member twice
with two views of each photo. Each of ``--models`` is a saved tagger trained on
the same split (e.g. ``python -m multitag.bench.study``'s fine-tuned ``bench-model-blocks.4``)
and is run on the val photos. Prints weighted F1 per task for every model alone, for the
average of the probabilities of every combination of two or more, and the targets of
issue 3; ``--out`` also writes them as JSON. ``--prior-shift`` adds, for every model and
average, a row with each multi-class task's prior shift (``multitag.multitask.prior_shift``)
scored by 2-fold cross-fitting on the val rows (mean of 3 fold draws).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from multitag.bench.core import TASKS
from multitag.bench.study import STUDY_TARGETS
from multitag.data.manifest import load_manifest
from multitag.data.tasks import encode_all
from multitag.evaluation.report import report_from_arrays
from multitag.multitask.prior_shift import choose_shifts
from multitag.tagger.config import FeatureConfig, HeadConfig
from multitag.tagger.estimator import MultiTaskTagger


def weighted_f1(tagger: MultiTaskTagger, proba: dict[str, np.ndarray]) -> dict[str, float]:
    report = report_from_arrays(tagger.tasks_, tagger.val_targets_, proba)
    return {t: round(float(m["weighted_f1"]), 4) for t, m in report["tasks"].items()}


def with_prior_shift(tagger, proba, train_labels, scores) -> dict[str, float]:
    """``scores`` plus the cross-fitted gain of a prior shift, per multi-class task."""
    shifts = choose_shifts(tagger.tasks_, proba, tagger.val_targets_, train_labels)
    gains = {name: s["cross_fitted_gain"] for name, s in shifts.items()}
    return {name: round(score + gains.get(name, 0.0), 4) for name, score in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_root", type=Path)
    parser.add_argument(
        "--backbones", nargs="*", default=["tf_efficientnet_lite0", "tf_efficientnet_lite2"]
    )
    parser.add_argument("--head-sets", type=int, default=3)
    parser.add_argument("--models", nargs="*", type=Path, default=[])
    parser.add_argument("--prior-shift", action="store_true", help="also score prior shifts")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.backbones:
        parser.error("name at least one of --backbones: it defines the val split")
    frame = load_manifest(args.data_root / "styles.csv", args.data_root / "images")
    rows: dict[str, dict[str, float]] = {}
    probas: dict[str, dict[str, np.ndarray]] = {}
    first = None
    specs = [(name, framing or "none") for name, _, framing in
             (spec.partition(":") for spec in args.backbones)]  # fmt: skip
    bad = [f"{n}:{f}" for n, f in specs if f not in ("none", "auto")]
    if bad:  # before any member trains, not minutes into the run
        parser.error(f"{bad}: a member is NAME or NAME:auto (framed photos)")
    for name, framing in specs:
        tagger = MultiTaskTagger(
            TASKS,
            features=FeatureConfig(backbone=name, framing=framing),
            heads=HeadConfig(head_sets=args.head_sets),
        )
        tagger.fit(frame)
        if first is None:
            first = tagger
        elif tagger.split_["val_ids"] != first.split_["val_ids"]:
            raise RuntimeError(f"{name}: a different validation split; cannot average")
        size = tagger.net_.encoder.preprocessing.image_size
        view = ", framing auto" if framing == "auto" else ""
        key = f"{name} ({size} px, frozen{view})"
        probas[key] = tagger.predict_proba_features(tagger.val_features_)
        rows[key] = weighted_f1(tagger, probas[key])
        print(key, rows[key], flush=True)
    for directory in args.models:
        model = MultiTaskTagger.load(directory)
        if [t.to_dict() for t in model.tasks_] != [t.to_dict() for t in first.tasks_]:
            raise RuntimeError(f"{directory}: other tasks or classes; cannot average")
        out = model.predict_proba(first.val_paths_)
        if out["errors"]:
            raise RuntimeError(f"{directory}: unreadable val photos {out['errors']}")
        freeze = model.config_["training"]["freeze"]
        key = f"{directory.name} ({'frozen' if freeze == 'all' else f'tuned above {freeze}'})"
        probas[key] = out["proba"]
        rows[key] = weighted_f1(first, probas[key])
        print(key, rows[key], flush=True)
    members = list(probas)
    for k in range(2, len(members) + 1):
        for combo in itertools.combinations(members, k):
            mean = {t: np.mean([probas[m][t] for m in combo], axis=0) for t in probas[combo[0]]}
            key = "average: " + " + ".join(combo)
            probas[key] = mean
            rows[key] = weighted_f1(first, mean)
            print(key, rows[key], flush=True)
    if args.prior_shift:
        row_of = {i: r for r, i in enumerate(frame["id"])}
        train = [row_of[i] for i in first.split_["train_ids"]]
        train_labels = {k: v[train] for k, v in encode_all(frame, first.tasks_).items()}
        for key in list(rows):
            shifted = key + " + prior shift"
            rows[shifted] = with_prior_shift(first, probas[key], train_labels, rows[key])
            print(shifted, rows[shifted], flush=True)
    rows["target (issue 3)"] = STUDY_TARGETS
    names = list(rows)
    print("| task | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for t in TASKS:
        print(f"| {t} | " + " | ".join(f"{rows[n][t]:.4f}" for n in names) + " |")
    means = [np.mean([rows[n][t] for t in TASKS]) for n in names[:-1]]
    print("| mean | " + " | ".join(f"{m:.4f}" for m in means) + " | |")
    if args.out:
        args.out.write_text(json.dumps({"head_sets": args.head_sets, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
