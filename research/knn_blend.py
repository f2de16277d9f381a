"""Do the heads gain from a k-nearest-neighbour vote?  Scored on the bench split (research/LOG.md).

    python research/knn_blend.py ../shared/datasets/fashion-products [--embedding]
        [--folds 5 --repeats 3]

Reuses the cached Lite0 224-px features of the core benchmark and its 20 % validation split.
It fits the default heads once, then for each validation photo finds the ``k`` most similar
training photos (cosine) in one of these spaces:

- ``head``: the backbone's pooled head activation (``Encoder.head_slice``), standardised;
- ``all``: the whole feature vector (stage pools, head, colour), standardised;
- ``embed`` (with ``--embedding``): the proxy-anchor metric embedding of bench/embed.md,
  trained on the training rows only.

The neighbours vote with weights ``exp((s - 1) / T)`` (``s``: cosine similarity) and the
prediction is ``(1 - a) * heads + a * votes``. Space, ``k``, ``T`` and ``a`` are chosen per
task on one half of the validation rows and applied to the other half, and the other way
round (2-fold cross-fitting; ``--folds``/``--repeats`` for more folds and fold draws, to see
how stable the gain is), so the blended score is not tuned on the rows it is scored on.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from sklearn.metrics import f1_score

from multitag.bench.core import TASKS
from multitag.core.progress import bar
from multitag.data.manifest import default_stratify, load_manifest, split_indices
from multitag.data.tasks import encode_all
from multitag.tagger.config import FeatureConfig, TrainConfig
from multitag.tagger.estimator import MultiTaskTagger
from multitag.training.loop import fit_heads
from multitag.vision.extraction import extract_features

KS = (5, 10, 20, 40)
TEMPERATURES = (0.02, 0.05, 0.1, 10.0)  # 10 ~ an unweighted vote
ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7)


def unit_rows(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Standardise with the training rows' statistics, then scale rows to unit length."""
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    z = (x - mean) / std
    return (z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-9)).astype(np.float32)


