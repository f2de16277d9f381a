"""Unlabelled-catalogue benchmark (issue #40): the write-up's three post-processings, measured.

A sample of fashion-products photos goes through the catalogue's backbone source
(:class:`~multitag.catalog.backbone_tagger.BackboneTagger`: frozen Lite0, its ImageNet
classifier, no labels, no trained model), then through the catalogue's own functions:

1. the map on the features (the catalogue's ``--maps embedding``);
2. NMF on the top-5 ImageNet tag matrix, then the map on the topic weights
   (``--topics-on imagenet --maps topics``);
3. NMF on the features, then the map on the topic weights (``--topics-on features --maps topics``).

Each map is scored against articleType, a label the build never saw: kNN accuracy in 2-D
(majority of the 10 nearest points on the map, leave-one-out) and NMI of k-means clusters of
the map (k = the number of article types in the sample); the same scores on the vectors the
map is drawn from show what the 2-D projection keeps.

    python -m multitag.bench.unlabelled --out bench/ [--n 6000] [--layouts umap,tsne]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import normalized_mutual_info_score
from sklearn.neighbors import NearestNeighbors

from multitag.catalog import layout as layout_mod
from multitag.catalog import topics as topics_mod
from multitag.catalog import unlabelled as unl
from multitag.catalog.backbone_tagger import BackboneTagger
from multitag.core.io import write_json, write_text
from multitag.data.manifest import load_manifest
from multitag.embedding.kmeans import KMeans

PROCESSINGS = {
    "map on features": None,
    "NMF on the top-5 ImageNet matrix, then map": "imagenet",
    "NMF on features, then map": "features",
}


def knn_accuracy(x: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Leave-one-out accuracy of a majority vote among the ``k`` nearest other points."""
    nn = NearestNeighbors(n_neighbors=k + 1).fit(x)
    idx = nn.kneighbors(x, return_distance=False)[:, 1:]
    codes, inverse = np.unique(labels, return_inverse=True)
    votes = np.zeros((len(x), len(codes)), np.int32)
    np.add.at(votes, (np.repeat(np.arange(len(x)), k), inverse[idx].ravel()), 1)
    return float((votes.argmax(1) == inverse).mean())


