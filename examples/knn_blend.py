"""Do the heads gain from a k-nearest-neighbour vote?  Scored on the bench split (docs/study.md).

    python examples/knn_blend.py ../shared/datasets/fashion-products [--embedding]

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
round (2-fold cross-fitting), so the blended score is not tuned on the rows it is scored on.
"""

from __future__ import annotations

import argparse
import copy
import itertools
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score

from multitag.bench import TASKS
from multitag.data.manifest import default_stratify, load_manifest, split_indices
from multitag.data.tasks import encode_all
from multitag.features import extract_features
from multitag.progress import bar
from multitag.tagger import MultiTaskTagger
from multitag.train import fit_heads

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--embedding", action="store_true", help="also search the embedding")
    args = parser.parse_args()
    frame = load_manifest(args.data_root / "styles.csv", args.data_root / "images")
    frame = frame.reset_index(drop=True)
    tagger = MultiTaskTagger(TASKS, image_size=224, epochs=1, framing="none")
    tagger.fit(frame)  # builds (or reuses) the feature cache
    tasks, paths = tagger.tasks_, frame["path"].tolist()
    feats = extract_features(
        tagger.net_.encoder, paths, cache_dir=tagger.feature_cache_dir(),
        encoder_id=tagger.encoder_id(), progress=False,
    ).features  # fmt: skip
    targets = encode_all(frame, tasks)
    train, val = split_indices(frame, default_stratify(tasks), 0.2, 0)
    tagger.epochs = MultiTaskTagger().epochs
    heads = tagger._new_heads(feats.shape[1], 0)
    heads.fit_scaler(feats[train])
    fit_heads(heads, feats, targets, tasks, train, val, copy.copy(tagger._train_config()))
    with torch.no_grad():
        out = heads.eval()(torch.as_tensor(feats[val]))
        head_p = {k: v.softmax(-1).numpy() for k, v in out.items()}

    start, stop = tagger.net_.encoder.head_slice
    spaces = {"head": unit_rows(feats[:, start:stop], train), "all": unit_rows(feats, train)}
    if args.embedding:
        from multitag.embedding import Embedder

        emb = Embedder(
            ["articleType", "baseColour", "gender"], coarse=["articleType"],
            coarse_loss="proxy_anchor", coarse_weight=0.05, hidden=1024, dim=512,
            image_size=224, framing="none",
        )  # fmt: skip
        emb.encoder_ = tagger.net_.encoder
        emb.fit(frame, features=feats, rows=train)
        spaces["embed"] = emb.transform_features(feats).astype(np.float32)
    found = {name: neighbours(space, val, train, max(KS)) for name, space in spaces.items()}

    rng = np.random.default_rng(0)
    half = rng.permutation(len(val)) < len(val) // 2  # True: fold A, False: fold B
    print(f"{len(train)} train / {len(val)} val rows; folds of {half.sum()} and {(~half).sum()}")
    for t in tasks:
        y = targets[t.name][val]
        labelled = y >= 0

        def f1(p, rows, y=y, labelled=labelled):
            keep = rows & labelled
            return f1_score(y[keep], p[keep].argmax(1), average="weighted")

        n_classes = head_p[t.name].shape[1]
        candidates = {}
        for space, k, temp in itertools.product(found, KS, TEMPERATURES):
            sims, idx = found[space]
            v = votes(sims, idx, targets[t.name], n_classes, k, temp)
            for a in ALPHAS:
                candidates[space, k, temp, a] = (1 - a) * head_p[t.name] + a * v
        blended = np.zeros_like(head_p[t.name])
        picks = []
        for fit_rows in (half, ~half):  # choose on one fold, apply to the other
            best = max(candidates, key=lambda c: f1(candidates[c], fit_rows))
            blended[~fit_rows] = candidates[best][~fit_rows]
            picks.append(best)
        every = np.ones(len(val), bool)
        print(
            f"{t.name:15s} heads {f1(head_p[t.name], every):.4f}  "
            f"cross-fitted blend {f1(blended, every):.4f}  picks (space, k, T, a) {picks}",
            flush=True,
        )


if __name__ == "__main__":
    main()