def neighbours(space: np.ndarray, queries, pool, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine similarities and pool indices of each query row, best first."""
    base = torch.from_numpy(space[pool])
    sims = np.zeros((len(queries), k), np.float32)
    idx = np.zeros((len(queries), k), np.int64)
    with bar("neighbours", len(queries)) as pbar:
        for s in range(0, len(queries), 512):
            q = torch.from_numpy(space[queries[s : s + 512]])
            top = (q @ base.T).topk(k, dim=1)
            sims[s : s + len(q)], idx[s : s + len(q)] = top.values.numpy(), top.indices.numpy()
            pbar.advance(len(q))
    return sims, pool[idx]


def votes(sims, idx, labels: np.ndarray, n_classes: int, k: int, temperature: float):
    """Similarity-weighted class shares among the first ``k`` labelled neighbours."""
    y = labels[idx[:, :k]]
    w = np.exp((sims[:, :k] - 1.0) / temperature) * (y >= 0)
    out = np.zeros((len(y), n_classes), np.float64)
    np.add.at(out, (np.repeat(np.arange(len(y)), k), np.maximum(y, 0).ravel()), w.ravel())
    total = out.sum(1, keepdims=True)
    return np.divide(out, total, out=np.full_like(out, 1.0 / n_classes), where=total > 0)


def bench_heads(data_root: Path) -> SimpleNamespace:
    """Default heads fitted on the cached Lite0 224-px bench features, and their val output.

    Returns ``frame``, ``tagger``, ``tasks``, ``feats``, ``targets``, ``train``, ``val`` and
    ``head_p`` (per task, softmax probabilities of the val rows).
    """
    frame = load_manifest(data_root / "styles.csv", data_root / "images")
    frame = frame.reset_index(drop=True)
    tagger = MultiTaskTagger(
        TASKS,
        features=FeatureConfig(image_size=224, framing="none"),
        training=TrainConfig(epochs=1),
    )
    tagger.fit(frame)  # builds (or reuses) the feature cache
    tasks, paths = tagger.tasks_, frame["path"].tolist()
    feats = extract_features(
        tagger.net_.encoder, paths, cache_dir=tagger.feature_cache_dir(),
        encoder_id=tagger.encoder_id(), progress=False,
    ).features  # fmt: skip
    targets = encode_all(frame, tasks)
    train, val = split_indices(frame, default_stratify(tasks), 0.2, 0)
    tagger.set_params(training__epochs=TrainConfig().epochs)
    heads = tagger.new_heads(feats.shape[1], 0)
    heads.fit_scaler(feats[train])
    fit_heads(heads, feats, targets, tasks, train, val, tagger.settings("training"))
    with torch.no_grad():
        out = heads.eval()(torch.as_tensor(feats[val]))
        head_p = {k: v.softmax(-1).numpy() for k, v in out.items()}
    return SimpleNamespace(
        frame=frame, tagger=tagger, tasks=tasks, feats=feats, targets=targets,
        train=train, val=val, head_p=head_p,
    )  # fmt: skip


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    """A random fold number in ``range(folds)`` for each of ``n`` rows (near-equal sizes)."""
    return np.random.default_rng(seed).permutation(n) % folds


def weighted_f1(y: np.ndarray, p: np.ndarray, rows: np.ndarray) -> float:
    """Weighted F1 of ``p.argmax(1)`` on the labelled rows among ``rows`` (a mask)."""
    keep = rows & (y >= 0)
    return f1_score(y[keep], p[keep].argmax(1), average="weighted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--embedding", action="store_true", help="also search the embedding")
    parser.add_argument("--folds", type=int, default=2, help="cross-fitting folds")
    parser.add_argument("--repeats", type=int, default=1, help="fold draws (seeds 0, 1, ...)")
    args = parser.parse_args()
    b = bench_heads(args.data_root)
    tasks, feats, targets, train, val = b.tasks, b.feats, b.targets, b.train, b.val

    start, stop = b.tagger.net_.encoder.head_slice
    spaces = {"head": unit_rows(feats[:, start:stop], train), "all": unit_rows(feats, train)}
    if args.embedding:
        from multitag.embedding import Embedder

        emb = Embedder(
            ["articleType", "baseColour", "gender"], coarse=["articleType"],
            coarse_loss="proxy_anchor", coarse_weight=0.05, hidden=1024, dim=512,
            image_size=224, framing="none",
        )  # fmt: skip
        emb.encoder_ = b.tagger.net_.encoder
        emb.fit(b.frame, features=feats, rows=train)
        spaces["embed"] = emb.transform_features(feats).astype(np.float32)
    found = {name: neighbours(space, val, train, max(KS)) for name, space in spaces.items()}

    print(f"{len(train)} train / {len(val)} val rows; {args.folds} folds x {args.repeats} draws")
    every = np.ones(len(val), bool)
    for t in tasks:
        y, head_p = targets[t.name][val], b.head_p[t.name]
        candidates = {}
        for space, k, temp in itertools.product(found, KS, TEMPERATURES):
            sims, idx = found[space]
            v = votes(sims, idx, targets[t.name], head_p.shape[1], k, temp)
            for a in ALPHAS:
                candidates[space, k, temp, a] = (1 - a) * head_p + a * v
        gains, picks = [], []
        for seed in range(args.repeats):
            fold = fold_ids(len(val), args.folds, seed)
            blended = np.zeros_like(head_p)
            for f in range(args.folds):  # choose on the other folds, apply to this one
                fit_rows = fold != f
                best = max(candidates, key=lambda c: weighted_f1(y, candidates[c], fit_rows))
                blended[~fit_rows] = candidates[best][~fit_rows]
                picks.append(best)
            gains.append(weighted_f1(y, blended, every) - weighted_f1(y, head_p, every))
        print(
            f"{t.name:15s} heads {weighted_f1(y, head_p, every):.4f}  cross-fitted gain "
            f"{np.mean(gains):+.4f} (min {min(gains):+.4f}, max {max(gains):+.4f})  "
            f"picks (space, k, T, a) {picks}",
            flush=True,
        )


if __name__ == "__main__":
    main()
