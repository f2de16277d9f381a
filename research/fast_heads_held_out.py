"""Can the demo's head training fit in a minute without losing accuracy on photos nobody
trained on? (research/LOG.md, "Head training in a minute, held out")

    python research/hold_out_split.py ../shared/datasets/fashion-products runs/held-out
    python research/fast_heads_held_out.py ../shared/datasets/fashion-products runs/held-out \
        research/results/fast_heads_held_out.json

Rows named "library schedule" train through the tagger's own API with a named schedule
(``multitag.tagger.config.SCHEDULES``: ``fit_head_sets``, then ``refit_heads``, warm when
the schedule says so); rows named "embedder" train the demo's similar-items embedder
(``multitag.cli.demo.DEMO_EMBEDDERS``) and score its recall@1 on the test photos.

The demo's tagger (its 8 tasks, 224 px, product framing pinned to what ``"auto"`` measures
on this catalogue so the cached features are reused, three head sets) prepared on
``train.csv``; each schedule trains the three sets as one batched model on its 80 % train
rows (epoch chosen on its 20 % val rows), then refits them on train + val: from scratch for
the chosen epochs (the demo's refit), or ``warm``: on from the trained weights for a few
epochs of a short one-cycle at a lower peak rate. Both stages are scored on ``test.csv``
(weighted F1 per task, the three sets averaged, no prior shift), with wall and CPU seconds.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from multitag.cli.demo import demo_embedder, demo_tagger
from multitag.data.derive import keyword_tags
from multitag.data.manifest import load_manifest
from multitag.data.tasks import encode_all
from multitag.embedding.evaluate import retrieval_metrics
from multitag.embedding.model import same_key
from multitag.evaluation.report import report_from_arrays
from multitag.multitask.heads import AveragedHeadSets
from multitag.training.head_sets import fit_head_sets
from multitag.vision.extraction import extract_features

FRAMING = {"aspect": 0.75, "fill": 0.87, "threshold": 30}
BEFORE = {"epochs": 25, "batch_size": 512, "lr": 2e-3, "patience": 6}
SCHEDULES = {
    "demo before: batch 512, 25 epochs, refit from scratch": {**BEFORE},
    "batch 2048, lr 4e-3, 25 epochs, refit from scratch": {**BEFORE, "batch_size": 2048,
                                                            "lr": 4e-3},
    "batch 2048, lr 4e-3, 15 epochs, warm refit 3 epochs": {
        "epochs": 15, "patience": 4, "batch_size": 2048, "lr": 4e-3, "warm": 3},
    "batch 2048, lr 4e-3, 15 epochs, warm refit 5 epochs": {
        "epochs": 15, "patience": 4, "batch_size": 2048, "lr": 4e-3, "warm": 5},
    "batch 2048, lr 4e-3, 25 epochs, cross-fitted on val folds": {
        **BEFORE, "batch_size": 2048, "lr": 4e-3, "crossfit": True},
    "batch 2048, lr 4e-3, 20 epochs, cross-fitted on val folds": {
        **BEFORE, "epochs": 20, "batch_size": 2048, "lr": 4e-3, "crossfit": True},
    "library schedule 'quick', 15 epochs": {"schedule": "quick", "epochs": 15},
    "library schedule 'quick', 12 epochs": {"schedule": "quick", "epochs": 12},
    "library schedule 'quick', 10 epochs, warm refit 2 epochs": {
        "schedule": "quick", "epochs": 10, "refit_epochs": 2},
}  # fmt: skip
# the similar-items embedder beside the tagger (multitag.cli.demo.DEMO_EMBEDDERS), trained on
# the train rows, recall@1 (same type + colour + gender) on the test photos and the val rows
EMBEDDERS = {
    "embedder 'thorough': 8 epochs, batch 512, lr 2e-3": {"schedule": "thorough"},
    "embedder 'quick': 3 epochs, batch 512, lr 2e-3": {"schedule": "quick"},
    "embedder: 4 epochs, batch 512, lr 2e-3": {"epochs": 4, "batch_size": 512, "lr": 2e-3},
    "embedder: 4 epochs, batch 1024, lr 3e-3": {"epochs": 4, "batch_size": 1024, "lr": 3e-3},
    "embedder: 3 epochs, batch 2048, lr 4e-3": {"epochs": 3, "batch_size": 2048, "lr": 4e-3},
    "embedder: 2 epochs, batch 512, lr 2e-3": {"epochs": 2, "batch_size": 512, "lr": 2e-3},
}
SAME = ["articleType", "baseColour", "gender"]


class Clock:
    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = round(time.perf_counter() - self.w, 1)
        self.cpu = round(time.process_time() - self.c, 1)


def score(tagger, heads, x, y) -> dict:
    tagger.net_.heads = heads
    report = report_from_arrays(tagger.tasks_, y, tagger.predict_proba_features(x))
    out = {k: round(m["weighted_f1"], 4) for k, m in report["tasks"].items()}
    return {**out, "mean": round(float(np.mean(list(out.values()))), 4)}


def warm_refit(tagger, heads, x, y, rows, epochs: int, lr_factor: float):
    """The trained sets, trained on for ``epochs`` on ``rows`` (copies; scaler kept)."""
    members = (
        [copy.deepcopy(m) for m in heads.members]
        if hasattr(heads, "members")
        else [copy.deepcopy(heads)]
    )
    members[0].fit_scaler = lambda features: None  # keep the scaler the weights were trained on
    cfg = tagger.settings("training")
    cfg = replace(cfg, epochs=epochs, lr=cfg.lr * lr_factor)
    seeds = [cfg.seed + i for i in range(len(members))]
    fit_head_sets(
        members,
        x,
        y,
        tagger.tasks_,
        rows,
        rows[:0],
        cfg,
        seeds,
        run_epochs=[epochs] * len(members),
        progress=False,
    )
    return members[0] if len(members) == 1 else AveragedHeadSets(members, tagger.tasks_)


def val_folds(val_rows: np.ndarray, digests: np.ndarray, n: int, seed: int) -> list:
    """``val_rows`` cut into ``n`` random folds, copies of a photo in one fold."""
    groups, inverse = np.unique(digests[val_rows], return_inverse=True)
    fold_of_group = np.random.default_rng(seed).permutation(len(groups)) % n
    fold = fold_of_group[inverse]
    return [val_rows[fold == k] for k in range(n)]


def crossfit(tagger, x, y, tr, va, digests):
    """Set k trains on train + every val fold but k, its epoch chosen on fold k; returns the
    averaged sets and each val row's probabilities from the set that did not see it."""
    cfg = tagger.settings("training")
    n = tagger.settings("heads").head_sets
    folds = val_folds(va, digests, n, cfg.seed)
    members, epochs = [], []
    for k in range(n):
        rows = np.sort(np.concatenate([tr, *[f for j, f in enumerate(folds) if j != k]]))
        heads, history = tagger.fit_head_set(x, y, rows, folds[k], cfg.seed + k, False)
        members.append(heads)
        epochs.append(history.best_epoch + 1)
    return AveragedHeadSets(members, tagger.tasks_), epochs, folds, members


