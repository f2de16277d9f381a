"""A corpus of hostile and awkward image files, generated at test time (nothing checked in).

:func:`write_corpus` returns ``{file name: expected}``: ``"tag"`` for files ``tag`` must read
and tag (odd but legal), ``"reject"`` for files it must list in the rejects file with a reason.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _product(size=(60, 80), colour=(200, 40, 40)) -> Image.Image:
    w, h = size
    arr = np.full((h, w, 3), 255, np.uint8)
    arr[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = colour
    return Image.fromarray(arr)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 1024)  # far too little data: never meant to be decoded
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def gif_bomb() -> bytes:
    """A GIF whose logical screen and frame claim 65535 x 65535 pixels."""
    head = b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00"
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, 65535, 65535) + b"\x00"
    return head + frame + b"\x02\x02\x44\x01\x00\x3b"


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def write_corpus(folder: Path) -> dict[str, str]:
    """Write the corpus into ``folder``; ``{name: "tag" | "reject"}``."""
    folder.mkdir(parents=True, exist_ok=True)
    good = _product()
    jpeg, png = _save(good, "JPEG", quality=90), _save(good, "PNG")
    files: dict[str, tuple[bytes, str]] = {
        # unreadable: must be rejected with a reason
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "reject"),
        "truncated_header.jpg": (jpeg[:20], "reject"),
        "truncated.png": (png[: len(png) // 2], "reject"),
        "zero.jpg": (b"", "reject"),
        "zero.png": (b"", "reject"),
        "zero.webp": (b"", "reject"),
        "text.jpg": (b"just some text, not an image\n" * 20, "reject"),
        "page.jpg": (b"<!doctype html><html><body><h1>404 Not Found</h1></body></html>", "reject"),
        "page.png": (b"<html><head><title>x</title></head></html>\n", "reject"),
        "json.webp": (b'{"error": "not found"}', "reject"),
        "random.jpg": (np.random.default_rng(0).bytes(5000), "reject"),
        "random.gif": (np.random.default_rng(1).bytes(3000), "reject"),
        "bomb.png": (png_bomb(40_000, 40_000), "reject"),
        "bomb_wide.png": (png_bomb(1_000_000, 200), "reject"),
        "bomb.gif": (gif_bomb(), "reject"),
        "truncated.gif": (_save(good, "GIF")[:60], "reject"),
        "truncated.webp": (_save(good, "WEBP")[:40], "reject"),
        "truncated.tif": (_save(good, "TIFF")[:100], "reject"),
        # odd but legal: must be tagged
        "grey16.png": (_save(good.convert("L").convert("I;16"), "PNG"), "tag"),
        "cmyk.jpg": (_save(good.convert("CMYK"), "JPEG"), "tag"),
        "palette.png": (_save(good.convert("P"), "PNG"), "tag"),
        "palette_transparent.png": (_save(good.convert("P"), "PNG", transparency=0), "tag"),
        "rgba.png": (_save(good.convert("RGBA"), "PNG"), "tag"),
        "grey_alpha.png": (_save(good.convert("LA"), "PNG"), "tag"),
        "bilevel.png": (_save(good.convert("1"), "PNG"), "tag"),
        "grey.jpg": (_save(good.convert("L"), "JPEG"), "tag"),
        "progressive.jpg": (_save(good, "JPEG", progressive=True), "tag"),
        "lossless.webp": (_save(good, "WEBP", lossless=True), "tag"),
        "bitmap.bmp": (_save(good, "BMP"), "tag"),
        "float.tif": (_save(good.convert("F"), "TIFF"), "tag"),
        "png_named.jpg": (png, "tag"),
        "trailing_garbage.jpg": (jpeg + b"\x00garbage" * 100, "tag"),
        "one_pixel.png": (_save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "tag"),
        "sliver.png": (_save(_product((2, 1200)), "PNG"), "tag"),
        "huge_legal.jpg": (_save(_product((4000, 3000)), "JPEG", quality=70), "tag"),
    }
    animated = [_product(colour=c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    buf = io.BytesIO()
    animated[0].save(buf, "GIF", save_all=True, append_images=animated[1:], duration=50, loop=0)
    files["animated.gif"] = (buf.getvalue(), "tag")
    buf = io.BytesIO()
    animated[0].save(buf, "WEBP", save_all=True, append_images=animated[1:], duration=50)
    files["animated.webp"] = (buf.getvalue(), "tag")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    files["exif_rotated.jpg"] = (_save(good, "JPEG", exif=exif.tobytes()), "tag")
    expected = {}
    for name, (data, outcome) in files.items():
        (folder / name).write_bytes(data)
        expected[name] = outcome
    # links: a loop and a dangling one (never followed forever, never crash)
    os.symlink("loop_b.jpg", folder / "loop_a.jpg")
    os.symlink("loop_a.jpg", folder / "loop_b.jpg")
    os.symlink("does_not_exist.jpg", folder / "dangling.jpg")
    expected.update({"loop_a.jpg": "reject", "loop_b.jpg": "reject", "dangling.jpg": "reject"})
    return expected
