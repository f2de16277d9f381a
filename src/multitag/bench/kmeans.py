"""k-means benchmark (issue #39): does :class:`multitag.embedding.kmeans.KMeans` find the
classes, and what do its restarts and its training sample cost?

1. NMI of k-means clusters (k = the number of article types) against articleType on the
   fashion-products validation split (the tagger's split, as ``bench_embed``), for raw encoder
   features and for an embedding trained on a bounded sample of the train split; the old
   single FAISS run of ``multitag cluster`` and the old scikit-learn k-means of the catalogue
   are measured beside it on the same vectors and seeds.
2. Fit time and quality against the training-sample size (``max_train``) and against
   scikit-learn's k-means, on generated mixtures: where FAISS and sampling pay.
3. ``--tree``: the issue's scenario through the CLI: a folder tree of 3 classes x 60 photos,
   ``train``, ``embed train``, ``index build``, ``cluster`` with and without ``-k``.

    python -m multitag.bench.kmeans --out bench/ [--tree]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from sklearn.cluster import KMeans as SkKMeans
from sklearn.metrics import normalized_mutual_info_score

from multitag.bench.embed import SAME
from multitag.bench.provenance import git_commit
from multitag.cli.demo import DEMO_IMAGE_SIZE
from multitag.core.io import write_json, write_text
from multitag.data.manifest import load_manifest
from multitag.embedding.kmeans import MAX_TRAIN, KMeans, suggest_k
from multitag.embedding.model import l2_normalize

TREE_CLASSES = ["Watches", "Tshirts", "Casual Shoes"]


def _faiss_single(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The old ``multitag cluster``: one spherical FAISS run (nredo=1)."""
    km = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, spherical=True, min_points_per_centroid=1)
    km.train(x)
    return km.index.search(x, 1)[1][:, 0]


