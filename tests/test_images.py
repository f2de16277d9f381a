"""Tests for multitag.data.images (tiny images generated on the fly)."""

import gc
import io
import os
import pickle
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, PngImagePlugin

from multitag.data import images
from multitag.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    image_to_array,
    iter_image_files,
    load_image,
)

WHITE = (255, 255, 255)
RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _save(tmp_path: Path, img: Image.Image, fmt: str, name: str | None = None, **kw) -> Path:
    path = tmp_path / (name or f"img.{fmt.lower()}")
    img.save(path, fmt, **kw)
    return path


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, with (far too little) pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


def _pixels(img: Image.Image) -> list[tuple[int, int, int]]:
    assert img.mode == "RGB"
    return [img.getpixel((x, 0)) for x in range(img.width)]


def _close(actual, expected, tol: int) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def _grey(values) -> list[tuple[int, int, int]]:
    return [(v, v, v) for v in values]


# --- ImageDecodeError ---


def test_image_decode_error_fields_str_and_pickle():
    err = ImageDecodeError(Path("a/b.jpg"), "file is empty")
    assert isinstance(err, ValueError)
    assert err.path == str(Path("a/b.jpg"))
    assert err.reason == "file is empty"
    assert str(err) == f"{Path('a/b.jpg')}: file is empty"
    clone = pickle.loads(pickle.dumps(err))
    assert (type(clone), clone.path, clone.reason, str(clone)) == (
        ImageDecodeError,
        err.path,
        err.reason,
        str(err),
    )


def test_default_max_pixels_is_pillows_default():
    assert DEFAULT_MAX_PIXELS == 89_478_485 == 1024 * 1024 * 1024 // 4 // 3


# --- pixel modes ---


def _palette_image() -> Image.Image:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red, index 1 blue
    img.putpixel((1, 0), 1)
    return img


def _palette_alpha_image() -> Image.Image:
    img = Image.new("PA", (2, 1), (1, 0))  # index 1, fully transparent
    img.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red, index 1 blue
    img.putpixel((1, 0), (1, 255))  # index 1, opaque
    return img


def _from_values(mode: str, values, dtype) -> Image.Image:
    arr = np.array([values], dtype=dtype)
    return Image.frombytes(mode, (len(values), 1), arr.tobytes())


def _rgba_row(mode: str, pixels) -> Image.Image:
    img = Image.new(mode, (len(pixels), 1))
    for x, px in enumerate(pixels):
        img.putpixel((x, 0), px)
    return img


