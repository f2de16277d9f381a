"""The level-of-detail step (multitag.data.detail), the training-photo profile and evaluation
of data that lacks some of the model's tasks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from multitag.data.detail import Detail, match_detail, measure_detail, resolve_detail
from multitag.data.framing import Framing, reframe
from multitag.data.photo_profile import photo_profile, profile_warnings
from multitag.data.resize import resize_to_square
from multitag.vision.features import ImageDataset, Preprocessing
from tests.conftest import requires_fashion


def _product_photo(width: int, height: int) -> Image.Image:
    """A sharp, textured 'product' (striped shirt-like shape) on white, drawn at any size."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    box = (width * 0.15, height * 0.1, width * 0.85, height * 0.9)
    draw.rectangle(box, fill=(40, 70, 160))
    for i in range(40):  # fine stripes: detail a thumbnail cannot hold
        x = box[0] + (box[2] - box[0]) * i / 40
        draw.line([(x, box[1]), (x, box[3])], fill=(230, 200, 40), width=max(1, width // 300))
    return img


def _network_input(
    array: np.ndarray, detail: Detail | None, size: int = 224, framing: Framing | None = None
) -> np.ndarray:
    """What the network receives: framing, the detail step, then the loader's square resize."""
    pixels = array.shape[0] * array.shape[1]
    framed = reframe(array, framing) if framing is not None else array
    out = match_detail(framed, detail, pixels)
    return resize_to_square([out], size)[0].numpy().astype(np.float32)


def test_large_and_thumbnail_versions_reach_the_network_alike():
    large = _product_photo(900, 1200)
    thumb = np.asarray(large.resize((60, 80), Image.Resampling.LANCZOS))
    large = np.asarray(large)
    with_step = np.abs(
        _network_input(large, Detail(4800)) - _network_input(thumb, Detail(4800))
    ).mean()
    without = np.abs(_network_input(large, None) - _network_input(thumb, None)).mean()
    assert with_step < 2.0  # grey levels out of 255, averaged over the input
    assert with_step < without / 4  # and the step is what closes the gap


def test_framed_photos_keep_the_detail_of_their_thumbnail():
    """With framing, a large photo reaches the network as its 60x80 thumbnail would (the
    thumbnail is made from the whole photo, then framed), not with the pixels of the largest
    framed training photo; a small product on a wide canvas keeps the training detail."""
    framing = Framing()
    large = _product_photo(900, 1200)
    thumb = np.asarray(large.resize((60, 80), Image.Resampling.LANCZOS))
    level = measure_detail([thumb] * 5, framing)
    framed_pixels = reframe(thumb, framing).size // 3
    assert level == Detail(framed=framed_pixels, photo=4800, floor=framed_pixels)
    photo = np.asarray(large)
    out = match_detail(reframe(photo, framing), level, photo.shape[0] * photo.shape[1])
    thumb_framed = reframe(thumb, framing)
    assert out.shape[0] * out.shape[1] == pytest.approx(thumb_framed.size // 3, rel=0.05)
    # at the network (framing crops the thumbnail on whole pixels, so edges move a little)
    gap = np.abs(
        _network_input(photo, level, framing=framing)
        - _network_input(thumb, level, framing=framing)
    ).mean()
    without = np.abs(
        _network_input(photo, None, framing=framing) - _network_input(thumb, level, framing=framing)
    ).mean()
    assert gap < without / 3
    # the thumbnail on a 4x canvas: framing crops it back, and the step keeps it as it is
    canvas = Image.new("RGB", (240, 320), (255, 255, 255))
    canvas.paste(Image.fromarray(thumb), (90, 120))
    canvas = np.asarray(canvas)
    framed = reframe(canvas, framing)
    assert match_detail(framed, level, canvas.shape[0] * canvas.shape[1]) is framed
    # a large photo whose product is small in the frame keeps at least `floor` pixels
    wide = Image.new("RGB", (3600, 4800), (255, 255, 255))
    wide.paste(large, (1350, 1800))
    wide = np.asarray(wide)
    out = match_detail(reframe(wide, framing), level, wide.shape[0] * wide.shape[1])
    assert out.shape[0] * out.shape[1] == pytest.approx(level.floor, rel=0.05)


def test_small_photos_are_untouched_and_aspect_is_kept():
    small = np.asarray(_product_photo(60, 80))
    assert match_detail(small, Detail(4800)) is small
    assert match_detail(small, Detail(4800, photo=4800, floor=4800)) is small
    assert match_detail(small, None) is small
    out = match_detail(np.asarray(_product_photo(900, 1200)), Detail(4800))
    assert out.shape == (80, 60, 3) and out.dtype == np.uint8
    wide = match_detail(np.zeros((500, 2000, 3), np.uint8), Detail(4800))
    assert wide.shape[1] / wide.shape[0] == pytest.approx(4.0, rel=0.05)
    assert abs(wide.shape[0] * wide.shape[1] - 4800) < 200


def test_measure_and_resolve_detail(tmp_path):
    photos = [np.asarray(_product_photo(60, 80))] * 9 + [np.asarray(_product_photo(120, 160))]
    # the 0.99 quantile of the photos covers the largest here; the median of the framed ones
    assert measure_detail(photos) == Detail(framed=120 * 160, photo=120 * 160, floor=4800)
    assert measure_detail(photos[:9]) == Detail(4800, 4800, 4800)
    framed = measure_detail(photos[:9], Framing())
    assert framed.framed != 4800 and framed.photo == 4800  # framed: the canvas the network sees
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        _product_photo(60, 80).save(p)
        paths.append(str(p))
    assert resolve_detail("auto", paths, None) == Detail(4800, 4800, 4800)
    assert resolve_detail("none", paths, None) is None
    assert resolve_detail(None, paths, None) is None
    assert resolve_detail(6000, paths, None) == Detail(6000)  # a fixed cap, as before
    level = {"framed": 5000, "photo": 9000, "floor": 4000}
    assert resolve_detail(level, paths, None) == Detail(5000, 9000, 4000)
    assert resolve_detail(Detail(5000), paths, None) == Detail(5000)
    for bad, fix in [
        (10, "at least 1024"),
        ("big", "'auto'"),
        (True, "'auto'"),
        ({"framed": 5000, "pixels": 1}, "unknown fields"),
        ({"framed": 5000, "photo": 10, "floor": 2000}, "photo must be at least 1024"),
        ({"framed": 5000, "photo": 9000}, "photo and floor together"),
        ({"photo": 9000, "floor": 4000}, "'framed' .* is required"),
    ]:
        with pytest.raises(ValueError, match=fix):
            resolve_detail(bad, paths, None)
    assert resolve_detail("auto", [], None) is None  # nothing to measure: off


def test_preprocessing_round_trip_keeps_old_keys():
    prep = Preprocessing(96, (0.5,) * 3, (0.5,) * 3, Framing(), Detail(6348, 4800, 4800))
    assert Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict()))) == prep
    # a fixed cap (what models saved before `photo` recorded) is stored as the int it was
    capped = Preprocessing(96, (0.5,) * 3, (0.5,) * 3, Framing(), Detail(6348))
    assert capped.to_dict()["detail"] == 6348
    assert Preprocessing.from_dict(json.loads(json.dumps(capped.to_dict()))) == capped
    old = {"image_size": 96, "mean": [0.5] * 3, "std": [0.5] * 3}  # a config from before
    assert Preprocessing.from_dict(old).detail is None
    # no detail -> the same dict as before the step existed, so feature caches still match
    assert "detail" not in Preprocessing(96, (0.5,) * 3, (0.5,) * 3).to_dict()


