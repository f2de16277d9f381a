"""Robust image decoding: a path, bytes or binary stream in, an RGB ``PIL.Image`` out.

Every problem with an input file is reported as :class:`ImageDecodeError`, whose message names the
file, says what is wrong and what to do about it; no raw Pillow exception escapes
:func:`load_image`. Nothing here reads or changes Pillow's process-wide settings
(``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``).
"""

import errno
import io
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from multitag.data.resize import resize_to_square

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageDecodeError",
    "image_to_array",
    "iter_image_files",
    "load_image",
    "walk_files",
]

DEFAULT_MAX_PIXELS = 89_478_485
"""Decompression-bomb limit in pixels (Pillow's default ``MAX_IMAGE_PIXELS``)."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
"""Lower-case file suffixes that :func:`iter_image_files` treats as images."""

_FIX = "re-export the image or remove it from the manifest"
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_HEAD_BYTES = 64
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


class ImageDecodeError(ValueError):
    """An image that cannot be used.

    ``path`` names the file (or ``name`` given for bytes / streams); ``reason`` is human readable
    and says what to do. ``str(error) == f"{path}: {reason}"``.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep picklable (multiprocessing workers) despite the 2-arg __init__
        return type(self), (self.path, self.reason)


def load_image(
    source: str | os.PathLike | bytes | BinaryIO,
    *,
    target_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Decode to an RGB PIL image, robustly.

    ``source`` is a path, raw bytes (an upload) or a binary file object (read from its start; it
    is not closed). ``name`` labels bytes / streams in error messages (default ``"<bytes>"``).
    The first frame of multi-frame files is used, EXIF orientation is applied, and every pixel
    mode is converted to 8-bit RGB (alpha composited onto white; 16/32-bit and float greyscale
    rescaled, see :func:`_numeric_to_rgb`). With ``target_size``, large JPEGs are decoded at a
    reduced scale whose short side stays ``>= target_size``. ``max_pixels`` (``None``: off) is
    checked against the header before any pixel is decoded; images over Pillow's own hard limit
    (``2 * PIL.Image.MAX_IMAGE_PIXELS``) are refused whatever ``max_pixels`` says.

    Raises :class:`ImageDecodeError` for any unusable input, ``TypeError`` for a ``source`` of
    the wrong kind and ``ValueError`` for bad ``target_size`` / ``max_pixels``.
    """
    if target_size is not None and target_size < 1:
        raise ValueError(f"target_size must be a positive int or None, got {target_size!r}")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")

    if isinstance(source, (str, os.PathLike)):
        label = name if name is not None else os.fsdecode(source)
        with _open_path(source, label) as fp:
            return _decode(fp, label, target_size, max_pixels)

    label = name if name is not None else "<bytes>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(source), label, target_size, max_pixels)
    if isinstance(source, io.TextIOBase):
        raise TypeError("load_image needs a binary file object: open the file with mode 'rb'")
    if not hasattr(source, "read"):
        raise TypeError(
            "load_image source must be a path, bytes or a binary file object, "
            f"not {type(source).__name__}"
        )
    if not _is_seekable(source):  # Pillow needs seek(); buffer e.g. a network stream
        try:
            source = io.BytesIO(source.read())
        except OSError as e:
            raise ImageDecodeError(label, f"cannot read the stream ({e}); retry or {_FIX}") from e
    return _decode(source, label, target_size, max_pixels)


def image_to_array(img: Image.Image, size: int) -> np.ndarray:
    """Resize the whole image (no crop) to ``size x size`` with bicubic -> ``uint8`` HxWx3 array.

    The aspect ratio is not preserved, deliberately: centred product photos keep the whole
    product, and the same squash is applied at training and inference time.
    """
    if img.mode != "RGB":
        img = _to_rgb(img)
    # the batched resize the loader uses, so single images get exactly the same pixels
    return resize_to_square([np.asarray(img)], size)[0].permute(1, 2, 0).numpy().copy()


def iter_image_files(paths: Iterable[str | Path], recursive: bool = True) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of image files.

    Images are recognised by suffix (:data:`IMAGE_EXTENSIONS`, case-insensitive); that applies to
    files named directly too. Inside folders, hidden entries (names starting with ``.``, e.g.
    macOS ``._photo.jpg`` resource forks) are skipped; with ``recursive=False`` only a folder's
    own files are listed; inside folders only regular files count (not FIFOs, sockets,
    devices). Symlinked folders are followed (each real folder once). A path that does not
    exist raises ``FileNotFoundError`` naming it. The commands use
    :func:`multitag.data.inputs.resolve_inputs`, which also reports what it leaves out.
    """
    if isinstance(paths, (str, os.PathLike)):  # a lone path, not an iterable of characters
        paths = [paths]
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.update(_walk_images(path, recursive))
        elif path.exists():
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                found.add(path)
        else:
            raise FileNotFoundError(errno.ENOENT, "image path does not exist", str(path))
    return sorted(found)


def walk_files(root: str | Path, recursive: bool = True) -> Iterator[Path]:
    """Every non-hidden entry that is not a folder under ``root`` (files, but also FIFOs,
    sockets, broken links: nothing is opened or checked), folder by folder in sorted order.

    Hidden folders and files (names starting with ``.``) are left out; symlinked folders are
    followed, each real folder once (no symlink loop).
    """
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # symlink loop or a folder reachable twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if recursive and not d.startswith("."))
        yield from (Path(dirpath, f) for f in sorted(filenames) if not f.startswith("."))


# --------------------------------------------------------------------------------------------
# internals


def _walk_images(root: Path, recursive: bool) -> list[Path]:
    files = walk_files(root, recursive)  # regular files only: a FIFO named x.jpg would block
    return [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()]


def _open_path(path: str | os.PathLike, label: str) -> BinaryIO:
    try:
        return open(path, "rb")  # closed by the caller's `with`
    except FileNotFoundError as e:
        reason = "file not found: fix the path or remove it from the manifest"
        raise ImageDecodeError(label, reason) from e
    except IsADirectoryError as e:
        reason = "is a directory, not an image file: list the image files instead"
        raise ImageDecodeError(label, reason) from e
    except PermissionError as e:
        reason = "permission denied: make the file readable or remove it from the manifest"
        raise ImageDecodeError(label, reason) from e
    except OSError as e:
        reason = f"cannot open the file ({e.strerror or e}): check the path or {_FIX}"
        raise ImageDecodeError(label, reason) from e


def _is_seekable(fp: BinaryIO) -> bool:
    try:
        return bool(fp.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _decode(
    fp: BinaryIO, label: str, target_size: int | None, max_pixels: int | None
) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check replaces Pillow's global warning threshold.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Lazy: reads the header only. Exiting closes nothing, as Pillow did not open `fp`.
            with Image.open(fp) as im:
                _check_pixels(im.size, label, max_pixels)
                if target_size is not None and im.format in ("JPEG", "MPO"):
                    # DCT scaling by 1/2, 1/4 or 1/8, never below target_size on either side.
                    im.draft("RGB", (target_size, target_size))
                im.load()  # first frame; decoding errors surface here
                try:
                    ImageOps.exif_transpose(im, in_place=True)
                except Exception as e:  # noqa: BLE001 -- corrupt EXIF must not cost a good image
                    warnings.warn(
                        f"{label}: EXIF orientation not applied ({type(e).__name__}: {e})",
                        stacklevel=3,
                    )
                return _to_rgb(im)  # a new, file-independent image
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as e:
        raise ImageDecodeError(label, _describe_unidentified(_read_head(fp))) from e
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(label, _pillow_bomb_reason(e, max_pixels)) from e
    except MemoryError:
        raise
    except Exception as e:  # OSError, SyntaxError, ValueError, struct.error, EOFError, ...
        raise ImageDecodeError(label, _describe_failure(e)) from e


def _check_pixels(size: tuple[int, int], label: str, max_pixels: int | None) -> None:
    if max_pixels is None:
        return
    width, height = size
    pixels = width * height
    if pixels > max_pixels:
        raise ImageDecodeError(
            label,
            f"image is {width}x{height} = {pixels:,} pixels, over the limit of {max_pixels:,} "
            "pixels (decompression-bomb guard); if the image is genuine, call load_image with a "
            "larger max_pixels= or max_pixels=None (Python API; the command line keeps the "
            "default), otherwise " + _FIX,
        )


def _pillow_bomb_reason(error: Exception, max_pixels: int | None) -> str:
    match = re.search(r"\((\d+) pixels\)", str(error))
    pixels = int(match.group(1)) if match else None
    count = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
    if max_pixels is not None and (pixels is None or pixels > max_pixels):
        return (
            f"image has {count}, over the limit of {max_pixels:,} pixels (decompression-bomb "
            "guard); if the image is genuine, call load_image with a larger max_pixels= "
            f"(Python API; the command line keeps the default), otherwise {_FIX}"
        )
    limit = Image.MAX_IMAGE_PIXELS
    hard = f"{2 * limit:,}" if limit else "?"
    return (
        f"image has {count}, over Pillow's own hard limit of {hard} pixels "
        "(2 x PIL.Image.MAX_IMAGE_PIXELS, a decompression-bomb guard): downscale the image "
        "(in Python, raise PIL.Image.MAX_IMAGE_PIXELS once at start-up)"
    )


def _read_head(fp: BinaryIO) -> bytes | None:
    try:
        fp.seek(0)
        return fp.read(_HEAD_BYTES)
    except (OSError, ValueError):
        return None


def _describe_unidentified(head: bytes | None) -> str:
    if head is None:
        return f"not a recognised image format: {_FIX}"
    if not head:
        return f"file is empty (0 bytes): re-download or {_FIX}"
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return f"looks like a {fmt} file but its header is truncated or corrupt: {_FIX}"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return f"looks like a WEBP file but its header is truncated or corrupt: {_FIX}"
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("ascii", "replace").strip()
        return (
            f"HEIF/AVIF-family file (brand {brand!r}) that this Pillow build cannot decode: "
            "convert it to JPEG or PNG (or install a plugin such as pillow-heif), "
            "or remove it from the manifest"
        )
    text = head.lstrip().lower()
    if text.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the image itself: run `git lfs pull` to fetch it"
    if text.startswith(b"%pdf"):
        return f"is a PDF document, not an image: export the page as PNG or JPEG, or {_FIX}"
    if text.startswith((b"<!doctype html", b"<html")):
        return "is an HTML page, not an image (a failed download?): re-download it or " + _FIX
    if text.startswith(b"<?xml") or b"<svg" in text:
        return f"is an SVG/XML file, not a raster image: rasterise it to PNG, or {_FIX}"
    if _looks_like_text(head):
        return f"contains text, not image data: {_FIX}"
    return (
        f"not a recognised image format (starts with {head[:8].hex(' ')}); use JPEG, PNG, "
        f"WebP, GIF, BMP or TIFF: {_FIX}"
    )


def _looks_like_text(head: bytes) -> bool:
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return b"\x00" not in head and printable >= 0.95 * len(head)


def _describe_failure(error: Exception) -> str:
    message = str(error) or type(error).__name__
    lowered = message.lower()
    if isinstance(error, EOFError) or "truncated" in lowered or "broken data stream" in lowered:
        return (
            f"image data is truncated ({message}): the file is probably an incomplete download "
            f"or copy; re-download or {_FIX}"
        )
    if isinstance(error, ValueError) and "conversion from" in lowered:
        return f"unsupported pixel mode ({message}): {_FIX}"
    return (
        f"cannot decode the image ({type(error).__name__}: {message}): the file is corrupt or "
        f"uses an unsupported variant of its format; {_FIX}"
    )


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; always returns a new image."""
    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;"):
        return _numeric_to_rgb(im)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        if mode == "La":  # premultiplied; Pillow converts La only to LA
            im = im.convert("LA")
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))  # product photos: white background
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")  # P, L, 1, CMYK, YCbCr, LAB, HSV, RGBX, ... (and a copy of RGB)


def _numeric_to_rgb(im: Image.Image) -> Image.Image:
    """16/32-bit integer and float greyscale -> RGB, scaled rather than clipped.

    ``I;16*`` maps the full 16-bit range (``v / 257``: 65535 -> 255, 32768 -> 128). ``I`` and
    ``F`` have no fixed range, so it is inferred from the data: ``F`` within [0, 1] is scaled by
    255; data within [0, 255] is kept; non-negative data within [0, 65535] is scaled as 16-bit;
    anything else is min-max stretched. NaN and infinities become 0.
    """
    arr = np.asarray(im).astype(np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, np.float32(0))
    lo = float(arr.min()) if arr.size else 0.0
    hi = float(arr.max()) if arr.size else 0.0
    if im.mode.startswith("I;16") and lo >= 0:
        arr = arr / 257.0
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        arr = arr * 255.0
    elif lo >= 0 and hi <= 255:
        pass
    elif lo >= 0 and hi <= 65535:
        arr = arr / 257.0
    elif hi > lo:
        arr = (arr - lo) * (255.0 / (hi - lo))
    else:
        arr = np.zeros_like(arr)
    grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