def library_schedule(tagger, x, y, tr, va, test_x, test_y) -> dict:
    """Fit the head sets and refit them as the tagger's schedule says, through its API."""
    with Clock() as fit:
        heads = tagger.fit_head_sets(x, y, tr, va)
    epochs = [h.best_epoch + 1 for h in tagger.member_histories_]
    before = score(tagger, heads, test_x, test_y)
    with Clock() as refit:
        tagger.refit_heads(x, y, tr, va)
    after = score(tagger, tagger.net_.heads, test_x, test_y)
    return {
        "params": flat_training(tagger), "best_epochs": epochs, "refit_record": tagger.refit_,
        "fit": [fit.wall, fit.cpu], "refit": [refit.wall, refit.cpu],
        "test_before_refit": before, "test_after_refit": after,
        "rows": [len(tr), len(va), len(test_x)],
    }  # fmt: skip


def flat_training(tagger) -> dict:
    names = ("epochs", "batch_size", "lr", "patience", "refit_epochs", "refit_lr_factor")
    training = tagger.settings("training")
    return {name: getattr(training, name) for name in names}


def embedder_row(tagger, data, test, test_x, params: dict) -> dict:
    """Train the demo's embedder on the train rows of ``data`` (cached features) and score
    recall@1 on the test photos and on the val rows, against the raw features."""
    from multitag.embedding.beside import fit_beside

    params = demo_embedder(params["schedule"]) if "schedule" in params else dict(params)
    with Clock() as clock:
        emb = fit_beside(tagger, data.frame, SAME, rows=data.train_rows, **params)
    out = {"params": params, "seconds": [clock.wall, clock.cpu]}
    for name, feats, key in (
        ("test", test_x, same_key(test, SAME).to_numpy()),
        ("val", data.features.features[data.val_rows],
         same_key(data.frame, SAME).to_numpy()[data.val_rows]),
    ):  # fmt: skip
        has = key != ""
        out[f"{name}_recall@1"] = recall_at_1(emb.transform_features(feats[has]), key[has])
        out[f"{name}_raw_recall@1"] = recall_at_1(feats[has], key[has])
    return out