def test_loader_applies_the_step(tmp_path):
    path = tmp_path / "big.png"
    _product_photo(900, 1200).save(path)
    _, array, reason = ImageDataset([path], 224, detail=Detail(4800))[0]
    assert reason == "" and array.shape[0] * array.shape[1] <= 4900
    _, untouched, _ = ImageDataset([path], 224, detail=None)[0]
    assert untouched.shape[0] >= 224  # only JPEG draft decoding would shrink it


def test_photo_profile_and_warnings(tmp_path):
    small, large, grey = [], [], []
    for i in range(6):
        _product_photo(60, 80).save(tmp_path / f"s{i}.jpg")
        _product_photo(900, 1200).save(tmp_path / f"l{i}.jpg")
        _product_photo(80, 80).convert("L").save(tmp_path / f"g{i}.png")
        small.append(tmp_path / f"s{i}.jpg")
        large.append(tmp_path / f"l{i}.jpg")
        grey.append(tmp_path / f"g{i}.png")
    trained = photo_profile(small)
    assert trained["width"] == 60 and trained["height"] == 80 and trained["modes"] == {"RGB": 1}
    assert profile_warnings(trained, photo_profile(small)) == []
    size_warning = profile_warnings(trained, photo_profile(large))
    assert len(size_warning) == 1 and "900x1200" in size_warning[0] and "225.0x" in size_warning[0]
    grey_warnings = " ".join(profile_warnings(trained, photo_profile(grey)))
    assert "aspect ratio" in grey_warnings and "colour mode L: 100%" in grey_warnings
    assert profile_warnings(None, photo_profile(large)) == []  # a model from before profiles
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert photo_profile([tmp_path / "broken.jpg"]) is None


# ----------------------------------------------------------------- real images, real weights


def _upscaled(path: Path, out: Path, k: int = 8) -> Path:
    with Image.open(path) as im:
        im.convert("RGB").resize((im.width * k, im.height * k), Image.Resampling.LANCZOS).save(out)
    return out