MODE_CASES = [
    # id, image factory, format, save kwargs, expected RGB row, tolerance
    ("L-png", lambda: _rgba_row("L", [0, 77, 255]), "PNG", {}, _grey([0, 77, 255]), 0),
    ("1-png", lambda: _rgba_row("1", [0, 1]), "PNG", {}, _grey([0, 255]), 0),
    ("P-png", _palette_image, "PNG", {}, [RED, BLUE], 0),
    ("P-transparent-png", _palette_image, "PNG", {"transparency": 0}, [WHITE, BLUE], 0),
    ("P-transparent-gif", _palette_image, "GIF", {"transparency": 0}, [WHITE, BLUE], 0),
    (
        "RGBA-png",
        lambda: _rgba_row("RGBA", [(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128)]),
        "PNG",
        {},
        [WHITE, RED, (127, 127, 127)],
        1,
    ),
    (
        "RGBA-webp-lossless",
        lambda: _rgba_row("RGBA", [(0, 0, 0, 0), (0, 0, 255, 255)]),
        "WEBP",
        {"lossless": True},
        [WHITE, BLUE],
        0,
    ),
    ("LA-png", lambda: _rgba_row("LA", [(0, 0), (0, 255)]), "PNG", {}, [WHITE, (0, 0, 0)], 0),
    (
        "PA-tiff",
        _palette_alpha_image,
        "TIFF",
        {},
        [WHITE, BLUE],
        0,
    ),
    (
        "RGB-transparency-png",
        lambda: _rgba_row("RGB", [RED, BLUE]),
        "PNG",
        {"transparency": RED},
        [WHITE, BLUE],
        0,
    ),
    (
        "L-transparency-png",
        lambda: _rgba_row("L", [0, 90]),
        "PNG",
        {"transparency": 0},
        [WHITE, (90, 90, 90)],
        0,
    ),
    (
        "CMYK-jpeg",
        lambda: Image.new("CMYK", (8, 1), (0, 255, 255, 0)),
        "JPEG",
        {"quality": 95},
        [RED] * 8,
        12,
    ),
    (
        "CMYK-tiff",
        lambda: _rgba_row("CMYK", [(0, 255, 255, 0), (0, 0, 0, 255)]),
        "TIFF",
        {},
        [RED, (0, 0, 0)],
        0,
    ),
    (
        "I;16-png",
        lambda: _from_values("I;16", [0, 32768, 65535, 1000], "<u2"),
        "PNG",
        {},
        _grey([0, 128, 255, 4]),
        0,
    ),
    (
        "I;16-tiff",
        lambda: _from_values("I;16", [0, 32768, 65535], "<u2"),
        "TIFF",
        {},
        _grey([0, 128, 255]),
        0,
    ),
    (
        "I;16B-tiff",
        lambda: _from_values("I;16B", [0, 32768, 65535], ">u2"),
        "TIFF",
        {},
        _grey([0, 128, 255]),
        0,
    ),
    (
        "I-16bit-range-tiff",
        lambda: _from_values("I", [0, 32768, 65535], "<i4"),
        "TIFF",
        {},
        _grey([0, 128, 255]),
        0,
    ),
    (
        "I-8bit-range-tiff",
        lambda: _from_values("I", [0, 100, 255], "<i4"),
        "TIFF",
        {},
        _grey([0, 100, 255]),
        0,
    ),
    (
        "I-signed-tiff",
        lambda: _from_values("I", [-1000, 0, 1000], "<i4"),
        "TIFF",
        {},
        _grey([0, 128, 255]),
        0,
    ),
    (
        "F-unit-range-tiff",
        lambda: _from_values("F", [0.0, 0.5, 1.0], "<f4"),
        "TIFF",
        {},
        _grey([0, 128, 255]),
        0,
    ),
    (
        "F-8bit-range-tiff",
        lambda: _from_values("F", [0.0, 100.0, 255.0], "<f4"),
        "TIFF",
        {},
        _grey([0, 100, 255]),
        0,
    ),
    (
        "F-nan-tiff",
        lambda: _from_values("F", [np.nan, 0.5, 1.0], "<f4"),
        "TIFF",
        {},
        _grey([0, 128, 255]),
        0,
    ),
    (
        "LAB-tiff",
        lambda: _rgba_row("LAB", [(255, 128, 128), (0, 128, 128)]),
        "TIFF",
        {},
        [WHITE, (0, 0, 0)],
        3,
    ),
    (
        "YCbCr-tiff",
        lambda: _rgba_row("YCbCr", [(76, 85, 255), (128, 128, 128)]),
        "TIFF",
        {},
        [RED, (128, 128, 128)],
        2,
    ),
]


@pytest.mark.parametrize(
    ("factory", "fmt", "save_kw", "expected", "tol"),
    [pytest.param(*case[1:], id=case[0]) for case in MODE_CASES],
)
def test_modes_convert_to_rgb(tmp_path, factory, fmt, save_kw, expected, tol):
    src = factory()
    path = _save(tmp_path, src, fmt, **save_kw)
    with Image.open(path) as raw:  # the file really holds the mode under test
        stored_mode = raw.mode
    assert stored_mode == src.mode or (src.mode == "P" and fmt == "GIF")
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.size == src.size
    got = _pixels(out)
    assert _close([c for px in got for c in px], [c for px in expected for c in px], tol), got


def test_16bit_full_range_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    path = _save(tmp_path, Image.fromarray(ramp), "PNG")
    out = np.asarray(load_image(path))
    assert out.min() == 0 and out.max() == 255
    assert (out == 255).mean() < 0.05  # not all white
    assert len(np.unique(out[:, :, 0])) == 64  # gradations kept


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("HSV", (0, 255, 255), RED),
        ("HSV", (170, 255, 255), BLUE),
        ("RGBa", (0, 0, 0, 0), WHITE),
        ("RGBa", (255, 0, 0, 255), RED),
        ("La", (0, 0), WHITE),
        ("RGBX", (255, 0, 0, 0), RED),
    ],
)
def test_to_rgb_modes_without_a_file_format(mode, value, expected):
    out = images._to_rgb(Image.new(mode, (2, 2), value))
    assert out.mode == "RGB"
    assert _close(out.getpixel((1, 1)), expected, 2), out.getpixel((1, 1))


