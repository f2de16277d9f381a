"""Extra views of training photos (multitag.data.views): the transforms, their cache keys and
training on them."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from multitag.data.views import (
    AUTO_VIEWS,
    GREY_LEVELS,
    VIEWS,
    apply_view,
    check_views,
    resolve_views,
    view_id,
)
from multitag.vision import backbones
from multitag.vision.extraction import FeatureCache, extract_features
from multitag.vision.features import Encoder, ImageDataset, Preprocessing
from tests.conftest import requires_fashion


def _photo(width: int = 60, height: int = 80) -> np.ndarray:
    """An asymmetric, textured 'product' on white: a shoe-like shape pointing left."""
    rng = np.random.default_rng(1)
    a = np.full((height, width, 3), 255, np.uint8)
    a[height // 2 :, width // 8 : width * 3 // 4] = (150, 40, 40)  # sole to the left
    a[height // 4 : height // 2, width // 2 : width * 3 // 4] = (60, 60, 160)  # heel right
    a[height // 2 :, width // 8 : width * 3 // 4] += rng.integers(0, 40, (1, 1, 3), np.uint8)
    return a


def test_flip_is_the_mirror_image():
    a = _photo()
    out = apply_view(a, "flip")
    np.testing.assert_array_equal(out, a[:, ::-1])
    assert not np.array_equal(out, a)  # the photo is not symmetric: the view changes it
    np.testing.assert_array_equal(apply_view(out, "flip"), a)


def test_jpeg_view_recompresses_at_quality_60():
    a = _photo()
    out = apply_view(a, "jpeg60")
    for quality, same in ((60, True), (95, False)):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality)
        expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        assert np.array_equal(out, expected) is same
    assert out.shape == a.shape and out.dtype == np.uint8


def test_grey_view_repaints_the_background_only_and_is_seeded():
    a = _photo()
    out = apply_view(a, "grey", seed=3)
    background = (a == 255).all(-1)
    level = int(out[background][0, 0])
    assert GREY_LEVELS[0] <= level <= GREY_LEVELS[1]
    assert (out[background] == level).all()  # one uniform grey
    np.testing.assert_array_equal(out[~background], a[~background])  # the product is kept
    np.testing.assert_array_equal(apply_view(a, "grey", seed=3), out)  # deterministic
    levels = {int(apply_view(a, "grey", seed=s)[0, 0, 0]) for s in range(8)}
    assert len(levels) > 1  # the seed chooses the grey


def test_down_view_halves_the_photo():
    out = apply_view(_photo(60, 80), "down2")
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8


def test_view_names_are_checked():
    assert check_views(None) == [] and check_views(["flip", "grey"]) == ["flip", "grey"]
    with pytest.raises(ValueError, match="unknown view 'mirror'.*flip"):
        check_views(["mirror"])
    with pytest.raises(ValueError, match="'auto', 'none' or a list of view names"):
        check_views("flip")
    with pytest.raises(ValueError, match="each view once"):
        check_views(["flip", "flip"])
    with pytest.raises(ValueError, match="unknown view"):
        apply_view(_photo(), "sepia")


def test_auto_views_are_flip_and_jpeg60_for_frozen_backbones_only():
    assert AUTO_VIEWS == ("flip", "jpeg60") and set(AUTO_VIEWS) <= set(VIEWS)
    assert resolve_views("auto", frozen=True) == ["flip", "jpeg60"]
    assert resolve_views("auto", frozen=False) == []  # fine-tuning changes the features
    assert resolve_views("none", frozen=True) == [] and resolve_views(None, frozen=True) == []
    assert resolve_views(["grey"], frozen=True) == ["grey"]
    with pytest.raises(ValueError, match="'auto', 'none' or a list"):
        resolve_views("flip,grey", frozen=True)


def test_dataset_applies_the_view(tmp_path):
    path = tmp_path / "shoe.png"
    Image.fromarray(_photo()).save(path)
    _, plain, _ = ImageDataset([path], 64)[0]
    _, flipped, _ = ImageDataset([path], 64, view="flip")[0]
    np.testing.assert_array_equal(flipped, plain[:, ::-1])


@pytest.fixture(scope="module")
def encoder():
    model = backbones.create_model("lite0")
    return Encoder(model, Preprocessing.for_model(model, 64))


def test_each_view_has_its_own_cache_key(encoder, tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.roll(_photo(), 5 * i, axis=1)).save(paths[-1])
    ident, cache = {"test": "views"}, tmp_path / "cache"
    kw = {"cache_dir": cache, "encoder_id": ident, "progress": False, "precision": "fp32"}
    plain = extract_features(encoder, paths, **kw).features
    flipped = extract_features(encoder, paths, view="flip", **kw).features
    again = extract_features(encoder, paths, view="flip", **kw).features
    assert not np.allclose(plain, flipped, atol=1e-2)  # the view reached the network
    np.testing.assert_array_equal(again, flipped)  # and its features come from its cache
    keys = {json.loads((d / "encoder.json").read_text()).get("view") for d in cache.iterdir()}
    assert keys == {None, view_id("flip", 0)}  # the photos as they are keep their old key
    assert view_id("flip", 0) != view_id("flip", 1) != view_id("grey", 1)
    assert len(FeatureCache(cache, {**ident, "view": view_id("flip", 0)})) == 3
    assert set(VIEWS) == {"flip", "jpeg60", "grey", "down2"}


def test_view_fraction_gives_a_seeded_share_of_training_rows_the_views(encoder, tmp_path):
    """With view_fraction 0.5 half the training rows (a seeded sample, never a validation
    row) get one extra row each: the view's features and the photo's labels."""
    from types import SimpleNamespace

    from multitag import MultiTaskTagger
    from multitag.tagger.config import FeatureConfig, RuntimeConfig
    from multitag.tagger.estimator import FitData
    from multitag.vision.extraction import FeatureResult

    paths = []
    for i in range(8):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.roll(_photo(), 4 * i, axis=1)).save(paths[-1])
    kw = dict(progress=False, precision="fp32", engine="torch")
    plain = extract_features(encoder, paths, **kw).features
    flipped = extract_features(encoder, paths, view="flip", **kw).features

    def added(fraction: float) -> tuple[np.ndarray, FitData, MultiTaskTagger]:
        tagger = MultiTaskTagger(
            ["gender"],
            features=FeatureConfig(views=["flip"], view_fraction=fraction),
            runtime=RuntimeConfig(cache_dir=None, progress=False, engine="torch"),
        )
        tagger.set_params(training__precision="fp32")
        tagger.net_ = SimpleNamespace(encoder=encoder)
        data = FitData(
            pd.DataFrame({"path": paths}),
            FeatureResult(plain.copy(), {}),
            {"gender": np.arange(8)},
            np.asarray([""] * 8, dtype=object),
            np.arange(6),
            np.arange(6, 8),
        )
        tagger._add_views(data)
        return data.targets["gender"][8:], data, tagger

    sources, data, tagger = added(0.5)
    assert len(sources) == 3 and set(sources) <= set(range(6))  # training rows only
    np.testing.assert_array_equal(data.train_rows, [0, 1, 2, 3, 4, 5, 8, 9, 10])
    np.testing.assert_array_equal(data.val_rows, [6, 7])
    np.testing.assert_allclose(data.features.features[8:], flipped[sources], atol=1e-5)
    assert tagger.views_ == {"views": ["flip"], "seed": 0, "rows": {"flip": 3}, "fraction": 0.5}
    np.testing.assert_array_equal(added(0.5)[0], sources)  # seeded: the same rows again
    np.testing.assert_array_equal(added(1.0)[0], np.arange(6))  # every training row
    assert "fraction" not in added(1.0)[2].views_


def test_views_need_frozen_features():
    from multitag import MultiTaskTagger
    from multitag.tagger.config import FeatureConfig, TrainConfig

    with pytest.raises(ValueError, match="freeze='all' or views=None"):
        MultiTaskTagger(
            ["gender"],
            features=FeatureConfig(views=["flip"]),
            training=TrainConfig(freeze="blocks.4"),
        ).fit(None)
    with pytest.raises(ValueError, match="unknown view"):
        MultiTaskTagger(["gender"], features=FeatureConfig(views=["sepia"])).fit(None)
    # the default: views where the features are cached, none (no error) while fine-tuning
    tagger = MultiTaskTagger(["gender"], training=TrainConfig(freeze="blocks.4"))
    assert tagger.settings("features").views == "auto"
    tagger._check_params()


def test_mirror_index_maps_features_to_the_mirror_image(encoder, tmp_path):
    import torch

    a = np.asarray(Image.fromarray(_photo()).resize((64, 64)))
    images = torch.from_numpy(np.stack([a, a[:, ::-1].copy()])).permute(0, 3, 1, 2)
    with torch.no_grad():
        feats = encoder.eval()(images)[0].numpy()
    index = encoder.mirror_index()
    assert sorted(index) == list(range(encoder.out_dim))  # a permutation of the features
    plain, mirrored = feats
    assert not np.allclose(plain, mirrored, atol=1e-3)
    start = (
        encoder.out_dim
        - encoder.colour_dim
        + sum(w for n, w in list(encoder.colour_parts().items())[:2])
    )
    layout = slice(start, start + encoder.colour_parts()["layout"])
    # the colour layout is pixel statistics: exactly the mirror image's, cell for cell
    np.testing.assert_allclose(plain[index][layout], mirrored[layout], atol=1e-4)
    # the network's grid cells: nearly the mirror image's (its filters are not exactly
    # mirror-symmetric), much closer than the unmapped cells
    moved = index != np.arange(len(index))
    mapped, unmapped = (np.abs(f[moved] - mirrored[moved]).mean() for f in (plain[index], plain))
    assert mapped < 0.85 * unmapped  # an identity or wrong index gives about 1 or more


def test_flip_invariant_heads_tag_a_photo_and_its_mirror_alike():
    import torch

    from multitag.data.tasks import Task
    from multitag.multitask.heads import MultiTaskHeads

    rng = np.random.default_rng(0)
    pairs = rng.permutation(10).reshape(5, 2)  # a mirror swaps features in pairs
    mirror = np.arange(10)
    mirror[pairs[:, 0]], mirror[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
    tasks = [Task("gender", "multiclass", ["Men", "Women", "Unisex"])]
    x = torch.as_tensor(rng.normal(size=(6, 10)), dtype=torch.float32)
    heads = MultiTaskHeads(10, tasks, "linear", input_dropout=0.0, mirror=mirror).eval()
    heads.fit_scaler(x.numpy())
    torch.testing.assert_close(heads(x)["gender"], heads(x[:, mirror])["gender"])
    plain = MultiTaskHeads(10, tasks, "linear", input_dropout=0.0).eval()
    assert not torch.allclose(plain(x)["gender"], plain(x[:, mirror])["gender"])
    assert "mirror" not in plain.state_dict()  # weight files saved before still load


@pytest.mark.slow
@requires_fashion
def test_training_on_views_of_real_photos(fashion_frame, cache_dir, trained_tagger, tmp_path):
    """Heads trained with flip-invariance and a mirrored view tag real photos and their mirror
    images alike (more alike than the plain model does); config.json records the views."""
    from sklearn.base import clone

    from multitag import MultiTaskTagger

    tagger = clone(trained_tagger).set_params(
        features__views=["flip"], features__flip_invariant=True, runtime__progress=False
    )
    tagger.fit(fashion_frame)
    n_train = len(tagger.split_["train_ids"])
    assert n_train == len(trained_tagger.split_["train_ids"])  # the photos, not their views
    assert tagger.views_ == {"views": ["flip"], "seed": 0, "rows": {"flip": n_train}}
    tagger.save(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["training"]["views"]["views"] == ["flip"]
    assert config["heads"]["flip_invariant"] is True
    loaded = MultiTaskTagger.load(tmp_path / "model")

    val = fashion_frame[fashion_frame["id"].isin(set(tagger.split_["val_ids"]))].head(40)
    mirrored = []
    for path in val["path"]:
        mirrored.append(tmp_path / f"m-{len(mirrored)}.png")
        Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored[-1])
    photos = val["path"].tolist()
    ours = loaded.predict_proba(photos)["proba"]
    np.testing.assert_allclose(ours["gender"], tagger.predict_proba(photos)["proba"]["gender"])

    def mirror_gap(model) -> float:
        a, b = model.predict_proba(photos)["proba"], model.predict_proba(mirrored)["proba"]
        return float(np.mean([np.abs(a[t] - b[t]).sum(1).mean() for t in a]))

    plain = clone(trained_tagger).set_params(features__views="none", runtime__progress=False)
    plain.fit(fashion_frame)  # the default trains on views too: the reference has none
    assert plain.views_ is None
    assert mirror_gap(loaded) < 0.7 * mirror_gap(plain)
    assert trained_tagger.views_["views"] == ["flip", "jpeg60"]  # views="auto", the default
    assert mirror_gap(trained_tagger) < mirror_gap(plain)


def test_cli_views_option_reads_auto_none_or_names():
    from multitag.cli.common import views_setting

    assert views_setting("auto") == "auto" and views_setting(" none ") == "none"
    assert views_setting("flip, grey") == ["flip", "grey"]
