"""Saved taggers alone and averaged, scored on a test set none of them saw (research/LOG.md,
"The product path on a held-out test set").

    python research/held_out_ensemble.py MODEL_DIR MODEL_DIR [...] --train train.csv \
        --test test.csv --images IMAGES [--out F.json]

The taggers (``multitag train --data train.csv``, same seed, so the same validation split)
are run on their validation rows of ``train.csv`` and on every row of ``test.csv``, from the
feature cache where it holds them. For each member and every combination of two or more,
the probabilities are averaged and a prior shift is chosen on the validation rows by
``multitag combine --prior-shift-data``'s rule (cross-fitted, prior from those rows); the test
rows score it. The validation score is what one would pick a combination on; the test score
says whether the pick holds on photos nobody chose anything on. Test photos byte-identical to
a photo the members trained on (the catalogue has copies under other ids) are scored twice:
with the rest ("test") and left out ("unseen test", what ``evaluate --held-out`` scores).

Members trained with ``--refit`` have no validation rows left (they trained on all of
``train.csv``): their combinations are plain averages of the members' probabilities, each with
the prior shift it chose before its refit (what ``multitag combine`` without
``--prior-shift-data`` builds), scored on the test rows only.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from multitag.bench.study import STUDY_TARGETS
from multitag.data.manifest import load_manifest
from multitag.data.tasks import encode_all
from multitag.evaluation.report import report_from_arrays
from multitag.multitask.prior_shift import choose_shifts
from multitag.tagger.held_out import held_out_rows, seen_rows
from multitag.tagger.loading import load_tagger


def scores(tasks, targets, proba) -> dict[str, float]:
    report = report_from_arrays(tasks, targets, proba)
    return {t: round(float(m["weighted_f1"]), 4) for t, m in report["tasks"].items()}


def shifted(proba: dict, shifts: dict) -> dict:
    out = dict(proba)
    for name, s in shifts.items():
        if s["tau"]:
            p = proba[name] * np.exp(s["bias"])
            out[name] = p / p.sum(1, keepdims=True).clip(1e-30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--train", type=Path, required=True, help="the members' manifest")
    parser.add_argument("--test", type=Path, required=True, help="photos no member saw")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    members = {d.name: load_tagger(d) for d in args.models}
    first = next(iter(members.values()))
    for name, m in members.items():
        if m.split_ != first.split_:
            parser.error(f"{name}: another training/validation split than {args.models[0]}")
        if [t.to_dict() for t in m.tasks_] != [t.to_dict() for t in first.tasks_]:
            parser.error(f"{name}: other tasks or classes than {args.models[0]}")
    tasks = first.tasks_
    refitted = not first.split_["val_ids"]  # --refit: every row of train.csv was trained on
    test = load_manifest(args.test, args.images)
    # photos of the test set byte-identical to a training photo (under another id): scored
    # with them ("test") and without them ("unseen test")
    unseen = ~test.index.isin(seen_rows(first, test))
    print(f"{args.test}: {len(test)} rows, {int((~unseen).sum())} with a photo the members "
          "trained on", flush=True)  # fmt: skip
    frames = {"test": test}
    if refitted:
        print("the members were refitted on all of their training manifest: no validation "
              "rows, so each combination is scored with the members' own prior shifts")  # fmt: skip
    else:
        train = load_manifest(args.train, args.images)
        frames["val"] = held_out_rows(first, train, str(args.train)).frame
    targets = {s: encode_all(f, tasks) for s, f in frames.items()}
    targets["unseen test"] = {t: y[unseen] for t, y in targets["test"].items()}
    proba: dict[str, dict[str, dict]] = {s: {} for s in frames}
    for name, m in members.items():
        for split, frame in frames.items():
            out = m.predict_proba(frame["path"].tolist(), use_cache=True)
            if out["errors"]:
                raise RuntimeError(f"{name}: unreadable {split} photos {out['errors']}")
            proba[split][name] = out["proba"]
    rows = {}
    for k in range(1, len(members) + 1):
        for combo in itertools.combinations(members, k):
            avg = {
                s: {t.name: np.mean([proba[s][m][t.name] for m in combo], 0) for t in tasks}
                for s in frames
            }
            avg["unseen test"] = {t: p[unseen] for t, p in avg["test"].items()}
            row = {
                "test": scores(tasks, targets["test"], avg["test"]),
                "unseen test": scores(tasks, targets["unseen test"], avg["unseen test"]),
            }
            if not refitted:
                row |= shifted_scores(tasks, avg, targets)
            key = " + ".join(combo)
            rows[key] = row
            table = {c: v for c, v in row.items() if c != "tau"}
            means = {c: round(float(np.mean(list(v.values()))), 4) for c, v in table.items()}
            print(key, {c: v["articleType"] for c, v in table.items()}, means, flush=True)
    print_table(rows, refitted)
    if args.out:
        summary = {
            "refitted": refitted,
            "n_val": len(frames["val"]) if "val" in frames else 0,
            "n_test": len(test),
            "n_test_seen": int((~unseen).sum()),
            "targets": STUDY_TARGETS,
            "rows": rows,
        }
        args.out.write_text(json.dumps(summary, indent=2))


def shifted_scores(tasks, avg: dict, targets: dict) -> dict:
    """A prior shift chosen on the val rows (cross-fitted gain), applied to the test rows."""
    shifts = choose_shifts(tasks, avg["val"], targets["val"], targets["val"])
    gains = {n: s["cross_fitted_gain"] for n, s in shifts.items()}
    plain_val = scores(tasks, targets["val"], avg["val"])
    return {
        "val": plain_val,
        "val, shift (cross-fitted)": {
            t: round(v + gains.get(t, 0.0), 4) for t, v in plain_val.items()
        },
        "test, shift": scores(tasks, targets["test"], shifted(avg["test"], shifts)),
        "unseen test, shift": scores(
            tasks, targets["unseen test"], shifted(avg["unseen test"], shifts)
        ),
        "tau": {n: s["tau"] for n, s in shifts.items()},
    }


def print_table(rows: dict, refitted: bool) -> None:
    """Markdown: articleType, baseColour and the mean of each combination, targets met."""
    test = "test" if refitted else "test, shift"
    unseen = "unseen test" if refitted else "unseen test, shift"
    val = "" if refitted else "articleType val, shift | "
    print(f"| members | {val}articleType {test} | articleType {unseen} | baseColour {unseen} "
          f"| mean {test} | mean {unseen} | targets met, {unseen} |")  # fmt: skip
    print("|---|" + "---:|" * (6 if refitted else 7))
    for key, row in rows.items():
        met = sum(row[unseen][t] >= v for t, v in STUDY_TARGETS.items())
        first = "" if refitted else f"{row['val, shift (cross-fitted)']['articleType']:.4f} | "
        print(f"| {key} | {first}{row[test]['articleType']:.4f} | "
              f"{row[unseen]['articleType']:.4f} | {row[unseen]['baseColour']:.4f} | "
              f"{np.mean(list(row[test].values())):.4f} | "
              f"{np.mean(list(row[unseen].values())):.4f} | {met} of 7 |")  # fmt: skip


if __name__ == "__main__":
    main()