@pytest.mark.slow
@requires_fashion
def test_tagger_records_detail_and_old_dirs_behave_as_before(
    trained_tagger, fashion_frame, tmp_path
):
    from multitag import MultiTaskTagger

    prep = trained_tagger.net_.encoder.preprocessing
    assert prep.detail is not None and prep.detail.photo == 60 * 80  # measured on 60x80 photos
    assert trained_tagger.photo_profile_["width"] == 60
    model_dir = trained_tagger.save(tmp_path / "model")
    config = json.loads((Path(model_dir) / "config.json").read_text())
    assert config["preprocessing"]["detail"] == prep.detail.to_json()
    assert "match_detail" in config["preprocessing"]["resize"]
    assert config["training_photos"]["height"] == 80
    reloaded = MultiTaskTagger.load(model_dir)
    assert reloaded.net_.encoder.preprocessing == prep
    assert reloaded.settings("features").detail == "auto"

    # a model dir saved before the step: no detail, no profile -> loads, photos not downscaled
    del config["preprocessing"]["detail"], config["training_photos"]
    config["params"].pop("detail", None)
    config.pop("integrity", None)  # that version recorded no file hashes either
    (Path(model_dir) / "config.json").write_text(json.dumps(config))
    old = MultiTaskTagger.load(model_dir)
    assert old.net_.encoder.preprocessing.detail is None
    assert old.settings("features").detail == "none"
    assert old.photo_profile_ is None

    row = fashion_frame.iloc[3]
    big = _upscaled(Path(row["path"]), tmp_path / "big.png")
    new_p = reloaded.predict_proba([big, row["path"]])["proba"]
    old_p = old.predict_proba([big, row["path"]])["proba"]
    for task in new_p:
        # the 60x80 photo is untouched by the step: both models agree exactly on it
        np.testing.assert_allclose(new_p[task][1], old_p[task][1], atol=1e-6)
    # the large copy goes through the step in the new model only (how much that helps on
    # real photos is measured by bench/shift.md, not here)
    changed = max(np.abs(new_p[t][0] - old_p[t][0]).max() for t in new_p)
    assert changed > 1e-3


@pytest.mark.slow
@requires_fashion
def test_api_tag_of_a_large_upload_goes_through_the_step(
    tmp_path_factory, trained_tagger, fashion_frame, tmp_path
):
    from fastapi.testclient import TestClient

    from multitag.serve.app import create_app
    from tests.catalog_util import built_catalog, sample_rows

    cat_dir, model_dir, _ = built_catalog(tmp_path_factory, trained_tagger, fashion_frame)
    row = sample_rows(fashion_frame).iloc[7]
    big = _upscaled(Path(row["path"]), tmp_path / "big.png")
    with TestClient(create_app(cat_dir, model_dir), base_url="http://localhost") as client:
        res = client.post("/tag", files={"file": ("big.png", big.read_bytes(), "image/png")})
    assert res.status_code == 200, res.text
    body = res.json()
    from multitag import MultiTaskTagger

    tagger = MultiTaskTagger.load(model_dir)
    proba = tagger.predict_proba([big])["proba"]  # what `multitag tag` computes for the file
    for task, tags in body["tags"].items():
        classes = list(next(t for t in tagger.tasks_ if t.name == task).classes)
        assert tags[0]["prob"] == pytest.approx(
            float(proba[task][0][classes.index(tags[0]["label"])]), abs=1e-4
        )


@pytest.mark.slow
@requires_fashion
def test_evaluate_scores_present_tasks_and_warns_about_other_photos(
    trained_tagger, fashion_frame, tmp_path
):
    model_dir = trained_tagger.save(tmp_path / "model")
    rows = fashion_frame.head(40).copy()
    big_dir = tmp_path / "big"
    big_dir.mkdir()
    rows["path"] = [
        str(_upscaled(Path(p), big_dir / f"{i}.png", 4)) for i, p in zip(rows["id"], rows["path"])
    ]
    manifest = tmp_path / "m.csv"
    rows.drop(columns=["season"]).to_csv(manifest, index=False)
    cli = [sys.executable, "-m", "multitag.cli.main"]
    done = subprocess.run(
        [*cli, "evaluate", str(model_dir), "--data", str(manifest), "--path-col", "path",
         "--json", str(tmp_path / "m.json"), "--html", str(tmp_path / "m.html")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "m.json").read_text())
    assert "season" not in report["tasks"] and report["skipped_tasks"] == ["season"]
    assert "gender" in report["tasks"]
    assert "skipped task(s)" in done.stderr and "season" in done.stderr
    assert any("240x320" in w for w in report["source_warnings"])
    assert "differ from the training photos" in done.stderr
    assert "differ from the training photos" in (tmp_path / "m.html").read_text()

    only_other = tmp_path / "other.csv"
    rows[["id", "path", "year"]].to_csv(only_other, index=False)
    done = subprocess.run(
        [*cli, "evaluate", str(model_dir), "--data", str(only_other), "--path-col", "path",
         "--json", str(tmp_path / "x.json")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert "none of the model's task columns" in done.stderr and "Traceback" not in done.stderr
