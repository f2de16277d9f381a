"""Converted OpenVINO models on disk, keyed by what the encoder computes (not which object).

``openvino.convert_model`` traces the encoder and takes ~6-9 s for Lite0 on 2 cores, while
reading the saved IR back takes ~0.04 s. Every process that tags with a reloaded model (the
CLI, the API, a Ray worker, each member of an ensemble) would pay the conversion again; this
cache pays it once per machine.

The key (:func:`content_key`) is a hash of everything the traced graph depends on: the
weights (every parameter and buffer, byte for byte), each submodule's class, source file and
plain attributes (stages, preprocessing, ...), the input size, whether logits are returned,
and the torch / timm / openvino / multitag versions. Two encoders with equal keys compute
the same function, so they can share one conversion. An attribute whose ``repr`` names an
object address cannot be keyed stably: such encoders get ``None`` and are not cached on disk.

Layout: ``$MULTITAG_CACHE/openvino/<key>/model.{xml,bin}`` (fp32 weights, never compressed),
written to a temporary folder and renamed, so a killed run leaves no half model. The
:data:`KEEP` most recently used models are kept. ``MULTITAG_OPENVINO_CACHE=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import inspect
import os
import shutil
import uuid
import warnings
from pathlib import Path

import torch
from torch import nn

from multitag.core import runtime

KEEP = 16  # converted models kept on disk (Lite0 ~14 MB, Lite2 ~25 MB each)
_SKIP_ATTRS = {"_parameters", "_buffers", "_modules", "training"}


def enabled() -> bool:
    return os.environ.get("MULTITAG_OPENVINO_CACHE", "1").lower() not in ("0", "false", "off")


def cache_root() -> Path:
    return runtime.default_cache_dir() / "openvino"


@functools.cache
def _versions() -> str:
    out = []
    for dist in ("torch", "timm", "openvino", "multitag"):
        try:
            out.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{dist}=?")
    return ";".join(out)


def _source_digest(classes: set[type]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for path in sorted({inspect.getfile(c) for c in classes}):
        h.update(path.encode())
        with contextlib.suppress(OSError):  # compiled / frozen: the versions stand for it
            h.update(Path(path).read_bytes())
    return h.hexdigest()


def content_key(module: nn.Module, image_size: int, with_logits: bool) -> str | None:
    """A hash of what ``module`` computes on ``image_size`` px uint8 input, or ``None``
    when some attribute cannot be keyed stably (see the module docstring)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{_versions()}|{image_size}|{with_logits}".encode())
    classes = set()
    for name, sub in module.named_modules():
        classes.add(type(sub))
        h.update(f"{name}:{type(sub).__module__}.{type(sub).__qualname__}".encode())
        for attr, value in sorted(vars(sub).items()):
            if attr in _SKIP_ATTRS:
                continue
            text = repr(value)
            if " at 0x" in text:  # a function or object identity: not stable across runs
                return None
            h.update(f"{attr}={text}".encode())
    h.update(_source_digest(classes).encode())
    tensors = [*module.named_parameters(), *module.named_buffers()]
    for name, t in tensors:
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{t.numel()}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load(key: str):
    """The cached ``openvino.Model`` for ``key``, or ``None`` (absent or unreadable)."""
    path = cache_root() / key / "model.xml"
    if not path.is_file():
        return None
    import openvino as ov

    try:
        model = ov.Core().read_model(path)
    except Exception as err:  # a damaged file: convert again (and overwrite it)
        warnings.warn(f"ignoring unreadable cached OpenVINO model {path}: {err}", stacklevel=2)
        shutil.rmtree(path.parent, ignore_errors=True)
        return None
    os.utime(path.parent)  # most recently used
    return model


def save(key: str, model) -> None:
    """Write ``model`` under ``key`` atomically, then keep the :data:`KEEP` newest."""
    import openvino as ov

    root = cache_root()
    final = root / key
    tmp = root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        ov.save_model(model, tmp / "model.xml", compress_to_fp16=False)
        os.replace(tmp, final)
    except OSError as err:  # read-only or full disk, or another process won the rename
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / "model.xml").is_file():
            warnings.warn(f"could not cache the OpenVINO model in {root}: {err}", stacklevel=2)
        return
    _prune(root)


def _prune(root: Path, keep: int = KEEP) -> None:
    done = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".tmp-")]
    done.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in done[keep:]:
        shutil.rmtree(old, ignore_errors=True)
