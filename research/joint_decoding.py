"""Do the heads gain from each other's answers?  Scored on the bench split (research/LOG.md).

    python research/joint_decoding.py ../shared/datasets/fashion-products [--folds 2 --repeats 3]

Each head predicts its own task, but the catalogue's labels go together: Kurtis are women's,
Tops are mostly women's and Tshirts both, Formal Shoes are rarely for Sports. If the heads'
posteriors were independent given the photo, the posterior of task ``a`` that also uses task
``s``'s head would be

    p'(a | x)  ∝  p(a | x) · Σ_g p_s(g | x) · P(g | a) / P(g)

with ``P(g | a)`` and ``P(g)`` counted on the training rows (add-0.5 smoothing). This fits the
default heads on the cached Lite0 224-px features (bench split, as ``knn_blend.py``) and
multiplies in that factor for every other task ``s``, raised to a weight ``w_s`` in
{0, 0.25, 0.5, 0.75, 1} (``w = 0``: ignore that task; the heads are not independent, since
they share features, so a full weight can count the same evidence twice). The weights are
chosen per task by coordinate ascent on some validation folds and scored on the held-out fold
(cross-fitting, repeated over fold draws).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from knn_blend import bench_heads, fold_ids, weighted_f1

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def pair_factor(p_other: np.ndarray, y: np.ndarray, y_other: np.ndarray, n: int) -> np.ndarray:
    """``log Σ_g p_other(g|x) P(g|a) / P(g)`` for every row and class ``a`` of the target."""
    keep = (y >= 0) & (y_other >= 0)
    m = p_other.shape[1]
    joint = np.full((n, m), 0.5)
    np.add.at(joint, (y[keep], y_other[keep]), 1.0)
    given = joint / joint.sum(1, keepdims=True)  # P(g | a)
    marginal = joint.sum(0) / joint.sum()  # P(g)
    return np.log(p_other @ (given / marginal).T + 1e-12)


def choose_weights(log_p, factors, y, fit_rows, passes: int = 2) -> np.ndarray:
    """Per-task exponents found by coordinate ascent on weighted F1 over ``fit_rows``."""
    w = np.zeros(len(factors))
    score = weighted_f1(y, log_p, fit_rows)
    for _ in range(passes):
        for i in range(len(factors)):
            for value in WEIGHTS:
                trial = w.copy()
                trial[i] = value
                s = weighted_f1(y, log_p + np.tensordot(trial, factors, 1), fit_rows)
                if s > score + 1e-9:
                    score, w = s, trial
    return w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--folds", type=int, default=2, help="cross-fitting folds")
    parser.add_argument("--repeats", type=int, default=3, help="fold draws (seeds 0, 1, ...)")
    args = parser.parse_args()
    b = bench_heads(args.data_root)
    every = np.ones(len(b.val), bool)
    names = [t.name for t in b.tasks]
    n_train, n_val = len(b.train), len(b.val)
    print(f"{n_train} train / {n_val} val rows; {args.folds} folds x {args.repeats} draws")
    for t in b.tasks:
        y, log_p = b.targets[t.name][b.val], np.log(b.head_p[t.name] + 1e-12)
        others = [s for s in names if s != t.name]
        y_train, n = b.targets[t.name][b.train], log_p.shape[1]
        factors = np.stack(
            [pair_factor(b.head_p[s], y_train, b.targets[s][b.train], n) for s in others]
        )
        heads = weighted_f1(y, log_p, every)
        gains, chosen = [], []
        for seed in range(args.repeats):
            fold = fold_ids(len(b.val), args.folds, seed)
            joint = np.zeros_like(log_p)
            for f in range(args.folds):
                fit_rows = fold != f
                w = choose_weights(log_p, factors, y, fit_rows)
                joint[~fit_rows] = (log_p + np.tensordot(w, factors, 1))[~fit_rows]
                chosen.append(dict(zip(others, w.tolist())))
            gains.append(weighted_f1(y, joint, every) - heads)
        used = {s: round(float(np.mean([c[s] for c in chosen])), 2) for s in others}
        print(
            f"{t.name:15s} heads {heads:.4f}  cross-fitted gain {np.mean(gains):+.4f} "
            f"(min {min(gains):+.4f}, max {max(gains):+.4f})  mean weights {used}",
            flush=True,
        )


if __name__ == "__main__":
    main()
