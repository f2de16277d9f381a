"""Reading upload requests with hard limits, before any model work.

The body is read from the socket chunk by chunk and reading stops one byte past the limit,
with or without a ``Content-Length`` (a chunked upload cannot spool more than the limit); each
file part is capped at the per-file limit before it is written to its spool file. Then every
file is checked by content (empty, not an image: ``415``); its pixel count is read from the
header (``413`` over the budget) before anything is decoded.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

FORM_OVERHEAD = 64 * 1024  # headers, boundaries and text fields around the files
_MAGIC = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)


@dataclass
class Upload:
    """One uploaded file, read into memory (at most the per-file limit)."""

    field: str
    name: str
    data: bytes
    content_type: str | None


def is_image_bytes(data: bytes) -> bool:
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _too_large(what: str, limit: int) -> HTTPException:
    # Connection: close makes the server hang up instead of draining the rest of the body
    return HTTPException(
        413,
        f"{what} is larger than the {limit / 1024 / 1024:g} MB upload limit",
        headers={"Connection": "close"},
    )


async def limited_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body, refused with ``413`` as soon as it passes ``limit`` bytes."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_large("the request", limit - FORM_OVERHEAD)
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise _too_large("the request", limit - FORM_OVERHEAD)
        yield chunk


class _CappedMultiPartParser(MultiPartParser):
    """Starlette's parser with a per-file size cap, checked before a byte is spooled."""

    def __init__(self, *args, max_file_size: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_file_size = max_file_size
        self._file_bytes = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._file_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        file = self._current_part.file
        if file is not None:
            self._file_bytes += end - start
            if self._file_bytes > self.max_file_size:
                raise _too_large(file.filename or "a file", self.max_file_size)
        super().on_part_data(data, start, end)


async def read_form(
    request: Request, max_file_size: int, max_files: int
) -> tuple[dict[str, str], list[Upload]]:
    """``(text fields, files)`` of a ``multipart/form-data`` or url-encoded body, within limits.

    Files are returned in request order; a repeated text field keeps its last value.
    """
    ctype = request.headers.get("content-type", "")
    limit = max_file_size * max_files + FORM_OVERHEAD
    stream = limited_stream(request, limit)
    try:
        if ctype.startswith("multipart/form-data"):
            parser = _CappedMultiPartParser(
                request.headers,
                stream,
                max_files=max_files,
                max_fields=16,
                max_part_size=FORM_OVERHEAD,
                max_file_size=max_file_size,
            )
            form = await parser.parse()
        elif ctype.startswith("application/x-www-form-urlencoded"):
            form = await FormParser(request.headers, stream).parse()
        elif not ctype:
            if [chunk async for chunk in stream if chunk]:
                raise HTTPException(415, "the body has no Content-Type: send multipart/form-data")
            return {}, []
        else:
            raise HTTPException(
                415, "send the request as multipart/form-data (files) or a url-encoded form"
            )
    except MultiPartException as err:
        if err.message.startswith("Too many files"):
            raise HTTPException(422, f"at most {max_files} image(s) per request") from None
        raise HTTPException(400, f"malformed form: {err.message}") from None
    fields: dict[str, str] = {}
    files: list[Upload] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                files.append(Upload(key, value.filename or "upload", data, value.content_type))
            else:
                fields[key] = value
    finally:
        await form.close()
    return fields, files


def parse_fields(model: type[BaseModel], fields: dict[str, str]) -> BaseModel:
    """Validate text form fields; bad values answer ``422`` in FastAPI's usual shape."""
    try:
        return model.model_validate(fields)
    except ValidationError as err:
        found = err.errors(include_url=False, include_context=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in found]) from None


def check_content(upload: Upload) -> None:
    """``415`` for an empty file or one that is not an image by its first bytes."""
    if not upload.data:
        raise HTTPException(415, f"{upload.name}: empty file, not an image")
    if not is_image_bytes(upload.data):
        raise HTTPException(
            415,
            f"{upload.name}: not an image (content type {upload.content_type!r}); "
            "send a JPEG, PNG, GIF, BMP, TIFF or WebP file",
        )


def header_pixels(upload: Upload) -> int:
    """Width x height from the image header (nothing decoded); ``422`` if there is none."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(upload.data)) as im:
                width, height = im.size
    except Image.DecompressionBombError:
        return 2**62  # beyond any budget; the budget check names it
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise HTTPException(422, f"{upload.name}: unreadable image header ({err})") from err
    return int(width) * int(height)


def check_budget(uploads: list[Upload], max_pixels: int, max_total_pixels: int) -> None:
    """``413`` when one image's header says more than ``max_pixels`` pixels, or all of them
    together more than ``max_total_pixels``; runs before any decoding."""
    total = 0
    for up in uploads:
        pixels = header_pixels(up)
        if pixels > max_pixels:
            raise HTTPException(
                413,
                f"{up.name}: {_mp(pixels)} pixels, over this server's budget of {_mp(max_pixels)} "
                "per image: downscale it (the operator sets the budget with --max-pixels)",
            )
        total += pixels
    if total > max_total_pixels:
        raise HTTPException(
            413,
            f"these {len(uploads)} images have {_mp(total)} pixels together, over this server's "
            f"budget of {_mp(max_total_pixels)} per request: send fewer or smaller photos "
            "(the operator sets it with --max-total-pixels)",
        )


def _mp(pixels: int) -> str:
    return "over 2^62" if pixels >= 2**62 else f"{pixels / 1e6:.1f} million"
