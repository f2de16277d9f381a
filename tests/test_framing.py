"""Product framing (multitag.data.framing) on real catalogue photos, and a tagger trained
with it: the same product framed differently reaches the network as the same pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from multitag.data.framing import (
    Framing,
    background_colour,
    measure_framing,
    place_on_canvas,
    product_box,
    reframe,
)
from tests.conftest import requires_fashion


def _canvas(a: np.ndarray, width: int, height: int, colour=(255, 255, 255)) -> np.ndarray:
    return place_on_canvas(a, width, height, colour)


def _photos(fashion_frame, n: int = 12) -> list[np.ndarray]:
    paths = fashion_frame["path"].iloc[:: max(1, len(fashion_frame) // n)][:n]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


@requires_fashion
def test_reframe_is_the_same_for_every_canvas_and_crop(fashion_frame):
    """A real product on a square, a landscape or a wide canvas, or cropped tight, gives the
    very pixels of its catalogue photo reframed; the product fills `fill` of the canvas."""
    framing = Framing()
    for photo in _photos(fashion_frame):
        expected = reframe(photo, framing)
        h, w = expected.shape[:2]
        assert abs(w / h - framing.aspect) < 0.03
        top, bottom, left, right = product_box(expected)
        assert max((bottom - top) / h, (right - left) / w) == pytest.approx(framing.fill, abs=0.03)
        top, bottom, left, right = product_box(photo)
        studio = tuple(background_colour(photo))  # the same studio background around it
        variants = {
            "square": _canvas(photo, 80, 80, studio),
            "landscape": _canvas(photo, 107, 80, studio),
            "wide margins": _canvas(photo, 120, 160, studio),
        }
        for name, variant in variants.items():
            np.testing.assert_array_equal(reframe(variant, framing), expected, err_msg=name)
        tight = reframe(photo[top:bottom, left:right], framing)  # border = product edges
        assert tight.shape == expected.shape
        assert np.abs(tight.astype(int) - expected).mean() < 8


@requires_fashion
def test_reframe_pads_with_the_background_colour(fashion_frame):
    """On a grey studio background the padding is that grey, not white."""
    photo = _photos(fashion_frame, 1)[0]
    grey = (180, 180, 180)
    top, bottom, left, right = product_box(photo)
    out = reframe(_canvas(photo[top:bottom, left:right], 150, 100, grey), Framing())
    assert tuple(out[0, 0]) == grey and tuple(out[-1, -1]) == grey


def test_uniform_image_is_only_padded_to_the_aspect():
    blank = np.full((50, 100, 3), 240, np.uint8)
    out = reframe(blank, Framing(aspect=0.75))
    assert out.shape == (133, 100, 3) and (out == 240).all()


@requires_fashion
def test_measure_framing_reads_the_catalogue(fashion_frame):
    framing = measure_framing(_photos(fashion_frame, 60))
    assert framing.aspect == 0.75  # every catalogue photo is 60 x 80
    assert 0.6 <= framing.fill <= 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [({"aspect": 0}, "aspect"), ({"fill": 1.5}, "fill"), ({"threshold": 0}, "threshold")],
)
def test_bad_framing_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Framing(**kwargs)


def test_bad_framing_option_is_refused(fashion_frame):
    from multitag import MultiTaskTagger
    from multitag.tagger.config import FeatureConfig, RuntimeConfig

    quiet = RuntimeConfig(progress=False)
    with pytest.raises(ValueError, match="framing must be 'none', 'auto'"):
        tagger = MultiTaskTagger(["gender"], features=FeatureConfig(framing="tight"), runtime=quiet)
        tagger.fit(fashion_frame)
    with pytest.raises(ValueError, match="unknown fields"):
        framing = FeatureConfig(framing={"ratio": 1})
        MultiTaskTagger(["gender"], features=framing, runtime=quiet).fit(fashion_frame)


@requires_fashion
def test_tagger_with_framing_tags_any_canvas_alike(fashion_frame, tmp_path, cache_dir):
    """Trained with framing='auto', the tagger saves the measured framing, reloads it, and
    gives the same probabilities for a photo and for that photo on a square canvas (a
    squash-only tagger does not)."""
    from multitag import MultiTaskTagger
    from multitag.tagger.config import from_flat

    tasks = ["gender", "articleType"]
    common = dict(image_size=64, epochs=3, cache_dir=cache_dir, progress=False, min_count=3)
    framed = MultiTaskTagger(tasks, **from_flat(common)).fit(fashion_frame)  # framing="auto"
    squash = MultiTaskTagger(tasks, **from_flat(dict(common, framing="none"))).fit(fashion_frame)
    measured = framed.net_.encoder.preprocessing.framing
    assert measured is not None and measured.aspect == 0.75
    assert squash.net_.encoder.preprocessing.framing is None

    paths = []
    for i, photo in enumerate(_photos(fashion_frame, 6)):
        for name, image in (("orig", photo), ("square", _canvas(photo, 80, 80))):
            paths.append(tmp_path / f"{i}-{name}.png")
            Image.fromarray(image).save(paths[-1])

    model_dir = framed.save(tmp_path / "model")
    config = json.loads((model_dir / "config.json").read_text())
    assert config["preprocessing"]["framing"] == measured.to_dict()
    reloaded = MultiTaskTagger.load(model_dir)
    for tagger in (framed, reloaded):
        proba = tagger.predict_proba(paths)["proba"]["articleType"]
        np.testing.assert_allclose(proba[0::2], proba[1::2], atol=1e-5)
    np.testing.assert_array_equal(
        reloaded.predict_proba(paths)["proba"]["gender"],
        framed.predict_proba(paths)["proba"]["gender"],
    )
    proba = squash.predict_proba(paths)["proba"]["articleType"]
    assert np.abs(proba[0::2] - proba[1::2]).max() > 1e-3


@requires_fashion
def test_embedder_beside_a_framed_tagger_uses_its_framing(fashion_frame, tmp_path, monkeypatch):
    """`embed train --out DIR` next to a framed tagger takes the tagger's framing and input
    size (no options), so one encoder pass serves both; the saved embedder reloads with that
    framing and embeds a photo and the same photo on a square canvas alike."""
    from typer.testing import CliRunner

    from multitag import MultiTaskTagger
    from multitag.cli.main import app
    from multitag.embedding import Embedder, load_embedder
    from multitag.embedding.model import encode_model_dir
    from multitag.tagger.config import from_flat
    from tests.conftest import FASHION

    monkeypatch.setenv("MULTITAG_CACHE", str(tmp_path / "cache"))
    tagger = MultiTaskTagger(["articleType"], **from_flat(dict(
        framing={"fill": 0.8}, image_size=64, epochs=2, progress=False, min_count=3,
    ))).fit(fashion_frame)  # fmt: skip
    model_dir = tagger.save(tmp_path / "model")
    # refits framed alike
    assert MultiTaskTagger.load(model_dir).settings("features").framing == Framing(fill=0.8)
    csv = tmp_path / "styles.csv"
    fashion_frame.drop(columns=["path"]).to_csv(csv, index=False)
    r = CliRunner().invoke(app, [
        "embed", "train", "--data", str(csv), "--images", str(FASHION / "images"),
        "--same", "articleType", "--out", str(model_dir), "--epochs", "2", "--dim", "32",
    ])  # fmt: skip
    assert r.exit_code == 0, r.output
    emb = load_embedder(model_dir)
    assert emb.encoder_.preprocessing == tagger.net_.encoder.preprocessing
    assert emb.framing == tagger.net_.encoder.preprocessing.framing

    paths = []
    for i, photo in enumerate(_photos(fashion_frame, 4)):
        for name, image in (("orig", photo), ("square", _canvas(photo, 80, 80))):
            paths.append(tmp_path / f"{i}-{name}.png")
            Image.fromarray(image).save(paths[-1])
    out = encode_model_dir(model_dir, paths)
    assert out["proba"] is not None and not out["raw"]
    vectors = out["embeddings"]
    np.testing.assert_allclose(vectors[0::2], vectors[1::2], atol=1e-4)

    # measured here, fill would differ: the CLI took the tagger's framing, not its own
    auto = Embedder(["articleType"], image_size=64, progress=False)  # framing="auto": default
    measured = auto.build_encoder(fashion_frame["path"].tolist()).preprocessing.framing
    assert measured.aspect == 0.75 and measured.fill != 0.8
    with pytest.raises(ValueError, match="needs images to measure"):
        auto.build_encoder()
    # a squash-only embedder cannot be saved beside it: the error says why
    plain = Embedder(["articleType"], image_size=64, framing="none", epochs=1, progress=False)
    with pytest.raises(ValueError, match="preprocessing differs"):
        plain.fit(fashion_frame).save(model_dir)