def _faiss_restarts(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """FAISS alone with 10 random-start restarts (nredo=10), for comparison."""
    km = faiss.Kmeans(
        x.shape[1], k, niter=25, nredo=10, seed=seed, spherical=True, min_points_per_centroid=1
    )
    km.train(x)
    return km.index.search(x, 1)[1][:, 0]


def _sklearn_catalogue(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The old catalogue clusters: scikit-learn KMeans, 4 k-means++ restarts, Euclidean."""
    return SkKMeans(n_clusters=k, n_init=4, random_state=seed).fit(x).labels_


METHODS = {
    "one FAISS run (old `cluster`)": _faiss_single,
    "scikit-learn, 4 restarts (old catalogue)": _sklearn_catalogue,
    "FAISS, 10 random restarts": _faiss_restarts,
    "KMeans: k-means++ x10, spherical (now)": lambda x, k, s: (
        KMeans(k, random_state=s).fit(x).labels_
    ),
}


def _nmi_table(spaces: dict[str, tuple[np.ndarray, list[int]]], truth: np.ndarray) -> dict:
    """NMI and seconds of every method on every space, over that space's seeds."""
    k = len(np.unique(truth))
    out = {}
    for space, (x, seeds) in spaces.items():
        for method, fn in METHODS.items():
            scores, secs = [], []
            for s in seeds:
                t0 = time.perf_counter()
                labels = fn(x, k, s)
                secs.append(time.perf_counter() - t0)
                scores.append(float(normalized_mutual_info_score(truth, labels)))
            out.setdefault(space, {})[method] = {
                "nmi": scores,
                "nmi_mean": float(np.mean(scores)),
                "nmi_min": float(np.min(scores)),
                "seconds_mean": float(np.mean(secs)),
            }
            print(space, method, out[space][method], flush=True)
    return out


def fashion_nmi(
    data_root: Path,
    train_rows: int,
    epochs: int,
    seeds: list[int],
    raw_seeds: list[int],
    max_val: int | None = None,
) -> dict:
    """Section 1: raw features (over ``raw_seeds``: each fit is slow on them) vs a trained
    embedding (over ``seeds``) on the validation split (its first ``max_val`` rows when
    given: a smoke run)."""
    from multitag.embedding import Embedder
    from multitag.embedding.evaluate import default_split

    frame = load_manifest(data_root / "styles.csv", data_root / "images")
    train, val = default_split(frame, SAME)
    rng = np.random.default_rng(0)
    sub = np.sort(rng.choice(np.asarray(train), min(train_rows, len(train)), replace=False))
    rows = np.concatenate([sub, np.asarray(val)[:max_val]])
    part = frame.iloc[rows].reset_index(drop=True)
    probe = Embedder(SAME, image_size=DEMO_IMAGE_SIZE, framing="none", progress=False)
    probe.encoder_ = probe.build_encoder()
    t0 = time.perf_counter()
    res = probe.features(part["path"].tolist())
    feature_seconds = time.perf_counter() - t0
    emb = Embedder(SAME, image_size=DEMO_IMAGE_SIZE, framing="none", epochs=epochs, progress=False)
    emb.encoder_ = probe.encoder_
    t0 = time.perf_counter()
    emb.fit(part, features=res.features, rows=np.arange(len(sub)))
    train_seconds = time.perf_counter() - t0
    truth = part["articleType"].fillna("").astype(str).to_numpy()
    keep = np.array([i for i in range(len(sub), len(part)) if res.ok[i] and truth[i]])
    spaces = {
        "raw encoder features (L2-normalised)": (l2_normalize(res.features[keep]), raw_seeds),
        "trained embedding": (emb.transform_features(res.features[keep]), seeds),
    }
    return {
        "val_rows": len(keep),
        "k": len(np.unique(truth[keep])),
        "train_rows": len(sub),
        "epochs": epochs,
        "embedder": {"same": SAME, "dim": emb.dim, "head": emb.head, "loss": emb.loss},
        "feature_dim": int(res.features.shape[1]),
        "feature_seconds": feature_seconds,
        "train_seconds": train_seconds,
        "seeds": {space: seeds for space, (_, seeds) in spaces.items()},
        "nmi": _nmi_table(spaces, truth[keep]),
    }


def _mixture(n: int, k: int, dim: int, seed: int = 0):
    """``n`` unit rows from ``k`` overlapping classes of uneven size (a stand-in for
    embeddings at sizes the dataset does not reach)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, dim))
    weights = rng.dirichlet(np.full(k, 2.0))
    labels = rng.choice(k, n, p=weights)
    x = centers[labels] + 1.2 * rng.standard_normal((n, dim))
    return l2_normalize(x.astype(np.float32)), labels


def scaling(n: int, k: int, dim: int, sizes, sklearn_sizes) -> dict:
    """Section 2: time and quality against ``max_train``; FAISS Lloyd vs scikit-learn."""
    x, y = _mixture(n, k, dim)
    rows = []
    for m in sizes:
        t0 = time.perf_counter()
        km = KMeans(k, max_train=m).fit(x)
        rows.append({
            "max_train": m or n,
            "seconds": time.perf_counter() - t0,
            "inertia": km.inertia_,
            "nmi": float(normalized_mutual_info_score(y, km.labels_)),
        })  # fmt: skip
        print("scaling", rows[-1], flush=True)
    full = next(r["inertia"] for r in rows if r["max_train"] == n)
    for r in rows:
        r["inertia_vs_all_rows"] = r["inertia"] / full
    backends = []
    for m in sklearn_sizes:
        sub = x[:m]
        t0 = time.perf_counter()
        ours = KMeans(k, max_train=None).fit(sub)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        sk = SkKMeans(n_clusters=k, n_init=10, max_iter=25, random_state=0).fit(sub)
        t_sk = time.perf_counter() - t0
        backends.append({
            "rows": m,
            "faiss_seconds": t_ours,
            "sklearn_seconds": t_sk,
            "faiss_nmi": float(normalized_mutual_info_score(y[:m], ours.labels_)),
            "sklearn_nmi": float(normalized_mutual_info_score(y[:m], sk.labels_)),
        })  # fmt: skip
        print("backends", backends[-1], flush=True)
    return {"n": n, "k": k, "dim": dim, "sample_sizes": rows, "backends": backends}


def tree_scenario(data_root: Path, per_class: int = 60) -> dict:
    """Section 3: the issue's folder tree through the CLI, in a temporary folder."""
    import pandas as pd
    from typer.testing import CliRunner

    from multitag.cli.main import app
    from multitag.embedding.index import VectorIndex

    frame = load_manifest(data_root / "styles.csv", data_root / "images")
    run = CliRunner().invoke
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for cls in TREE_CLASSES:
            (root / "tree" / cls).mkdir(parents=True)
            pick = frame[frame["articleType"] == cls].head(per_class)
            for p in pick["path"]:
                shutil.copy(p, root / "tree" / cls / Path(p).name)
        steps = [
            ["train", "--data", f"{root}/tree", "--out", f"{root}/model"],
            ["embed", "train", "--data", f"{root}/tree", "--same", "label",
             "--out", f"{root}/model"],
            ["index", "build", f"{root}/model", f"{root}/tree", "--out", f"{root}/index"],
        ]  # fmt: skip
        t0 = time.perf_counter()
        for args in steps:
            r = run(app, args)
            if r.exit_code != 0:
                raise RuntimeError(f"multitag {' '.join(args)} failed:\n{r.output}")
        build_seconds = time.perf_counter() - t0
        index = VectorIndex.load(root / "index")
        truth = index.items_["path"].map(lambda p: Path(p).parent.name).to_numpy()
        x = index.vectors()
        out: dict = {
            "per_class": per_class,
            "classes": TREE_CLASSES,
            "build_seconds": build_seconds,
        }
        r = run(app, ["cluster", f"{root}/index", "--html", f"{root}/c.html",
                      "--out", f"{root}/auto.csv"])  # fmt: skip
        if r.exit_code != 0:
            raise RuntimeError(f"multitag cluster failed:\n{r.output}")
        auto = pd.read_csv(root / "auto.csv")
        out["suggested_k"] = int(auto["cluster"].nunique())
        out["suggest_scores"] = suggest_k(x)[1]
        r = run(app, ["cluster", f"{root}/index", "-k", "3", "--html", f"{root}/c.html",
                      "--out", f"{root}/k3.csv"])  # fmt: skip
        if r.exit_code != 0:
            raise RuntimeError(f"multitag cluster -k 3 failed:\n{r.output}")
        ids = index.items_["id"].astype(str).to_numpy()
        k3 = pd.read_csv(root / "k3.csv", dtype={"id": str}).set_index("id")["cluster"]
        now = k3.loc[ids].to_numpy()
        out["now"] = {"sizes": sorted(np.bincount(now).tolist(), reverse=True),
                      "nmi": float(normalized_mutual_info_score(truth, now))}  # fmt: skip
        out["old_single_run"] = {}
        for seed in range(5):
            old = _faiss_single(x, 3, seed)
            out["old_single_run"][seed] = {
                "sizes": sorted(np.bincount(old, minlength=3).tolist(), reverse=True),
                "nmi": float(normalized_mutual_info_score(truth, old)),
            }
    print("tree", out, flush=True)
    return out


def markdown(r: dict) -> str:
    f = r["fashion"]
    lines = [
        "## k-means (`python -m multitag.bench.kmeans`)",
        "",
        f"`{r.get('command', 'python -m multitag.bench.kmeans')}`, run {r['date']} at commit "
        f"`{r['commit']}` on {r['threads']} shared CPU threads. "
        f"One k-means (`multitag.embedding.kmeans.KMeans`) now serves `multitag cluster`, the "
        "catalogue (and so the explorer) and the NMI of the retrieval metrics.",
        "",
        f"**NMI against articleType** on the fashion-products validation split (the tagger's "
        f"split, as `bench_embed`): {f['val_rows']} photos, k = {f['k']} (the number of article "
        "types among them); mean (min) NMI over the seeds listed and mean seconds per fit "
        "(2 CPU threads shared with other jobs: times are rough). The trained embedding: `Embedder(same="
        f"{'+'.join(f['embedder']['same'])}, head={f['embedder']['head']}, "
        f"dim={f['embedder']['dim']}, loss={f['embedder']['loss']}, epochs={f['epochs']})` on "
        f"{f['train_rows']} photos drawn at random (seed 0) from the train split, frozen Lite0 "
        f"at {DEMO_IMAGE_SIZE} px, squash-resize; raw = its {f['feature_dim']}-d encoder "
        "features, L2-normalised (what the catalogue clusters without an embedder).",
        "",
        "| vectors | k-means | seeds | NMI mean (min) | s per fit |",
        "|---|---|---|---:|---:|",
    ]
    for space, methods in f["nmi"].items():
        for method, m in methods.items():
            lines.append(
                f"| {space} | {method} | {', '.join(map(str, f['seeds'][space]))} "
                f"| {m['nmi_mean']:.4f} ({m['nmi_min']:.4f}) "
                f"| {m['seconds_mean']:.1f} |"
            )
    now = "KMeans: k-means++ x10, spherical (now)"
    spaces = list(f["nmi"])
    spread = {
        sp: max(m["nmi_mean"] for m in f["nmi"][sp].values())
        - min(m["nmi_mean"] for m in f["nmi"][sp].values())
        for sp in spaces
    }
    lines += [
        "",
        f"Trained embedding minus raw features, both with the new KMeans: "
        f"{f['nmi'][spaces[1]][now]['nmi_mean'] - f['nmi'][spaces[0]][now]['nmi_mean']:+.4f} "
        f"NMI. With k = {f['k']} the k-means variants differ by at most "
        f"{max(spread.values()):.4f} NMI on either space: restarts matter most where a few "
        "large, well separated classes can be merged (the folder tree below).",
    ]
    s = r["scaling"]
    lines += [
        "",
        f"**Training sample** (`max_train`), on a generated mixture of {s['n']} unit rows, "
        f"{s['dim']}-d, {s['k']} overlapping classes of uneven size, k = {s['k']}, 10 "
        "restarts: every row is assigned to the nearest centroid; objective relative to "
        "fitting on all rows (lower is better).",
        "",
        "| max_train | s | objective / all rows | NMI vs classes |",
        "|---:|---:|---:|---:|",
    ]
    for row in s["sample_sizes"]:
        lines.append(
            f"| {row['max_train']} | {row['seconds']:.1f} | {row['inertia_vs_all_rows']:.4f} "
            f"| {row['nmi']:.4f} |"
        )
    at_default = next((r for r in s["sample_sizes"] if r["max_train"] == MAX_TRAIN), None)
    if at_default:
        lines += [
            "",
            f"The default `MAX_TRAIN` = {MAX_TRAIN}: at {s['n']} rows its objective is "
            f"{100 * (at_default['inertia_vs_all_rows'] - 1):+.2f}% against all rows; the "
            "Lloyd iterations cost time in proportion to the rows they see, so the sample "
            "bounds the fit on larger inputs while every row is still assigned.",
        ]
    lines += [
        "",
        "**FAISS Lloyd vs scikit-learn** on the first rows of the same mixture, all rows, "
        "10 k-means++ restarts of at most 25 iterations each (KMeans spherical, scikit-learn "
        "Euclidean, so NMI compares them, not the objective):",
        "",
        "| rows | KMeans (FAISS) s | scikit-learn s | NMI KMeans | NMI scikit-learn |",
        "|---:|---:|---:|---:|---:|",
    ]
    same = [
        (row["seconds"], b["faiss_seconds"])
        for row in s["sample_sizes"]
        for b in s["backends"]
        if row["max_train"] == b["rows"] == s["n"]
    ]
    if same:
        lines.insert(
            len(lines) - 4,
            f"Times vary with the other jobs on the host: the same all-rows fit took "
            f"{same[0][0]:.1f} s above and {same[0][1]:.1f} s below.\n",
        )
    for b in s["backends"]:
        lines.append(
            f"| {b['rows']} | {b['faiss_seconds']:.1f} | {b['sklearn_seconds']:.1f} "
            f"| {b['faiss_nmi']:.4f} | {b['sklearn_nmi']:.4f} |"
        )
    if r.get("tree"):
        t = r["tree"]
        old = t["old_single_run"]
        lines += [
            "",
            f"**The issue's scenario**: a folder tree of {len(t['classes'])} classes x "
            f"{t['per_class']} photos ({', '.join(t['classes'])}), `multitag train --data "
            "tree`, `multitag embed train --data tree --same label`, `multitag index build`, "
            f"then `multitag cluster INDEX` ({t['build_seconds']:.0f} s for the three builds).",
            "",
            f"- without `-k`: suggested k = **{t['suggested_k']}** (silhouette "
            + ", ".join(f"k={k}: {v:.3f}" for k, v in list(t["suggest_scores"].items())[:5])
            + ", ...)",
            f"- `-k 3` now: sizes {'/'.join(map(str, t['now']['sizes']))}, NMI "
            f"{t['now']['nmi']:.3f}",
            "- the old single FAISS run on the same vectors, seeds 0-4: "
            + "; ".join(
                f"seed {s}: {'/'.join(map(str, v['sizes']))} (NMI {v['nmi']:.3f})"
                for s, v in old.items()
            ),
        ]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data-root", type=Path, default=Path("../shared/datasets/fashion-products")
    )
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--train-rows", type=int, default=6000, help="embedder training photos")
    parser.add_argument("--epochs", type=int, default=10, help="embedder epochs")
    parser.add_argument("--seeds", type=int, default=3, help="k-means seeds, trained embedding")
    parser.add_argument("--raw-seeds", type=int, default=1, help="k-means seeds, raw features")
    parser.add_argument("--scale-n", type=int, default=50_000)
    parser.add_argument("--max-val", type=int, default=None, help="smoke run: fewer val rows")
    parser.add_argument("--tree", action="store_true", help="also the issue's folder tree")
    args = parser.parse_args()
    import os

    result = {
        "command": "python -m multitag.bench.kmeans " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "commit": git_commit(),
        "threads": os.cpu_count(),
        "fashion": fashion_nmi(
            args.data_root,
            args.train_rows,
            args.epochs,
            list(range(args.seeds)),
            list(range(args.raw_seeds)),
            args.max_val,
        ),
        "scaling": scaling(
            args.scale_n,
            50,
            256,
            sizes=[m for m in (5_000, 10_000, 20_000, 30_000) if m < args.scale_n] + [None],
            sklearn_sizes=[m for m in (2_000, 20_000) if m < args.scale_n] + [args.scale_n],
        ),
        "tree": tree_scenario(args.data_root) if args.tree else None,
    }
    write_json(args.out / "kmeans.json", result)
    write_text(args.out / "kmeans.md", markdown(result))
    from multitag.bench.core import write_benchmarks_md

    write_benchmarks_md(args.out)
    print((args.out / "kmeans.md").read_text())


if __name__ == "__main__":
    main()
