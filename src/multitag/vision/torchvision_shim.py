"""Make ``import torchvision`` work with a CPU-only torch.

The torchvision 0.28.0 wheel on PyPI is a CUDA build. Its C extension fails to
load against the CPU torch wheel, and ``torchvision._meta_registrations`` then
calls ``torch.library.register_fake("torchvision::nms")`` for an operator that
was never defined, which raises ``operator torchvision::nms does not exist``.
Since ``timm`` imports torchvision, the whole toolkit would fail to import.

:func:`patch` wraps ``torch.library.register_fake`` so that a registration for a
``torchvision::`` operator that does not exist becomes a no-op. Where the
operator exists (a healthy torchvision), nothing changes. We never use those
detection ops (nms, roi_align, ...); image decoding uses Pillow, not
``torchvision.io``. Call :func:`patch` before the first torchvision import;
``multitag/__init__.py`` does it.
"""

from __future__ import annotations

import functools

import torch
import torch.library

_PATCHED = False


def _op_exists(qualname: str) -> bool:
    namespace, _, name = qualname.partition("::")
    name = name.split(".")[0]
    try:
        return torch._C._dispatch_has_kernel(f"{namespace}::{name}") or hasattr(
            getattr(torch.ops, namespace), name
        )
    except (AttributeError, RuntimeError):
        return False


def patch() -> None:
    """Idempotently guard torchvision's fake-kernel registrations."""
    global _PATCHED
    if _PATCHED:
        return
    original = torch.library.register_fake

    @functools.wraps(original)
    def register_fake(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::") and not _op_exists(op):
            if args and callable(args[0]):  # direct form: register_fake(op, fn)
                return args[0]
            return lambda fn: fn  # decorator form
        return original(op, *args, **kwargs)

    torch.library.register_fake = register_fake
    _PATCHED = True
