"""The compressed (IVF-PQ) index: chosen above ``compress_min``, recall vs exact, sharded fill
equals a plain fill, nprobe tuned to the target, save/load, filters, PCA for wide vectors."""

from __future__ import annotations

import faiss
import numpy as np
import pandas as pd
import pytest

from multitag.embedding import compressed
from multitag.embedding.index import VectorIndex


@pytest.fixture(autouse=True)
def quick_opq(monkeypatch):
    """A few OPQ rounds on few rows: the tests check the plumbing, not the rotation."""
    monkeypatch.setattr(compressed, "OPQ_ITERATIONS", 2)
    monkeypatch.setattr(compressed, "OPQ_TRAIN_ROWS", 2048)
    monkeypatch.setattr(compressed, "PQ_ITERATIONS", 4)


def _low_rank(n, dim=64, k=20, rank=6, seed=0):
    """Unit vectors in ``k`` clusters, each varying in its own ``rank``-d subspace (like real
    embeddings: low intrinsic dimension)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    bases = rng.standard_normal((k, rank, dim)).astype(np.float32) / np.sqrt(dim)
    c = rng.integers(0, k, n)
    z = rng.standard_normal((n, rank)).astype(np.float32) * 0.5
    x = centers[c] + np.einsum("nr,nrd->nd", z, bases[c])
    x += 0.02 * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), c


def _items(n, labels):
    return pd.DataFrame({"id": [f"i{j}" for j in range(n)], "kind": [f"c{v}" for v in labels]})


def _recall(found, x, q, k=10):
    truth = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]
    return compressed.recall_at(found, truth)


def test_auto_compresses_above_the_threshold_only():
    x, labels = _low_rank(6000)
    small = VectorIndex(exact_max=1000, compress_min=10_000).build(x, _items(6000, labels))
    assert small.kind_ == "ivf"  # below the threshold: unchanged behaviour
    big = VectorIndex(exact_max=1000, compress_min=5000, pq_m=16).build(x, _items(6000, labels))
    assert big.kind_ == "ivfpq"
    assert big.meta["factory"].startswith("OPQ16_64,IVF")
    assert big.meta["train_rows"] == 6000 and big.meta["nprobe"] >= 1
    # codes: 16 bytes a vector instead of 256
    assert len(faiss.serialize_index(big.index_)) < len(faiss.serialize_index(small.index_)) / 3


def test_recall_against_exact_and_tuned_nprobe():
    both, both_labels = _low_rank(8300)
    x, labels, q = both[:8000], both_labels[:8000], both[8000:]  # q: queries never indexed
    index = VectorIndex("ivfpq", recall_target=0.9).build(x, _items(8000, labels))
    assert index.meta["tuned_recall@10"] >= 0.9, index.meta["nprobe_sweep"]
    sweep = index.meta["nprobe_sweep"]
    assert sweep[-1]["nprobe"] == index.meta["nprobe"]  # the smallest that met the target
    assert all(s["recall"] < 0.9 for s in sweep[:-1])
    _, rows = index.search(q, 10)
    assert _recall(rows, x, q) >= 0.85
    # without the exact re-ranking the codes alone find fewer of the true neighbours
    _, coded = index.index_.search(q, 10)
    assert _recall(coded, x, q) < _recall(rows, x, q)


def test_sharded_parallel_fill_equals_one_by_one():
    x, _ = _low_rank(5000)
    trained = compressed.train(x[:3000], len(x), m=16, nlist=32)
    one = compressed.fill(faiss.clone_index(trained), np.array_split(x, 7))
    topk = compressed.TopK(x[:50])
    sharded = compressed.fill(
        faiss.clone_index(trained), np.array_split(x, 7), workers=3, on_chunk=topk.update
    )
    assert sharded.ntotal == one.ntotal == len(x)
    for index in (one, sharded):
        compressed.ivf_of(index).nprobe = 8
    s1, r1 = one.search(x[:100], 10)
    s2, r2 = sharded.search(x[:100], 10)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)
    # the running top-k over chunks is the exact top-k
    exact = np.argsort(-(x[:50] @ x.T), axis=1, kind="stable")[:, :10]
    assert compressed.recall_at(topk.rows, exact) == 1.0
    assert topk.seen == len(x)


def test_build_chunks_never_needs_all_vectors(tmp_path):
    x, labels = _low_rank(6000)
    chunks = (x[s : s + 700] for s in range(0, 6000, 700))  # a generator, read once
    store = tmp_path / "store.npy"
    index = VectorIndex(pq_m=16, workers=2).build_chunks(
        chunks, 6000, x[::3], _items(6000, labels), store=store
    )
    assert len(index) == 6000 and index.kind_ == "ivfpq"
    on_disk = np.load(store, mmap_mode="r")  # the float16 re-ranking store, filled in order
    np.testing.assert_allclose(on_disk, x, atol=1e-3)
    assert index.meta["tuned_recall@10"] >= 0.95
    with pytest.raises(ValueError, match="expected 7000 vectors"):
        VectorIndex(pq_m=16).build_chunks(iter([x]), 7000, x[::3])


def test_save_load_round_trip_and_filters(tmp_path):
    x, labels = _low_rank(6000)
    index = VectorIndex("ivfpq", pq_m=16).build(x, _items(6000, labels))
    s0, r0 = index.search(x[:30], 10)
    loaded = VectorIndex.load(index.save(tmp_path / "idx"))
    assert loaded.kind_ == "ivfpq" and len(loaded) == 6000
    assert isinstance(loaded.store_, np.memmap)  # re-ranking reads only the candidates' rows
    assert compressed.ivf_of(loaded.index_).nprobe == index.meta["nprobe"]
    s1, r1 = loaded.search(x[:30], 10)
    # the saved store is float16: near-ties may swap places, scores move by its rounding
    assert (r0 == r1).mean() > 0.97
    assert all(len(set(a) & set(b)) >= 9 for a, b in zip(r0, r1))
    np.testing.assert_allclose(s0, s1, atol=2e-3)
    # attribute filter through the IVF under the OPQ transform, k results, all matching
    _, rows = loaded.search(x[:20], 10, where={"kind": "c3"})
    assert (rows >= 0).all()
    assert set(loaded.items_["kind"].iloc[rows.ravel()]) == {"c3"}
    np.testing.assert_allclose(loaded.vectors([0, 1, 2]), x[:3], atol=1e-3)
    # items added later are found, re-ranked with their own vectors
    extra, extra_labels = _low_rank(20, seed=9)
    loaded.add(extra, _items(20, extra_labels).assign(id=[f"new{j}" for j in range(20)]))
    scores, rows = loaded.search(extra[:5], 1)
    np.testing.assert_array_equal(rows[:, 0], 6000 + np.arange(5))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=2e-3)


def test_wide_vectors_are_projected_to_at_most_256_dims():
    rng = np.random.default_rng(0)
    x, labels = _low_rank(3000, dim=48)
    wide = np.concatenate([x, 0.001 * rng.standard_normal((3000, 272)).astype(np.float32)], 1)
    wide /= np.linalg.norm(wide, axis=1, keepdims=True)
    assert compressed.factory_string(10**6, 320) == "PCAR256,OPQ32_256,IVF4000_HNSW32,PQ32np"
    assert compressed.factory_string(10**5, 64, 16) == "OPQ16_64,IVF1264_HNSW32,PQ16np"
    assert compressed.factory_string(10**4, 64, 16) == "OPQ16_64,IVF256,PQ16np"
    index = VectorIndex("ivfpq", pq_m=16, recall_target=0.8).build(wide, _items(3000, labels))
    assert index.index_.d == 320  # queries stay in the caller's space
    assert index.meta["factory"].startswith("PCAR256,OPQ16_256,")
    assert index.meta["tuned_recall@10"] >= 0.8


def test_bad_settings_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="m=32.*divides 40"):
        compressed.factory_string(10**6, 40)
    x = np.eye(4, 64, dtype=np.float32)
    with pytest.raises(ValueError, match=r"recall_target=1.5: use a fraction in \(0, 1\]"):
        VectorIndex("ivfpq", recall_target=1.5).build(x)
    with pytest.raises(ValueError, match="k_factor=0: use a whole number >= 1"):
        VectorIndex("ivfpq", k_factor=0).build(x)


def test_candidates_grow_when_more_lists_no_longer_help(tmp_path):
    """Coarse codes (4 bytes a vector) cap the recall whatever nprobe is: tuning then takes
    more candidates per result to re-rank, reaches the target, and the saved index searches
    with what it chose."""
    x, labels = _low_rank(6000, seed=3)
    index = VectorIndex("ivfpq", pq_m=4, k_factor=1, recall_target=0.95).build(
        x, _items(6000, labels)
    )
    sweep = index.meta["nprobe_sweep"]
    assert sweep[0]["k_factor"] == 1 and sweep[0]["recall"] < 0.95
    assert index.meta["k_factor"] > 1 and index.meta["tuned_recall@10"] >= 0.95
    q = x[:200]
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx")
    assert loaded.k_factor_ == index.meta["k_factor"]
    rows = {name: ix.search(q, 10)[1] for name, ix in [("built", index), ("loaded", loaded)]}
    # the same neighbours (ties between equal scores may swap places)
    np.testing.assert_array_equal(np.sort(rows["loaded"], 1), np.sort(rows["built"], 1))
    assert _recall(rows["loaded"], x, q) >= 0.9
