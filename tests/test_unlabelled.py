"""A catalogue from a folder of unlabelled photos and a backbone name (no model, no labels):
ImageNet tags, topics, two maps, the API and uploads, incremental growth, a tagger added later.

Generated photos that are not fashion (shapes and stripes), the packaged Lite0 weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

KINDS = ("disc", "stripes", "triangle", "checks")
# t-SNE maps: UMAP's first fit compiles its numba kernels (about a minute of CPU), which the
# fast tier leaves to the slow test below and to tests/test_catalog.py
BUILD = dict(n_topics=4, n_clusters=4, layout="tsne", chunk_size=16, progress=False)


def make_photos(folder: Path, start: int, n: int) -> list[Path]:
    """``n`` generated photos of four kinds (the kind is ``i % 4``), random colours."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        back, fore = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
        img = Image.new("RGB", (96, 96), back)
        d = ImageDraw.Draw(img)
        kind = KINDS[i % 4]
        if kind == "disc":
            d.ellipse([20, 20, 76, 76], fill=fore)
        elif kind == "stripes":
            for x in range(0, 96, 12):
                d.rectangle([x, 0, x + 5, 96], fill=fore)
        elif kind == "triangle":
            d.polygon([(48, 10), (86, 86), (10, 86)], fill=fore)
        else:
            for y in range(0, 96, 16):
                for x in range(0, 96, 16):
                    if (x // 16 + y // 16) % 2:
                        d.rectangle([x, y, x + 15, y + 15], fill=fore)
        out.append(folder / f"{kind}_{i:03d}.jpg")
        img.save(out[-1])
    return out


@pytest.fixture(scope="module", autouse=True)
def torch_engine():
    """The PyTorch engine: converting Lite0 to OpenVINO costs more than these few photos take
    to encode (tests/test_engines.py tests the conversion)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MULTITAG_ENGINE", "torch")
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A catalogue built by the CLI from a folder (no CSV) and a backbone name."""
    from typer.testing import CliRunner

    from multitag.cli.main import app

    root = tmp_path_factory.mktemp("unlabelled")
    make_photos(root / "photos", 0, 40)
    (root / "photos" / "broken.jpg").write_bytes(b"not a photo")
    args = ["catalog", "build", "tf_efficientnet_lite0", str(root / "photos"), "--out"]
    args += [str(root / "cat"), "--topics", "4", "--clusters", "4", "--chunk-size", "16"]
    args += ["--layout", "tsne"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "serve" in result.output and "--model" not in result.output
    return root


def test_build_from_a_backbone_name(built):
    from multitag.catalog import load_catalog
    from multitag.tagger.batch import imagenet_labels

    cat = load_catalog(built / "cat")
    meta = cat.meta
    assert meta["model_dir"] is None and meta["tasks"] == [] and meta["tag_columns"] == []
    assert meta["source"]["backbone"] == "tf_efficientnet_lite0"
    assert meta["topics"]["on"] == "imagenet" and meta["layout"]["maps"] == ["embedding", "topics"]
    assert meta["n_items"] == 40 and meta["n_rejects"] == 1
    items = cat.items
    # every photo: its 5 most probable ImageNet classes, best first, as filterable tags
    labels = set(imagenet_labels())
    for names, probs, tags in zip(items["imagenet"], items["imagenet_prob"], items["tags"]):
        assert len(names) == 5 and set(names) <= labels
        assert list(probs) == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert list(tags) == [f"imagenet:{n}" for n in names]
    # the stored ImageNet probabilities are the backbone's classifier on the features
    imagenet = np.load(cat.data_dir / "imagenet.npy")
    assert imagenet.shape == (40, 1000)
    np.testing.assert_allclose(imagenet.astype(np.float32).sum(1), 1, atol=2e-3)
    # topics named by ImageNet tags that the topic's photos carry
    topics = meta["topics"]["topics"]
    assert len(topics) == 4 and sum(t["size"] for t in topics) == 40
    for t in topics:
        members = items[items["topic"] == t["id"]]
        carried = {n for names in members["imagenet"] for n in names}
        assert t["top_tags"] and t["top_tags"][0]["tag"].split(":", 1)[1] in carried
    # two maps, both in [-1, 1] and spread out; clusters; an index over the features
    for x, y in (("x", "y"), ("x_topics", "y_topics")):
        xy = items[[x, y]].to_numpy()
        assert np.abs(xy).max() <= 1.0001 and xy.std(0).min() > 0.05
    assert not np.allclose(items["x"], items["x_topics"])
    assert items["cluster"].nunique() == 4
    index = cat.load_index()
    _, nn = index.search(np.ascontiguousarray(cat.embeddings[:5], np.float32), 1)
    assert (nn[:, 0] == np.arange(5)).all()
    # the map's neighbourhoods follow what the photos show (a shape kind: a label never given)
    kind = items["id"].str.split("_").str[0].to_numpy()
    d = np.linalg.norm(cat.embeddings[:, None] - cat.embeddings[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert (kind[d.argmin(1)] == kind).mean() > 0.5  # chance: 0.25


@pytest.mark.slow
def test_umap_maps_of_a_backbone_catalogue(tmp_path):
    """The default layout (UMAP) draws both maps of a catalogue built from a backbone name."""
    from multitag.catalog import build_catalog, load_catalog

    make_photos(tmp_path / "photos", 0, 24)
    params = {**BUILD, "layout": "umap", "umap_epochs": 40}
    meta = build_catalog("lite0", [tmp_path / "photos"], tmp_path / "cat", **params)
    assert meta["layout"]["method"] == "umap" and meta["layout"]["maps"] == ["embedding", "topics"]
    items = load_catalog(tmp_path / "cat").items
    for x, y in (("x", "y"), ("x_topics", "y_topics")):
        xy = items[[x, y]].to_numpy()
        assert np.abs(xy).max() <= 1.0001 and xy.std(0).min() > 0.05


def test_api_and_upload(built):
    from fastapi.testclient import TestClient

    from multitag.serve.app import create_app

    photo = make_photos(built / "uploads", 100, 1)[0]
    with TestClient(create_app(built / "cat"), base_url="http://localhost") as client:
        page = client.get("/items", params={"page_size": 100}).json()
        assert page["total"] == 40
        first = page["items"][0]["id"]
        detail = client.get(f"/items/{first}").json()
        assert len(detail["imagenet"]) == 5 and len(detail["imagenet_prob"]) == 5
        assert detail["tags"] == {} and detail["topic_name"]
        topics = client.get("/topics").json()
        assert len(topics) == 4 and all(t["name"] for t in topics)
        data = client.get("/map").json()
        assert list(data["layouts"]) == ["embedding", "topics"]
        assert data["layouts"]["embedding"]["x"] == data["x"]
        assert len(data["layouts"]["topics"]["x"]) == 40
        assert {"topic", "cluster", "imagenet"} <= set(data["colour_by"])
        tag = data["tags"][0]
        assert tag.startswith("imagenet:")
        match = client.get("/match", params={"tag": tag}).json()
        assert match["total"] >= 1
        by_tag = client.get("/items", params={"tag": tag}).json()
        assert by_tag["total"] == match["total"]
        sim = client.post("/similar", data={"id": first, "k": 5}).json()
        assert len(sim["items"]) == 5 and first not in [i["id"] for i in sim["items"]]
        # an upload: ImageNet tags, its place on the map and its neighbours
        with open(photo, "rb") as fh:
            up = client.post("/similar", files={"file": ("mine.jpg", fh, "image/jpeg")}).json()
        assert len(up["query_tags"]["imagenet"]) == 5 and up["query_tags"]["tags"] == {}
        assert len(up["items"]) == 10 and len(up["query_xy"]) == 2
        with open(photo, "rb") as fh:
            tagged = client.post("/tag", files={"file": ("mine.jpg", fh, "image/jpeg")}).json()
        assert [t["label"] for t in tagged["imagenet"]] == [
            t["label"] for t in up["query_tags"]["imagenet"]
        ]
        with open(photo, "rb") as fh:
            rec = client.post("/recommend", files={"files": ("a.jpg", fh, "image/jpeg")}).json()
        assert len(rec["items"]) == 12
        assert all(a.startswith("imagenet:") for a in rec["profile_attributes"])
        assert any(i["reason"]["shared_attributes"] for i in rec["items"])


def test_tag_command_with_a_backbone_name(built, tmp_path):
    from typer.testing import CliRunner

    from multitag.cli.main import app

    out = tmp_path / "tags.jsonl"
    result = CliRunner().invoke(
        app, ["tag", "tf_efficientnet_lite0", str(built / "photos"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = pd.read_json(out, lines=True)
    assert len(rows) == 40 and all(len(t) == 5 for t in rows["imagenet_top5"])


def test_another_backbone_for_a_built_catalogue_is_refused(built):
    from multitag.catalog import build_catalog

    with pytest.raises(ValueError, match="built from tf_efficientnet_lite0, not lite1"):
        build_catalog("lite1", [built / "photos"], built / "cat", **BUILD)


def test_bad_model_argument_is_one_clear_line(tmp_path):
    from typer.testing import CliRunner

    from multitag.cli.main import app

    make_photos(tmp_path / "p", 0, 4)
    args = ["catalog", "build", "no_such_backbone", str(tmp_path / "p"), "--out"]
    result = CliRunner().invoke(app, [*args, str(tmp_path / "c")])
    assert result.exit_code != 0
    assert "neither a model directory nor a backbone name" in result.output
    assert "Traceback" not in result.output


def test_incremental_add_then_a_tagger_later(built, tmp_path, monkeypatch):
    import shutil

    from multitag.catalog import build_catalog, load_catalog
    from multitag.catalog.backbone_tagger import BackboneTagger
    from multitag.catalog.build import add_tagger
    from multitag.tagger.config import FeatureConfig, LabelConfig, RuntimeConfig, TrainConfig
    from multitag.tagger.estimator import MultiTaskTagger

    cat_dir = tmp_path / "cat"
    shutil.copytree(built / "cat", cat_dir)
    before = load_catalog(cat_dir)
    # incremental: only the new photos go through the backbone; old items keep their places
    new = make_photos(tmp_path / "more", 40, 8)
    meta = build_catalog("lite0", [built / "photos", *new], cat_dir, **BUILD)  # an alias
    assert meta["n_items"] == 48 and meta["last_build"]["new_items"] == 8  # not the broken one
    after = load_catalog(cat_dir)
    pd.testing.assert_frame_equal(after.items.iloc[:40], before.items)
    added = after.items.iloc[40:]
    assert added[["x_topics", "y_topics"]].notna().all().all()
    assert all(len(v) == 5 for v in added["imagenet"])

    # a tagger trained later on the same frozen encoder (labels: the shape kind)
    photos = sorted((built / "photos").glob("*_*.jpg"))
    frame = pd.DataFrame({"id": [p.stem for p in photos], "path": [str(p) for p in photos]}).assign(
        shape=lambda f: f["id"].str.split("_").str[0]
    )
    tagger = MultiTaskTagger(
        ["shape"],
        features=FeatureConfig(framing="none", detail="none"),
        labels=LabelConfig(min_count=2),
        training=TrainConfig(epochs=3),
        runtime=RuntimeConfig(progress=False),
    ).fit(frame)
    model = tagger.save(tmp_path / "model")
    # nothing is encoded again: the tags come from the stored features
    monkeypatch.setattr(BackboneTagger, "predict_proba", _refuse)
    monkeypatch.setattr(MultiTaskTagger, "predict_proba", _refuse)
    meta = add_tagger(cat_dir, model, progress=False)
    assert [t["name"] for t in meta["tasks"]] == ["shape"] and meta["model_dir"] == str(model)
    tagged = load_catalog(cat_dir)
    assert tagged.tagprobs.shape == (48, 4)
    np.testing.assert_allclose(tagged.tagprobs.sum(1), 1, atol=1e-3)
    expected = tagger.predict_proba_features(np.load(after.data_dir / "features.npy"))["shape"]
    np.testing.assert_allclose(tagged.tagprobs, expected, atol=1e-5)
    for col in ("x", "y", "x_topics", "y_topics", "topic", "cluster"):
        np.testing.assert_array_equal(tagged.items[col], after.items[col])
    assert json.loads((cat_dir / "catalog.json").read_text())["topics"] == meta["topics"]
    assert all(
        any(t.startswith("shape:") for t in tags) and any(t.startswith("imagenet:") for t in tags)
        for tags in tagged.items["tags"]
    )
    assert (tagged.items["shape"] == tagged.items["id"].str.split("_").str[0]).mean() > 0.5
    monkeypatch.undo()

    # served with its tagger: an upload gets the trained tags and the ImageNet ones
    from fastapi.testclient import TestClient

    from multitag.serve.app import create_app

    photo = make_photos(tmp_path / "up", 200, 1)[0]
    with TestClient(create_app(cat_dir, model), base_url="http://localhost") as client:
        assert client.get("/items", params={"tag": "shape:disc"}).json()["total"] > 0
        with open(photo, "rb") as fh:
            up = client.post("/tag", files={"file": ("mine.jpg", fh, "image/jpeg")}).json()
    assert set(up["tags"]) == {"shape"} and len(up["imagenet"]) == 5


def _refuse(*args, **kwargs):
    raise AssertionError("a photo was encoded again")


@pytest.mark.browser
def test_explorer_in_a_browser(built, tmp_path):
    """The explorer on the unlabelled catalogue in Debian chromium: the map, topics in the
    legend, the switch to the map of topic weights, hover tags, an upload's ImageNet tags."""
    from multitag.bench.catalog import CHROMIUM, CHROMIUM_ARGS
    from multitag.serve.app import create_app
    from multitag.serve.background import BackgroundServer

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing (make browser)")
    playwright = pytest.importorskip("playwright.sync_api")
    photo = make_photos(tmp_path / "up", 300, 1)[0]
    with (
        BackgroundServer(create_app(built / "cat")) as url,
        playwright.sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_function("window.__ready === true", timeout=30_000)
        assert page.evaluate("window.explorer.state.map.ids.length") == 40
        legend = page.locator("#map .legend").text_content()
        topics = [t["name"] for t in json.loads((built / "cat" / "catalog.json").read_text())[
            "topics"]["topics"]]  # fmt: skip
        assert any(name in legend for name in topics)  # coloured by topic, named by tags
        # switch maps: the points move to the map of topic weights
        assert page.locator("#layout-label").is_visible()
        first_x = page.evaluate("window.explorer.state.map.x.slice(0, 5)")
        page.select_option("#layout-by", "topics")
        page.wait_for_function("window.explorer.state.layout === 'topics'", timeout=10_000)
        topics_x = page.evaluate("window.explorer.state.map.x.slice(0, 5)")
        assert topics_x != first_x
        # hover a point: its ImageNet tags with probabilities
        xy = page.evaluate("window.explorer.pointPixel(7)")
        page.mouse.move(xy["x"], xy["y"])
        page.wait_for_function(
            "document.querySelectorAll('#hover-tags li').length > 0", timeout=15_000
        )
        assert "imagenet" in page.locator("#hover-tags").inner_text()
        # back to the first map, upload a photo: ImageNet tags, neighbours, its star
        page.select_option("#layout-by", "embedding")
        page.set_input_files("#upload", str(photo))
        page.wait_for_selector("#similar-list .similar-item", timeout=30_000)
        assert "imagenet" in page.locator("#upload-tags").inner_text()
        assert "%" in page.locator("#upload-tags").inner_text()
        assert page.evaluate("window.explorer.state.query.length") == 2
        assert page.locator("#similar-list .similar-item").count() == 12
        assert errors == []
        browser.close()


def test_an_embedders_vector_from_the_same_pass(built, tmp_path):
    """``--embedder DIR``: the embedder's encoder and layer give the embedding; its backbone
    must be the one named."""
    from multitag.catalog import build_catalog, load_catalog
    from multitag.embedding import Embedder

    photos = sorted((built / "photos").glob("*_*.jpg"))[:24]
    frame = pd.DataFrame({"path": [str(p) for p in photos]}).assign(
        shape=[p.stem.split("_")[0] for p in photos]
    )
    emb = Embedder(
        ["shape"], dim=16, framing="none", detail="none", epochs=2, per_class=2, progress=False
    ).fit(frame)
    emb_dir = emb.save(tmp_path / "embedder")
    with pytest.raises(ValueError, match="embeds tf_efficientnet_lite0 features, not"):
        build_catalog("lite1", photos, tmp_path / "wrong", embedder=emb_dir, **BUILD)
    meta = build_catalog("lite0", photos, tmp_path / "cat", embedder=emb_dir, **BUILD)
    assert meta["embedding"] == {"source": "embedder", "dim": 16}
    assert meta["source"]["embedder"] == str(Path(emb_dir).resolve())
    cat = load_catalog(tmp_path / "cat")
    expected = emb.transform_features(np.load(cat.data_dir / "features.npy"))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(cat.embeddings, expected, atol=1e-5)
    assert all(len(v) == 5 for v in cat.items["imagenet"])
