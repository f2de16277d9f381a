"""Cheap variants of the frozen-feature tagger, scored on the bench split (research/LOG.md).

    python research/head_variants.py ../shared/datasets/fashion-products [--flip-cache F.npy]

Everything here reuses the cached Lite0 224-px features of the core benchmark and the same
20 % validation split; only heads are trained (about 1.5 min each on 2 cores). It compares:

- three seeds of the default heads, and the average of their probabilities (the ensemble
  that ``HeadConfig(head_sets=3)`` fits);
- flip test-time augmentation (average with the mirrored photo's prediction), with heads
  trained on the original photos and with heads trained on both views;
- the class hierarchy: subCategory and masterCategory scored from the articleType (or
  subCategory) probabilities through P(parent | child) counted on the training rows, alone
  and combined with the parent's own head.

Mirrored-image features take one more pass over the images (about 3.5 min); ``--flip-cache``
keeps them in a .npy file between runs.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

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
from multitag.vision.engines import runner_for
from multitag.vision.extraction import extract_features
from multitag.vision.features import iter_batches


def mirrored_features(tagger: MultiTaskTagger, paths: list[str]) -> np.ndarray:
    encoder = tagger.net_.encoder
    runner = runner_for(
        encoder, tagger.settings("runtime").engine, tagger.settings("training").precision
    )
    out = np.zeros((len(paths), encoder.out_dim), np.float32)
    size = encoder.preprocessing.image_size
    with bar("mirrored features", len(paths)) as pbar, torch.inference_mode():
        for idx, images, errs in iter_batches(paths, size, 64):
            if images is not None:
                out[idx.numpy()] = runner(images.flip(-1))[0].numpy()
            pbar.advance(len(idx) + len(errs))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--flip-cache", type=Path, default=None)
    args = parser.parse_args()
    frame = load_manifest(args.data_root / "styles.csv", args.data_root / "images")
    frame = frame.reset_index(drop=True)
    # squash-resize, as the research/LOG.md numbers were measured
    tagger = MultiTaskTagger(
        TASKS,
        features=FeatureConfig(image_size=224, framing="none"),
        training=TrainConfig(epochs=1),
    )
    tagger.fit(frame)
    tasks, paths = tagger.tasks_, frame["path"].tolist()
    plain = extract_features(
        tagger.net_.encoder, paths, cache_dir=tagger.feature_cache_dir(),
        encoder_id=tagger.encoder_id(), progress=False,
    ).features  # fmt: skip
    if args.flip_cache and args.flip_cache.is_file():
        mirrored = np.load(args.flip_cache)
    else:
        mirrored = mirrored_features(tagger, paths)
        if args.flip_cache:
            np.save(args.flip_cache, mirrored)
    targets = encode_all(frame, tasks)
    train, val = split_indices(frame, default_stratify(tasks), 0.2, 0)
    tagger.set_params(training__epochs=TrainConfig().epochs)

    def fit(features, rows, seed, tgt=targets):
        heads = tagger.new_heads(features.shape[1], seed)
        heads.fit_scaler(features[rows])
        config = dataclasses.replace(tagger.settings("training"), seed=seed)
        fit_heads(heads, features, tgt, tasks, rows, val, config, progress=False)
        return heads.eval()

    def proba(heads, features):
        with torch.no_grad():
            return {k: v.softmax(-1).numpy() for k, v in heads(torch.as_tensor(features)).items()}

    def f1(name, p):
        y = targets[name][val]
        keep = y >= 0
        return f1_score(y[keep], p[keep].argmax(1), average="weighted")

    def show(label, probs):
        scores = {t.name: f1(t.name, probs[t.name]) for t in tasks}
        mean = np.mean(list(scores.values()))
        print(f"{label:28s} " + " ".join(f"{k[:7]} {v:.4f}" for k, v in scores.items())
              + f" mean {mean:.4f}", flush=True)  # fmt: skip

    def average(*probs):
        return {k: np.mean([p[k] for p in probs], 0) for k in probs[0]}

    members = []
    for seed in range(3):
        heads = fit(plain, train, seed)
        members.append(proba(heads, plain[val]))
        show(f"seed {seed}", members[-1])
        show(f"seed {seed} + flip TTA", average(members[-1], proba(heads, mirrored[val])))
    show("3 seeds averaged", average(*members))

    both = np.concatenate([plain, mirrored])
    tgt2 = {k: np.concatenate([v, v]) for k, v in targets.items()}
    rows2 = np.concatenate([train, train + len(plain)])
    for seed in range(2):
        heads = fit(both, rows2, seed, tgt2)
        p0, p1 = proba(heads, plain[val]), proba(heads, mirrored[val])
        show(f"flip-trained seed {seed}", p0)
        show(f"flip-trained seed {seed} + TTA", average(p0, p1))

    p = members[0]
    for child, parent in [("articleType", "subCategory"), ("subCategory", "masterCategory"),
                          ("articleType", "masterCategory")]:  # fmt: skip
        yc, yp = targets[child][train], targets[parent][train]
        counts = np.full((p[child].shape[1], p[parent].shape[1]), 1e-3)
        keep = (yc >= 0) & (yp >= 0)
        np.add.at(counts, (yc[keep], yp[keep]), 1)
        from_child = p[child] @ (counts / counts.sum(1, keepdims=True))
        combined = np.exp(0.5 * np.log(p[parent] + 1e-9) + 0.5 * np.log(from_child + 1e-9))
        print(
            f"{parent} from {child}: own head {f1(parent, p[parent]):.4f}, from {child} "
            f"{f1(parent, from_child):.4f}, geometric mean of both {f1(parent, combined):.4f}"
        )


if __name__ == "__main__":
    main()