def cluster_nmi(x: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """NMI against ``labels`` of the catalogue's k-means (k = the number of labels)."""
    k = len(np.unique(labels))
    clusters = KMeans(k, random_state=seed).fit(x).labels_
    return float(normalized_mutual_info_score(labels, clusters))


def sample(data_root: Path, n: int, seed: int):
    """``n`` photos drawn at random (``seed``) from fashion-products: paths and articleType."""
    frame = load_manifest(data_root / "styles.csv", data_root / "images")
    frame = frame[frame["path"].map(lambda p: Path(p).is_file())]
    rows = frame.sample(n=min(n, len(frame)), random_state=seed).reset_index(drop=True)
    return rows["path"].tolist(), rows["articleType"].astype(str).to_numpy()


def run(
    data_root: Path,
    n: int = 6000,
    n_topics: int = 20,
    layouts: tuple[str, ...] = ("umap",),
    seed: int = 0,
) -> dict:
    paths, truth = sample(data_root, n, seed)
    t0 = time.perf_counter()
    source = BackboneTagger(progress=True)
    out = source.predict_proba(paths, return_features=True, use_cache=True)
    encode_s = time.perf_counter() - t0
    ok = np.array([i not in out["errors"] for i in range(len(paths))])
    features, imagenet, truth = out["features"][ok], out["imagenet"][ok], truth[ok]
    embeddings = source.embed(features)
    # ImageNet top-1 alone, as a clustering of the photos (what the tags say without NMF)
    top1 = imagenet.argmax(1)
    result = {
        "n_photos": int(ok.sum()),
        "n_article_types": int(len(np.unique(truth))),
        "n_topics": n_topics,
        "backbone": source.source()["backbone"],
        "image_size": source.source()["image_size"],
        "feature_dim": int(features.shape[1]),
        "encode_seconds": round(encode_s, 1),
        "imagenet_top1_nmi": round(float(normalized_mutual_info_score(truth, top1)), 4),
        "imagenet_top1_distinct": int(len(np.unique(top1))),
        "rows": [],
    }
    for name, on in PROCESSINGS.items():
        t0 = time.perf_counter()
        if on is None:
            vectors, topic_nmi = embeddings, None
        else:
            x, _ = unl.topic_input(on, None, features, imagenet)
            w, _ = topics_mod.fit_topics(x, n_topics, seed)
            vectors = unl.map_vectors("topics", embeddings, w)
            topic_nmi = float(normalized_mutual_info_score(truth, w.argmax(1)))
        nmf_s = time.perf_counter() - t0
        space = {
            "knn_accuracy": round(knn_accuracy(vectors, truth), 4),
            "cluster_nmi": round(cluster_nmi(vectors, truth, seed), 4),
        }
        for method in layouts:
            t0 = time.perf_counter()
            xy = layout_mod.fit_layout(vectors, method, seed)
            map_s = time.perf_counter() - t0
            result["rows"].append(
                {
                    "processing": name,
                    "layout": method,
                    "knn_accuracy_2d": round(knn_accuracy(xy, truth), 4),
                    "cluster_nmi_2d": round(cluster_nmi(xy, truth, seed), 4),
                    "input_knn_accuracy": space["knn_accuracy"],
                    "input_cluster_nmi": space["cluster_nmi"],
                    "topic_argmax_nmi": None if topic_nmi is None else round(topic_nmi, 4),
                    "nmf_seconds": round(nmf_s, 1),
                    "map_seconds": round(map_s, 1),
                }
            )
            print(json.dumps(result["rows"][-1]), flush=True)
    return result


def markdown(r: dict, command: str) -> str:
    lines = [
        "## Unlabelled catalogue: the write-up's post-processings "
        "(`python -m multitag.bench.unlabelled`)",
        "",
        f"`{command}`, run {time.strftime('%Y-%m-%d')} on 2 CPU threads shared with other "
        "jobs (times are rough). What `multitag catalog build tf_efficientnet_lite0 PHOTOS "
        "--out CAT` computes with no labels and no model, scored against articleType, which "
        f"the build never saw: {r['n_photos']} fashion-products photos drawn at random "
        f"(seed 0), {r['n_article_types']} article types among them; frozen {r['backbone']} "
        f"at {r['image_size']} px (squash-resize, no framing), its {r['feature_dim']}-d features "
        f"L2-normalised, its ImageNet classifier for the top-5 tags; NMF with "
        f"{r['n_topics']} topics; maps fitted by the catalogue's `fit_layout` (seed 0).",
        "",
        "kNN accuracy: majority of the 10 nearest other points, leave-one-out. Cluster NMI: "
        "the catalogue's k-means with k = the number of article types. *2-D* scores the "
        "map; *input* scores the vectors the map is drawn from (features, or topic weights).",
        "",
        "| post-processing | map | kNN acc. 2-D | cluster NMI 2-D | kNN acc. input | "
        "cluster NMI input | topic = cluster NMI | NMF s | map s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        topic = "" if row["topic_argmax_nmi"] is None else f"{row['topic_argmax_nmi']:.4f}"
        lines.append(
            f"| {row['processing']} | {row['layout']} | {row['knn_accuracy_2d']:.4f} | "
            f"{row['cluster_nmi_2d']:.4f} | {row['input_knn_accuracy']:.4f} | "
            f"{row['input_cluster_nmi']:.4f} | {topic} | {row['nmf_seconds']} | "
            f"{row['map_seconds']} |"
        )
    best = max(r["rows"], key=lambda x: x["knn_accuracy_2d"])
    lines += [
        "",
        f"For reference, the ImageNet top-1 class alone as a clustering: NMI "
        f"{r['imagenet_top1_nmi']:.4f} ({r['imagenet_top1_distinct']} distinct classes). "
        f"Encoding the photos: {r['encode_seconds']} s (features read from the content-keyed cache where present). Best map "
        f"by kNN accuracy: {best['processing']} ({best['layout']}).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data-root", type=Path, default=Path("../shared/datasets/fashion-products")
    )
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--topics", type=int, default=20)
    parser.add_argument("--layouts", default="umap", help="comma-separated: umap, tsne")
    args = parser.parse_args()
    layouts = tuple(m.strip() for m in args.layouts.split(",") if m.strip())
    result = run(args.data_root, args.n, args.topics, layouts)
    command = (
        f"python -m multitag.bench.unlabelled --data-root {args.data_root} --out {args.out} "
        f"--n {args.n} --topics {args.topics} --layouts {','.join(layouts)}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "unlabelled.json", result)
    write_text(args.out / "unlabelled.md", markdown(result, command))
    from multitag.bench.core import write_benchmarks_md

    write_benchmarks_md(args.out)


if __name__ == "__main__":
    main()