# --- EXIF / draft / frames ---


def _left_red_right_blue(width: int = 40, height: int = 20) -> Image.Image:
    img = Image.new("RGB", (width, height), RED)
    img.paste(BLUE, (width // 2, 0, width, height))
    return img


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise for display
    rotated = _save(tmp_path, _left_red_right_blue(), "JPEG", "rot.jpg", exif=exif, quality=95)
    plain = _save(tmp_path, _left_red_right_blue(), "JPEG", "plain.jpg", quality=95)

    assert load_image(plain).size == (40, 20)
    out = load_image(rotated)
    assert out.size == (20, 40)
    assert _close(out.getpixel((10, 5)), RED, 20)  # stored left half is now on top
    assert _close(out.getpixel((10, 35)), BLUE, 20)


def test_corrupt_exif_warns_and_still_returns_image(tmp_path, monkeypatch):
    def boom(*_args, **_kwargs):
        raise SyntaxError("bad EXIF")

    monkeypatch.setattr(images.ImageOps, "exif_transpose", boom)
    path = _save(tmp_path, _left_red_right_blue(), "PNG")
    with pytest.warns(UserWarning, match="EXIF orientation not applied"):
        out = load_image(path)
    assert out.mode == "RGB" and out.size == (40, 20)


def test_jpeg_draft_with_target_size(tmp_path):
    path = _save(tmp_path, Image.new("RGB", (2000, 1500), (200, 100, 50)), "JPEG")
    full = load_image(path)
    small = load_image(path, target_size=224)
    assert full.size == (2000, 1500)
    assert small.size == (500, 375)  # DCT-scaled by 1/4: the largest scale keeping >= 224
    assert min(small.size) >= 224
    assert _close(small.getpixel((250, 180)), (200, 100, 50), 4)
    assert load_image(path, target_size=1000).size == (2000, 1500)  # no room to shrink


def test_target_size_leaves_non_jpeg_alone(tmp_path):
    path = _save(tmp_path, Image.new("RGB", (300, 200)), "PNG")
    assert load_image(path, target_size=32).size == (300, 200)


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_multi_frame_uses_first_frame(tmp_path, fmt):
    first, second = Image.new("RGB", (4, 4), RED), Image.new("RGB", (4, 4), BLUE)
    path = _save(tmp_path, first, fmt, save_all=True, append_images=[second])
    with Image.open(path) as raw:
        assert raw.n_frames == 2
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (4, 4)
    assert out.getpixel((2, 2)) == RED
    assert not getattr(out, "is_animated", False)


# --- sources ---


def test_sources_path_str_bytes_bytearray_and_streams(tmp_path):
    data = _encode(Image.new("RGB", (3, 2), RED), "PNG")
    path = tmp_path / "red.png"
    path.write_bytes(data)

    class NonSeekable(io.RawIOBase):
        def __init__(self, payload: bytes) -> None:
            self._buf = io.BytesIO(payload)

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            return self._buf.readinto(b)

    stream = io.BytesIO(data)
    stream.seek(5)  # read from the start regardless of position
    sources = [path, str(path), data, bytearray(data), memoryview(data), stream]
    sources.append(NonSeekable(data))
    for source in sources:
        out = load_image(source)
        assert (out.mode, out.size, out.getpixel((0, 0))) == ("RGB", (3, 2), RED), source
    assert not stream.closed  # the caller's stream is left open


def test_wrong_source_types_raise_type_error():
    with pytest.raises(TypeError, match="path, bytes or a binary file object"):
        load_image(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'rb'"):
        load_image(io.StringIO("not binary"))  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"target_size": 0}, {"max_pixels": 0}])
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        load_image(b"", **kwargs)