def recall_at_1(vectors: np.ndarray, key: np.ndarray) -> float:
    return round(retrieval_metrics(vectors, key, ks=(1,), nmi=False)["recall@1"], 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("split_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--warm-lr", type=float, default=0.25, help="warm refit peak lr / lr")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    _commit()  # the code this run trains with, whatever is committed while it runs
    images = args.data_root / "images"
    train = load_manifest(args.split_dir / "train.csv", images)
    test = load_manifest(args.split_dir / "test.csv", images)
    for f in (train, test):
        f["pattern"] = keyword_tags(f["productDisplayName"])
    base = demo_tagger(framing=FRAMING, **BEFORE)
    base.set_params(runtime__progress=False)
    data = base.prepare_fit(train)
    x, y, tr, va = data.features.features, data.targets, data.train_rows, data.val_rows
    test_x = extract_features(
        base.net_.encoder, test["path"].tolist(), cache_dir=base.feature_cache_dir(),
        encoder_id=base.encoder_id(), precision=base.settings("training").precision,
        engine=base.settings("runtime").engine, progress=False,
    ).features  # fmt: skip
    test_y = encode_all(test, base.tasks_)
    rows = np.union1d(tr, va)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name, params in SCHEDULES.items():
        if args.only and not any(o in name for o in args.only):
            continue
        params = dict(params)
        if "schedule" in params:
            overrides = {k: v for k, v in params.items() if k != "schedule"}
            tagger = demo_tagger(None, params["schedule"], framing=FRAMING, **overrides)
            tagger.set_params(runtime__progress=False)
            tagger.tasks_, tagger.net_ = base.tasks_, base.net_
            results[name] = {**library_schedule(tagger, x, y, tr, va, test_x, test_y),
                             **provenance()}  # fmt: skip
            print(name, json.dumps(results[name]), flush=True)
            args.out.write_text(json.dumps(results, indent=1))
            continue
        warm = params.pop("warm", None)
        cross = params.pop("crossfit", False)
        tagger = demo_tagger(framing=FRAMING, **params)
        tagger.set_params(runtime__progress=False)
        tagger.tasks_, tagger.net_ = base.tasks_, base.net_
        if cross:
            with Clock() as fit:
                heads, epochs, folds, members = crossfit(tagger, x, y, tr, va, data.digests)
            oof = {}
            for k, (m, f) in enumerate(zip(members, folds)):
                oof[k] = score(tagger, m, x[f], {t: v[f] for t, v in y.items()})
            results[name] = {
                "params": {**params, "crossfit": True}, "best_epochs": epochs,
                "fit": [fit.wall, fit.cpu], "refit": [0, 0],
                "test_after_refit": score(tagger, heads, test_x, test_y),
                "test_single_sets": [score(tagger, m, test_x, test_y)["mean"] for m in members],
                "val_fold_scores": oof, "rows": [len(tr), len(va), len(test)],
            }  # fmt: skip
            print(name, json.dumps(results[name]), flush=True)
            args.out.write_text(json.dumps(results, indent=1))
            continue
        with Clock() as fit:
            heads = tagger.fit_head_sets(x, y, tr, va)
        epochs = [h.best_epoch + 1 for h in tagger.member_histories_]
        before = score(tagger, heads, test_x, test_y)
        with Clock() as refit:
            if warm:
                new = warm_refit(tagger, heads, x, y, rows, warm, args.warm_lr)
            else:
                new = tagger.fit_head_sets(x, y, rows, rows[:0], run_epochs=epochs)
        after = score(tagger, new, test_x, test_y)
        results[name] = {
            "params": {**params, "warm": warm, "warm_lr": args.warm_lr if warm else None},
            "best_epochs": epochs, "fit": [fit.wall, fit.cpu], "refit": [refit.wall, refit.cpu],
            "test_before_refit": before, "test_after_refit": after,
            "rows": [len(tr), len(va), len(test)],
        }  # fmt: skip
        print(name, json.dumps(results[name]), flush=True)
        args.out.write_text(json.dumps(results, indent=1))
    for name, params in EMBEDDERS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        results[name] = {**embedder_row(base, data, test, test_x, params), **provenance()}
        print(name, json.dumps(results[name]), flush=True)
        args.out.write_text(json.dumps(results, indent=1))


@functools.cache
def _commit() -> str:
    """The commit checked out when the run started (the first call, at startup)."""
    import subprocess

    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def provenance() -> dict:
    """When, at which commit and how (CPU seconds: the host may be shared) a row was made."""
    import sys

    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(),
            "command": " ".join(["python", *sys.argv])}  # fmt: skip


if __name__ == "__main__":
    main()
