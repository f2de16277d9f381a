"""Do the heads gain from per-class decision biases?  Scored on the bench split (research/LOG.md).

    python research/class_bias.py ../shared/datasets/fashion-products [--folds 2 --repeats 3]

A head trained with cross-entropy (and label smoothing) on an imbalanced catalogue learns the
class prior: in a close call the frequent class wins. Weighted F1 need not be highest there,
for instance between near-synonyms such as Casual / Sports Shoes. This fits the default heads on
the cached Lite0 224-px features (bench split, as ``knn_blend.py``) and then predicts
``argmax(log p + b)`` with one bias per class, chosen in two ways:

- ``prior``: ``b = -tau * log(training prior)``, one number per task (logit adjustment,
  Menon et al. 2021; ``tau > 0`` favours rare classes, ``tau < 0`` frequent ones);
- ``per-class``: coordinate ascent on every class's bias (offsets in [-1.5, 1.5], two
  passes, most frequent class first), maximising weighted F1.

Both are chosen on some validation folds and scored on the held-out fold (cross-fitting,
repeated over fold draws), so the reported gain is not measured on the rows it was tuned on.
For ``prior`` it also prints the ``tau`` chosen on all validation rows and the macro F1
before and after that shift.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from knn_blend import bench_heads, fold_ids, weighted_f1
from sklearn.metrics import f1_score

TAUS = np.round(np.arange(-1.0, 1.01, 0.1), 2)
OFFSETS = np.round(np.arange(-1.5, 1.51, 0.25), 2)


def prior_bias(log_p, y, fit_rows, log_prior) -> np.ndarray:
    """The logit adjustment ``-tau * log_prior`` whose ``tau`` scores best on ``fit_rows``."""
    best = max(TAUS, key=lambda tau: weighted_f1(y, log_p - tau * log_prior, fit_rows))
    return -best * log_prior


def per_class_bias(log_p, y, fit_rows, passes: int = 2) -> np.ndarray:
    """Per-class biases found by coordinate ascent on weighted F1 over ``fit_rows``."""
    bias = np.zeros(log_p.shape[1])
    order = np.argsort(-np.bincount(y[fit_rows & (y >= 0)], minlength=log_p.shape[1]))
    score = weighted_f1(y, log_p, fit_rows)
    for _ in range(passes):
        for c in order:
            base = bias[c]
            for offset in OFFSETS:
                bias[c] = base + offset
                s = weighted_f1(y, log_p + bias, fit_rows)
                if s > score + 1e-9:
                    score, base = s, bias[c]
            bias[c] = base
    return bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--folds", type=int, default=2, help="cross-fitting folds")
    parser.add_argument("--repeats", type=int, default=3, help="fold draws (seeds 0, 1, ...)")
    parser.add_argument("--tasks", nargs="*", help="only these tasks (default: all)")
    args = parser.parse_args()
    b = bench_heads(args.data_root)
    every = np.ones(len(b.val), bool)
    n_train, n_val = len(b.train), len(b.val)
    print(f"{n_train} train / {n_val} val rows; {args.folds} folds x {args.repeats} draws")
    for t in b.tasks:
        if args.tasks and t.name not in args.tasks:
            continue
        y, log_p = b.targets[t.name][b.val], np.log(b.head_p[t.name] + 1e-12)
        y_train = b.targets[t.name][b.train]
        counts = np.bincount(y_train[y_train >= 0], minlength=log_p.shape[1]) + 1.0
        log_prior = np.log(counts / counts.sum())
        heads = weighted_f1(y, log_p, every)
        gains = {"prior": [], "per-class": []}
        for seed in range(args.repeats):
            fold = fold_ids(len(b.val), args.folds, seed)
            adjusted = {name: np.zeros_like(log_p) for name in gains}
            for f in range(args.folds):
                fit_rows = fold != f
                biases = {
                    "prior": prior_bias(log_p, y, fit_rows, log_prior),
                    "per-class": per_class_bias(log_p, y, fit_rows),
                }
                for name, bias in biases.items():
                    adjusted[name][~fit_rows] = (log_p + bias)[~fit_rows]
            for name in gains:
                gains[name].append(weighted_f1(y, adjusted[name], every) - heads)
        summary = "  ".join(
            f"{name} {np.mean(g):+.4f} (min {min(g):+.4f}, max {max(g):+.4f})"
            for name, g in gains.items()
        )
        tau = -prior_bias(log_p, y, every, log_prior)[0] / log_prior[0]
        keep = y >= 0
        macro = [
            f1_score(y[keep], s[keep].argmax(1), average="macro")
            for s in (log_p, log_p - tau * log_prior)
        ]
        print(
            f"{t.name:15s} heads {heads:.4f}  cross-fitted gain: {summary}  "
            f"tau on all val {tau:+.1f}: macro F1 {macro[0]:.4f} -> {macro[1]:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
