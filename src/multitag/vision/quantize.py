"""int8 encoders: NNCF post-training quantization of a converted OpenVINO encoder.

``--precision int8`` runs the frozen backbone's convolutions in int8 (VNNI / AMX on the CPU)
and everything else as before. The quantization ranges come from a *calibration set*: a few
hundred of the model's own training photos (:class:`Calibration`, recorded when the tagger is
fitted and saved in its ``config.json``), preprocessed exactly as at tagging time. Photos the
model is later scored on (a validation split, fashion-products-hires) never calibrate it.

Only the CNN is quantized: the colour features (histograms, CIELAB layout) and the input
normalisation are computed from the raw pixels and would lose their meaning in int8, so every
node that no convolution feeds is left out (:func:`backbone_only_scope`), and so are the
stem and head convolutions (the first sees the raw photo, the second's pooled output is the
heads' main input; in float they cut int8's loss against bf16 most, see docs/precision.md),
the depthwise convolutions and the pooling of stage maps.

Quantized models are cached beside the converted ones (:mod:`multitag.vision.engine_cache`),
keyed by the converted model's key, the calibration set's digest, :data:`SCHEME` and the
NNCF version, so a second run (another process, the API) reuses it instead of calibrating
again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CALIBRATION_SIZE = 300  # training photos that set the int8 ranges
CALIBRATION_BATCH = 32
#: what is quantized, in the int8 cache key: a change re-quantizes instead of reusing
SCHEME = "v2-stem-head-depthwise-pool-colour-float"
#: op types kept in float besides the colour branch (see the module docstring)
KEEP_FLOAT_TYPES = ["GroupConvolution", "ReduceMean", "AdaptiveAvgPool"]
CALIBRATIONS = 0  # quantizations run in this process (a cache hit does not count)


def nncf_available() -> bool:
    return importlib.util.find_spec("nncf") is not None


def nncf_version() -> str:
    try:
        return importlib.metadata.version("nncf")
    except importlib.metadata.PackageNotFoundError:
        return "?"


@dataclass(frozen=True)
class Calibration:
    """The photos that calibrate an int8 encoder: paths as found at fit time and the content
    digest of each, so a photo that has changed since is noticed, not silently used."""

    paths: tuple[str, ...]
    digests: tuple[str, ...]

    @property
    def digest(self) -> str:
        """What the set is, independent of where its photos lie (the cache key part)."""
        return hashlib.blake2b("\n".join(sorted(self.digests)).encode(), digest_size=16).hexdigest()

    def to_dict(self) -> dict:
        return {"paths": list(self.paths), "digests": list(self.digests)}

    @classmethod
    def from_dict(cls, d: dict | None) -> Calibration | None:
        if not d or not d.get("paths"):
            return None
        return cls(tuple(d["paths"]), tuple(d["digests"]))

    @classmethod
    def sample(
        cls,
        paths: Sequence[str | os.PathLike],
        digests: Sequence[str] | None = None,
        n: int = CALIBRATION_SIZE,
        seed: int = 0,
    ) -> Calibration:
        """A seeded sample of ``n`` of ``paths`` (training photos), with their digests
        (given, e.g. by the feature cache, or read here; unreadable photos are left out)."""
        from multitag.core.digest import file_digest

        rng = np.random.default_rng(seed)
        order = rng.permutation(len(paths))
        chosen, sums = [], []
        for i in order:
            known = digests[i] if digests is not None else ""
            if not known:
                try:
                    known = file_digest(paths[i])
                except OSError:
                    continue
            chosen.append(str(Path(paths[i]).resolve()))
            sums.append(known)
            if len(chosen) == n:
                break
        return cls(tuple(chosen), tuple(sums))

    def check(self) -> None:
        """Every photo present and unchanged, else a ValueError naming the first that is not
        and what to do."""
        from multitag.core.digest import file_digest

        for path, digest in zip(self.paths, self.digests):
            try:
                same = file_digest(path) == digest
            except OSError:
                same = None
            if not same:
                what = "is missing" if same is None else "has changed since the model was trained"
                raise ValueError(
                    f"int8 calibration photo {path} {what}: run where the model's training "
                    "photos are (once: the int8 encoder is cached), or use --precision bf16"
                )


def backbone_only_scope(graph) -> list[str]:
    """Names of the nodes to keep in float: those no convolution feeds (the input
    normalisation and the colour features), the stem convolution (on the raw photo) and the
    head convolution (whose pooled output is the heads' main input)."""
    fed: set[str] = set()
    stack = [op for op in graph.get_ordered_ops() if op.get_type_name() == "Convolution"]
    while stack:
        op = stack.pop()
        name = op.get_friendly_name()
        if name in fed:
            continue
        fed.add(name)
        stack.extend(t.get_node() for out in op.outputs() for t in out.get_target_inputs())
    names = [op.get_friendly_name() for op in graph.get_ordered_ops()]
    convs = [
        op.get_friendly_name()
        for op in graph.get_ordered_ops()
        if op.get_type_name() == "Convolution"
    ]
    return [name for name in names if name not in fed] + convs[:1] + convs[-1:]


def quantize(graph, encoder, calibration: Calibration):
    """``graph`` (the encoder converted by :func:`multitag.vision.engines.convert`) with its
    backbone quantized to int8, calibrated on ``calibration``'s photos preprocessed as
    ``encoder`` preprocesses every photo."""
    global CALIBRATIONS
    if not nncf_available():
        from multitag.core.next_step import install_extra

        raise ImportError(f"precision 'int8' needs the nncf package: {install_extra('fast')}")
    import nncf

    from multitag.vision.features import iter_batches

    calibration.check()
    prep = encoder.preprocessing
    batches = [
        images.numpy()
        for _, images, _ in iter_batches(
            list(calibration.paths),
            prep.image_size,
            CALIBRATION_BATCH,
            framing=prep.framing,
            detail=prep.detail,
        )
        if images is not None
    ]
    if not batches:
        raise ValueError("int8 calibration: none of the calibration photos could be decoded")
    scope = nncf.IgnoredScope(
        names=backbone_only_scope(graph), types=KEEP_FLOAT_TYPES, validate=False
    )
    nncf.set_log_level(logging.WARNING)  # not one INFO line per node left in float
    quantized = nncf.quantize(
        graph,
        nncf.Dataset(batches),
        subset_size=len(batches),  # a dataset item is one batch
        ignored_scope=scope,
    )
    CALIBRATIONS += 1
    return quantized