def test_name_labels_bytes_errors():
    with pytest.raises(ImageDecodeError) as info:
        load_image(b"junk junk junk", name="upload.jpg")
    assert info.value.path == "upload.jpg"
    assert str(info.value).startswith("upload.jpg: ")
    with pytest.raises(ImageDecodeError) as info:
        load_image(io.BytesIO(b""))
    assert info.value.path == "<bytes>"


# --- bad inputs ---


def _reason(source, **kwargs) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as info:
        load_image(source, **kwargs)
    return info.value


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    err = _reason(missing)
    assert err.path == str(missing)
    assert "file not found" in err.reason
    assert isinstance(err.__cause__, FileNotFoundError)


def test_directory(tmp_path):
    assert "directory" in _reason(tmp_path).reason


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    err = _reason(path)
    assert "empty" in err.reason and "remove it from the manifest" in err.reason


def test_text_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image, just some notes\n" * 3)
    assert "text, not image data" in _reason(path).reason


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML page"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF document"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 32, "'heic'"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n", "git lfs"),
        (bytes(range(200, 256)) * 2, "not a recognised image format"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG file but its header is truncated"),
    ],
)
def test_unidentified_inputs_are_explained(payload, expected):
    assert expected.lower() in _reason(payload).reason.lower()


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = _encode(noise, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    err = _reason(path)
    assert "truncated" in err.reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # global left alone


def test_truncated_png():
    rng = np.random.default_rng(0)
    data = _encode(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), "PNG")
    assert "truncated" in _reason(data[: len(data) // 2]).reason


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_damaged_files_never_leak_raw_exceptions(fmt):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(pixels), fmt)
    variants = [data[:cut] for cut in (1, 2, 7, 16, 30, len(data) // 3, len(data) - 3)]
    for _ in range(12):
        damaged = bytearray(data)
        for pos in rng.integers(0, len(data), 4):
            damaged[pos] ^= 0xFF
        variants.append(bytes(damaged))
    for variant in variants:
        try:
            out = load_image(variant, max_pixels=100_000)
        except ImageDecodeError as e:
            assert e.reason
        else:
            assert out.mode == "RGB"


@pytest.mark.parametrize(
    "error",
    [
        SyntaxError("broken PNG file"),
        struct.error("unpack requires a buffer of 4 bytes"),
        ValueError("tile cannot extend outside image"),
        IndexError("list index out of range"),
        EOFError(),
        KeyError("unknown tag"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_any_decoder_exception_is_wrapped(tmp_path, monkeypatch, error):
    path = _save(tmp_path, Image.new("RGB", (4, 4)), "PNG")

    def failing_load(self):
        raise error

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", failing_load)
    err = _reason(path)
    assert err.__cause__ is error
    assert err.path == str(path) and "remove it from the manifest" in err.reason


def test_memory_error_is_not_disguised(tmp_path, monkeypatch):
    path = _save(tmp_path, Image.new("RGB", (4, 4)), "PNG")

    def failing_load(self):
        raise MemoryError

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", failing_load)
    with pytest.raises(MemoryError):
        load_image(path)


# --- pixel limit ---


def test_max_pixels_checked_before_decoding(tmp_path):
    path = _save(tmp_path, Image.new("RGB", (200, 100)), "PNG")
    err = _reason(path, max_pixels=10_000)
    assert "200x100" in err.reason and "20,000" in err.reason and "10,000" in err.reason
    # no command has a --max-pixels option: the message must not send users to one
    assert "max_pixels=" in err.reason and "--max-pixels" not in err.reason
    assert load_image(path, max_pixels=20_000).size == (200, 100)  # the limit is inclusive
    assert load_image(path, max_pixels=None).size == (200, 100)


def test_default_limit_refuses_huge_header_without_warnings():
    limit_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = _reason(_png_header(10_000, 10_000))  # 1e8 px: Pillow itself would only warn
    assert "100,000,000" in err.reason and f"{DEFAULT_MAX_PIXELS:,}" in err.reason
    assert "max_pixels=" in err.reason
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert limit_before == Image.MAX_IMAGE_PIXELS


def test_pillow_hard_limit_is_wrapped():
    header = _png_header(20_000, 10_000)  # 2e8 px: Pillow raises DecompressionBombError itself
    err = _reason(header)
    assert "200,000,000" in err.reason and "max_pixels=" in err.reason
    assert isinstance(err.__cause__, Image.DecompressionBombError)
    err = _reason(header, max_pixels=None)
    assert "MAX_IMAGE_PIXELS" in err.reason  # max_pixels cannot lift Pillow's own limit


# --- file handles ---


def test_no_resource_warnings(tmp_path):
    good = _save(
        tmp_path,
        Image.new("RGB", (4, 4)),
        "GIF",
        save_all=True,
        append_images=[Image.new("RGB", (4, 4), RED)],
    )
    text = tmp_path / "text.png"
    text.write_text("hello there, not an image at all")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(_encode(Image.new("RGB", (64, 64), RED), "JPEG")[:300])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_image(good)
        for bad in (text, cut, tmp_path / "missing.png"):
            with pytest.raises(ImageDecodeError):
                load_image(bad)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


# --- image_to_array ---


def test_image_to_array_squashes_whole_image():
    arr = image_to_array(_left_red_right_blue(40, 20), 10)
    assert arr.shape == (10, 10, 3) and arr.dtype == np.uint8
    assert arr.flags.writeable
    assert _close(arr[5, 0], RED, 5) and _close(arr[5, 9], BLUE, 5)  # both ends kept: no crop


def test_image_to_array_matches_bicubic_resize():
    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    expected = np.asarray(img.resize((16, 16), Image.Resampling.BICUBIC, reducing_gap=None))
    diff = np.abs(image_to_array(img, 16).astype(int) - expected)
    assert diff.max() <= 1 and diff.mean() < 0.01  # Pillow's filter, up to rounding


def test_image_to_array_converts_non_rgb():
    arr = image_to_array(Image.new("L", (5, 7), 90), 4)
    assert arr.shape == (4, 4, 3)
    assert (arr == 90).all()
    with pytest.raises(ValueError, match="size"):
        image_to_array(Image.new("RGB", (2, 2)), 0)


# --- iter_image_files ---


@pytest.fixture
def tree(tmp_path):
    files = [
        "a.JPG",
        "b.png",
        "notes.txt",
        ".hidden.jpg",
        "._b.png",
        ".cache/e.jpg",
        "sub/c.jpeg",
        "sub/x.WebP",
        "sub/y.bmp",
        "sub/deep/d.TIFF",
        "sub/deep/z.tif",
        "sub/deep/anim.gif",
        "sub/deep/readme.md",
    ]
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    return tmp_path


def test_iter_image_files_recursive(tree):
    got = iter_image_files([tree])
    rel = [p.relative_to(tree).as_posix() for p in got]
    assert rel == [
        "a.JPG",
        "b.png",
        "sub/c.jpeg",
        "sub/deep/anim.gif",
        "sub/deep/d.TIFF",
        "sub/deep/z.tif",
        "sub/x.WebP",
        "sub/y.bmp",
    ]
    assert got == sorted(got)
    assert all(isinstance(p, Path) for p in got)


def test_iter_image_files_non_recursive_explicit_and_dedup(tree):
    assert [p.name for p in iter_image_files([tree], recursive=False)] == ["a.JPG", "b.png"]
    explicit = [
        tree / "sub" / "c.jpeg",
        str(tree / "sub"),
        tree / "notes.txt",
        tree / ".hidden.jpg",
    ]
    rel = [p.relative_to(tree).as_posix() for p in iter_image_files(explicit, recursive=False)]
    assert rel == [".hidden.jpg", "sub/c.jpeg", "sub/x.WebP", "sub/y.bmp"]  # named files kept
    assert iter_image_files(str(tree / "b.png")) == [tree / "b.png"]  # a lone path, not chars
    assert iter_image_files([]) == []


def test_iter_image_files_missing_path(tree):
    missing = tree / "does-not-exist"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as info:
        iter_image_files([tree, missing])
    assert info.value.filename == str(missing)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_iter_image_files_survives_symlink_loop(tree):
    try:
        os.symlink(tree, tree / "sub" / "loop", target_is_directory=True)
    except OSError:
        pytest.skip("cannot create symlinks here")
    got = iter_image_files([tree])
    assert len(got) == 8
    assert len({p.resolve() for p in got}) == 8
