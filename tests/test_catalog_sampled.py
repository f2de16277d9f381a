"""Topics and map fitted on a sample and applied to every row in chunks: identical to the full
fit below the sample size; above it, every row is placed by the sample's fitted state."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from multitag.catalog import build, sampled
from multitag.catalog import topics as topics_mod
from multitag.catalog import unlabelled as unl


def _rows(n=400, seed=0):
    rng = np.random.default_rng(seed)
    blob = rng.integers(0, 5, n)
    emb = rng.normal(0, 1, (5, 24))[blob] + rng.normal(0, 0.3, (n, 24))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    tagprobs = rng.dirichlet(np.ones(8), n).astype(np.float32)
    tagprobs[np.arange(n), blob] += 1
    features = rng.normal(0, 1, (n, 16)).astype(np.float32)
    rows = pd.DataFrame({"id": [str(i) for i in range(n)], "path": ["p"] * n})
    columns = [f"task{j // 4}:c{j}" for j in range(8)]
    return rows, emb, tagprobs, features, columns


def _fit(fit_sample, chunk=None, monkeypatch=None, on="tags"):
    rows, emb, tagprobs, features, columns = _rows()
    if chunk:
        monkeypatch.setattr(sampled, "CHUNK", chunk)
    topic_x = (on, tagprobs, features, None)
    return build._fit_all(
        rows, emb, topic_x, columns, 4, "tsne", ("embedding",), 5, 0, None, fit_sample
    )


def test_below_the_sample_size_results_are_identical_to_the_full_fit():
    items_all, fit_all, topics_all = _fit(None)
    items_s, fit_s, topics_s = _fit(400)  # exactly the catalogue's size: no sampling
    pd.testing.assert_frame_equal(items_all, items_s)
    for key in fit_all:
        np.testing.assert_array_equal(fit_all[key], fit_s[key])
    assert topics_all == topics_s


@pytest.mark.parametrize("on", ["tags", "features"])
def test_above_the_sample_size_every_row_gets_the_samples_fitted_state(monkeypatch, on):
    rows, emb, tagprobs, features, _ = _rows()
    items, fit, topic_list = _fit(150, chunk=64, monkeypatch=monkeypatch, on=on)
    assert len(items) == 400 and len(topic_list) == 4
    sample = sampled.fit_rows(400, 150, 0)
    assert len(sample) == 150
    # topics: every row transformed (in chunks of 64) with components fitted on the sample
    x = tagprobs if on == "tags" else topics_mod.nonnegative(features, fit["nmf_offset"])[0]
    w = topics_mod.transform_topics(x, fit["nmf_components"])
    np.testing.assert_array_equal(items["topic"].to_numpy(), w.argmax(1))
    # map: rows outside the sample sit near their most similar sample points
    xy = items[["x", "y"]].to_numpy()
    assert np.abs(xy).max() <= 1.0 + 1e-5
    outside = np.setdiff1d(np.arange(400), sample)
    nearest = sample[np.argmax(emb[outside] @ emb[sample].T, axis=1)]
    spread = np.linalg.norm(xy[sample] - xy[sample].mean(0), axis=1).mean()
    assert np.linalg.norm(xy[outside] - xy[nearest], axis=1).mean() < spread / 2


def test_imagenet_topics_and_the_topic_map_are_fitted_on_the_sample(monkeypatch):
    """A catalogue built from a backbone: NMF over the sparse top-5 ImageNet matrix and the
    map of topic weights (``--maps topics``) are fitted on the sample and applied in chunks."""
    rows, emb, _, features, _ = _rows()
    imagenet = np.random.default_rng(1).dirichlet(np.ones(50) * 0.2, 400).astype(np.float32)
    monkeypatch.setattr(sampled, "CHUNK", 64)
    topic_x = ("imagenet", np.zeros((400, 0), np.float32), features, imagenet)
    items, fit, topic_list = build._fit_all(
        rows, emb, topic_x, [], 4, "tsne", ("topics", "embedding"), 5, 0, None, 150
    )
    assert len(items) == 400 and len(topic_list) == 4
    assert all(t["top_tags"][0]["tag"].startswith("imagenet:") for t in topic_list)
    w = topics_mod.transform_topics(unl.topk_matrix(imagenet), fit["nmf_components"])
    np.testing.assert_array_equal(items["topic"].to_numpy(), w.argmax(1))
    sample = sampled.fit_rows(400, 150, 0)
    vectors = unl.map_vectors("topics", emb, fit["topic_weights"])
    xy = items[["x", "y"]].to_numpy()
    outside = np.setdiff1d(np.arange(400), sample)
    nearest = sample[np.argmax(vectors[outside] @ vectors[sample].T, axis=1)]
    spread = np.linalg.norm(xy[sample] - xy[sample].mean(0), axis=1).mean()
    assert np.linalg.norm(xy[outside] - xy[nearest], axis=1).mean() < spread / 2
    # a second map goes through the same sampled fit
    again = sampled.fit_layout(vectors, "tsne", 0, None, 150)
    np.testing.assert_allclose(again, xy, atol=1e-4)


def test_fit_sample_is_validated():
    with pytest.raises(ValueError, match="fit_sample=0: use a whole number >= 1"):
        sampled.fit_rows(10, 0)
