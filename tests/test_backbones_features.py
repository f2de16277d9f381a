"""Backbone registry, weights loading, the torchvision fix, the encoder and the feature cache."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from multitag.tagger.held_out import photo_digests
from multitag.vision import backbones
from multitag.vision.extraction import FeatureCache, extract_features, run_encoder
from multitag.vision.features import Encoder, Preprocessing
from tests.conftest import FASHION, make_image, requires_fashion


def test_torchvision_imports_after_patch():
    code = "import multitag.vision, torchvision, timm; print(torchvision.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_registry_lists_packaged_backbones():
    names = [s.name for s in backbones.registered()]
    assert {"tf_efficientnet_lite0", "tf_efficientnet_lite2", "mobilenetv2_100"} <= set(names)
    assert backbones.resolve_name("lite0") == "tf_efficientnet_lite0"
    d = backbones.describe("lite0")
    assert [s["module"] for s in d["stages"]] == [
        "blocks.0",
        "blocks.1",
        "blocks.2",
        "blocks.4",
        "blocks.6",
    ]
    assert 4.5e6 < d["params"] < 4.8e6


@pytest.mark.parametrize("name", ["lite0", "mobilenetv2"])
def test_packaged_weights_are_real(name):
    model = backbones.create_model(name)
    random = backbones.create_model(name, weights=None)
    w = dict(model.named_parameters())["conv_stem.weight"]
    assert not torch.equal(w, dict(random.named_parameters())["conv_stem.weight"])
    assert float(w.detach().abs().mean()) > 0.05  # trained filters, not init noise


@requires_fashion
def test_lite0_imagenet_head_recognises_real_products():
    """The packaged ImageNet head works on real photos: T-shirts are 'jersey', shoes are shoes."""
    from multitag.tagger.batch import imagenet_labels

    model = backbones.create_model("lite0")
    enc = Encoder(model, Preprocessing.for_model(model, 224))
    tshirt, shoe = FASHION / "images/3201.jpg", FASHION / "images/10102.jpg"
    res = run_encoder(enc, [tshirt, shoe], progress=False, precision="fp32")
    labels = imagenet_labels()
    top5 = [[labels[j] for j in np.argsort(-row)[:5]] for row in res.imagenet_logits]
    assert "jersey" in top5[0]
    assert any(w in " ".join(top5[1]) for w in ("shoe", "sandal", "clog", "Loafer", "sneaker"))


def test_weights_from_local_file_and_bad_file(tmp_path):
    model = backbones.create_model("lite0")
    path = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = backbones.create_model("lite0", weights=str(path))
    assert torch.equal(loaded.conv_stem.weight, model.conv_stem.weight)
    with pytest.raises(backbones.WeightsUnavailableError, match="does not exist"):
        backbones.create_model("lite0", weights=str(tmp_path / "missing.pth"))
    other = tmp_path / "other.pth"
    torch.save(backbones.create_model("mobilenetv2").state_dict(), other)
    with pytest.raises(ValueError, match="another architecture"):
        backbones.create_model("lite0", weights=str(other))


def test_offline_hub_error_names_options(monkeypatch):
    def offline(*a, **k):
        if k.get("pretrained"):
            raise OSError("no network")
        return orig(*a, **k)

    import timm

    orig = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(backbones.WeightsUnavailableError) as err:
        backbones.create_model("resnet18")
    msg = str(err.value)
    assert "tf_efficientnet_lite0" in msg and "--weights" in msg
    with pytest.raises(ValueError, match="unknown backbone"):
        backbones.get_spec("not_a_model_xyz")


def colour_parts(encoder: Encoder, features: np.ndarray) -> dict[str, np.ndarray]:
    """The named parts of the colour segment at the end of each feature vector."""
    out, start = {}, features.shape[1] - encoder.colour_dim
    for name, width in encoder.colour_parts().items():
        out[name] = features[:, start : start + width]
        start += width
    return out


@pytest.fixture(scope="module")
def encoder():
    model = backbones.create_model("lite0")
    return Encoder(model, Preprocessing.for_model(model, 64))


def test_encoder_features_include_colour(encoder, tmp_path):
    red = make_image(tmp_path / "red.png", (64, 64), (220, 20, 20))
    blue = make_image(tmp_path / "blue.png", (64, 64), (20, 20, 220))
    res = run_encoder(encoder, [red, blue], progress=False, precision="fp32")
    assert res.features.shape == (2, encoder.out_dim) and not res.errors
    colour = colour_parts(encoder, res.features)
    hist, hsv = colour["rgb_hist"], colour["hsv_hist"]
    np.testing.assert_allclose((hsv**2).sum(1), 1.0, atol=1e-5)
    assert hsv[0].argmax() != hsv[1].argmax()  # red and blue fall in different hue bins
    assert hist[0].argmax() != hist[1].argmax()
    np.testing.assert_allclose((hist**2).sum(1), 1.0, atol=1e-5)  # sqrt of a distribution


def test_colour_layout_and_product_colour_ignore_the_model(encoder):
    """A blue garment worn by a skin-toned 'model' on white: the product colour is blue and
    the skin is counted apart; the layout says the garment is in the lower half."""
    img = np.full((1, 64, 64, 3), 255, np.uint8)
    img[0, 4:24, 20:44] = (224, 172, 140)  # skin-toned head
    img[0, 28:60, 12:52] = (30, 60, 200)  # blue garment
    x = torch.from_numpy(img).permute(0, 3, 1, 2)
    flipped = x.flip(2)  # upside down: same colours, other places
    with torch.no_grad():
        parts = colour_parts(encoder, encoder(torch.cat([x, flipped]))[0].numpy())
    lab = parts["product_lab"][0] * 100
    assert lab[2] < -40 and abs(lab[1]) < 60  # CIELAB b* strongly blue
    share = parts["skin_share"][0, 0]
    assert 0.2 < share < 0.4  # 480 skin of 1760 foreground pixels
    np.testing.assert_allclose(parts["rgb_hist"][0], parts["rgb_hist"][1], atol=1e-6)
    cells = parts["layout"].reshape(2, 6, 4, 4)  # rows x cols x (share, L, a, b)
    top, bottom = cells[0, :3, :, 0].mean(), cells[0, 3:, :, 0].mean()
    assert bottom > top and cells[1, 3:, :, 0].mean() < cells[1, :3, :, 0].mean()


def test_grid_stages_keep_where_things_are():
    model = backbones.create_model("lite0")
    plain = Encoder(model, Preprocessing.for_model(model, 64), grid_stages=[])
    grid = Encoder(model, Preprocessing.for_model(model, 64))
    assert grid.grid_stages == [2, 3]  # blocks.2 and blocks.4: stride 8 and 16
    assert grid.out_dim - plain.out_dim == 6 * (40 + 112)
    with pytest.raises(ValueError, match="grid_stages"):
        Encoder(model, Preprocessing.for_model(model, 64), grid_stages="some")
    x = torch.full((2, 3, 64, 64), 255, dtype=torch.uint8)
    x[0, :, 4:28, 16:48] = 40  # dark object at the top
    x[1, :, 36:60, 16:48] = 40  # the same object at the bottom
    with torch.no_grad():
        a, b = grid(x)[0]
        pa, pb = plain(x)[0]
    # pooled over the whole image the two are close; the grid cells tell them apart
    global_gap = (pa - pb).norm() / pa.norm()
    full_gap = (a - b).norm() / a.norm()
    assert full_gap > 1.5 * global_gap


@requires_fashion
def test_skin_share_finds_models_in_real_photos(encoder, fashion_frame):
    """Apparel is photographed on models, accessories are not: the skin share tells them
    apart on real catalogue photos."""
    worn = fashion_frame[fashion_frame["articleType"].isin(["Tshirts", "Kurtas", "Tops"])]
    objects = fashion_frame[
        fashion_frame["articleType"].isin(["Watches", "Handbags", "Casual Shoes"])
    ]
    paths = worn["path"].tolist()[:30] + objects["path"].tolist()[:30]
    assert len(paths) == 60
    res = run_encoder(encoder, paths, progress=False, precision="fp32")
    skin = colour_parts(encoder, res.features)["skin_share"][:, 0]
    assert np.median(skin[:30]) > 0.15 and np.median(skin[30:]) < 0.05  # seen: 0.34, 0.0


def test_feature_cache_reuses_and_reports_bad_files(encoder, tmp_path):
    paths = [make_image(tmp_path / f"{i}.png", (50, 60), (i * 40, 100, 50)) for i in range(5)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    ident = {"test": 1}
    cache_dir = tmp_path / "cache"
    first = extract_features(
        encoder,
        [*paths, bad],
        cache_dir=cache_dir,
        encoder_id=ident,
        progress=False,
        precision="fp32",
    )
    assert list(first.errors) == [5] and "bad.jpg" not in first.errors[5]
    assert first.digests == photo_digests([*paths, bad])  # the split reuses them, no re-read
    assert len(FeatureCache(cache_dir, ident)) == 5
    from multitag.vision import extraction

    calls = []
    run = extraction.run_encoder

    def spy(enc, todo, **kwargs):  # whatever the engine, a miss goes through run_encoder
        calls.append(len(todo))
        return run(enc, todo, **kwargs)

    extraction.run_encoder = spy
    try:
        again = extract_features(
            encoder,
            paths[::-1],
            cache_dir=cache_dir,
            encoder_id=ident,
            progress=False,
            precision="fp32",
        )
        assert calls == []  # everything came from the cache
        new = make_image(tmp_path / "new.png", (50, 60), (10, 200, 10))
        extract_features(
            encoder,
            [new, *paths],
            cache_dir=cache_dir,
            encoder_id=ident,
            progress=False,
            precision="fp32",
        )
        assert calls == [1]  # the spy sees a miss: only the new photo was encoded
    finally:
        extraction.run_encoder = run
    assert again.digests == first.digests[:5][::-1]
    np.testing.assert_allclose(again.features[::-1], first.features[:5], atol=2e-3, rtol=2e-3)
    other = FeatureCache(cache_dir, {"test": 2})
    assert len(other) == 0  # another encoder identity never reuses these features


class InProcessRemote:
    """A stand-in for the Ray engine: records what it is sent, encodes it here."""

    def __init__(self) -> None:
        from multitag.vision.extraction import RemoteEncoder

        RemoteEncoder.__init__(self)  # type: ignore[arg-type]
        self.calls: list[int] = []
        self.closed = False

    def encode(self, encoder, paths, *, logits=True, **kwargs):
        from multitag.vision.extraction import encode_batches, encoding_on

        self.calls.append(len(paths))
        with encoding_on(None):  # this "actor" encodes in-process
            batches = list(encode_batches(encoder, paths, **kwargs))
        yield from reversed(batches)  # a remote engine's results come in any order

    def close(self) -> None:
        self.closed = True


def test_remote_encoding_fills_the_cache_as_locally(encoder, tmp_path):
    """``--engine ray``'s switch without Ray: every encoder pass goes to the active remote
    encoder, each content once; the driver fills the same cache; a photo that failed is not
    sent again."""
    from multitag.vision.extraction import encoding_on, fill_cache, run_encoder

    paths = [make_image(tmp_path / f"{i}.png", (50, 60), (i * 30, 90, 60)) for i in range(6)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    inputs = [*paths, paths[0], bad]  # a repeated photo and a corrupt one
    ident, opts = {"test": "remote"}, dict(progress=False, precision="fp32", batch_size=4)
    local = extract_features(encoder, inputs, cache_dir=tmp_path / "a", encoder_id=ident, **opts)
    remote = InProcessRemote()
    with encoding_on(remote):
        got = extract_features(
            encoder, inputs, cache_dir=tmp_path / "b", encoder_id=ident, shard_size=3, **opts
        )
        assert remote.calls == [7]  # one pass, each content once (the corrupt one included)
        assert fill_cache(encoder, inputs, cache_dir=tmp_path / "b", encoder_id=ident, **opts) == {
            7: got.errors[7]
        }
        assert remote.calls == [7]  # all cached, and the corrupt photo is known to fail
        direct = run_encoder(encoder, paths[:2], **opts)  # uncached passes go remote too
        assert remote.calls == [7, 2]
    assert remote.closed
    np.testing.assert_array_equal(got.features, local.features)
    assert list(got.errors) == [7] and got.digests == local.digests
    assert len(FeatureCache(tmp_path / "b", ident)) == 6
    np.testing.assert_allclose(direct.features, run_encoder(encoder, paths[:2], **opts).features)
