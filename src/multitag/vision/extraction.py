"""Running an encoder over image files, with an on-disk feature cache keyed by content.

:func:`run_encoder` encodes a list of files with an inference engine (bad files are reported,
never raised); :func:`extract_features` does the same through a :class:`FeatureCache`, so an
image whose bytes were seen before (by any run with the same encoder settings,
:func:`encoder_cache_id`) is never encoded twice; :func:`extract_prefix` caches the output of
a frozen backbone prefix, so training the upper stages never re-runs the frozen ones.

Where the encoder runs: in this process, or on a :class:`RemoteEncoder` made active by
:func:`encoding_on` (``--engine ray``: :class:`multitag.vision.ray_engine.RayEncoder`). Every
encoder pass goes through :func:`encode_batches`, so one switch moves them all; the cache is
filled here either way, so what follows (training, tagging from cached features) is the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from multitag.core.digest import file_digest
from multitag.core.progress import bar
from multitag.data.views import view_id
from multitag.vision.engines import inference_precision, resolve_engine, runner_for
from multitag.vision.features import FEATURE_VERSION, Encoder, PrefixEncoder, iter_batches


def encoder_cache_id(
    encoder: Encoder, backbone: str, weights, precision: str, engine: str = "auto"
) -> dict:
    """What identifies cached features of ``encoder``: backbone, weights, preprocessing,
    stages, grid stages, colour bins, the resolved precision and engine (for int8, also the
    calibration set: int8 features never mix with float ones, nor with another calibration's).
    The tagger and the embedder both key their caches with this, so one extraction serves
    both."""
    from multitag.vision import backbones

    precision = inference_precision(precision, engine)
    calibration = getattr(encoder, "calibration", None)
    int8 = {"calibration": calibration.digest} if precision == "int8" and calibration else {}
    return {
        "backbone": backbones.resolve_name(backbone),
        "weights": str(weights),
        "preprocessing": encoder.preprocessing.to_dict(),
        "stages": encoder.stages,
        "colour_bins": encoder.colour_bins,
        "grid_stages": encoder.grid_stages,
        "precision": precision,
        "engine": resolve_engine(engine),
        **int8,
    }


class FeatureCache:
    """Features on disk, keyed by encoder identity and image content.

    Layout: ``ROOT/<encoder key>/shard-NNNNN.{feats,keys}.npy`` + ``encoder.json``. The keys file
    is written last (atomically), so a killed run leaves complete shards only; extraction
    resumes from what is there.
    """

    def __init__(self, root: str | os.PathLike, encoder_id: dict) -> None:
        blob = json.dumps({**encoder_id, "version": FEATURE_VERSION}, sort_keys=True)
        self.key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self.dir = Path(root) / self.key
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "encoder.json").write_text(blob)
        self._rows: dict[str, tuple[int, int]] = {}
        self._shards: dict[int, np.ndarray] = {}
        for keys_file in sorted(self.dir.glob("shard-*.keys.npy")):
            shard = int(keys_file.name.split("-")[1].split(".")[0])
            for row, k in enumerate(np.load(keys_file)):
                self._rows[str(k)] = (shard, row)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Stack the cached features of ``keys`` (all must be present) as float32."""
        out = None
        for i, k in enumerate(keys):
            shard, row = self._rows[k]
            if shard not in self._shards:
                path = self.dir / f"shard-{shard:05d}.feats.npy"
                self._shards[shard] = np.load(path, mmap_mode="r")
            vec = self._shards[shard][row]
            if out is None:
                out = np.empty((len(keys), vec.shape[0]), dtype=np.float32)
            out[i] = vec
        return out if out is not None else np.empty((0, 0), dtype=np.float32)

    def put(self, keys: Sequence[str], features: np.ndarray) -> None:
        """Append a shard (float16 on disk)."""
        if not len(keys):
            return
        shard = max((s for s, _ in self._rows.values()), default=-1) + 1
        base = self.dir / f"shard-{shard:05d}"
        for suffix, arr in (
            (".feats.npy", features.astype(np.float16)),
            (".keys.npy", np.asarray(keys)),
        ):
            tmp = base.with_name(base.name + suffix + ".tmp")
            with open(tmp, "wb") as fh:
                np.save(fh, arr)
            os.replace(tmp, base.with_name(base.name + suffix))
        for row, k in enumerate(keys):
            self._rows[k] = (shard, row)


@dataclass
class FeatureResult:
    """Features for every input path; rows of failed images are zero and listed in ``errors``.
    ``digests`` holds each file's content digest (``""`` where unreadable) when the cache
    computed them, so callers need not read every photo a second time."""

    features: np.ndarray
    errors: dict[int, str]
    imagenet_logits: np.ndarray | None = None
    digests: list[str] | None = None

    @property
    def ok(self) -> np.ndarray:
        mask = np.ones(len(self.features), dtype=bool)
        mask[list(self.errors)] = False
        return mask


class RemoteEncoder:
    """Runs encoder passes elsewhere (on Ray: :class:`~multitag.vision.ray_engine.RayEncoder`).

    :meth:`encode` takes :func:`encode_batches`' arguments and yields its stream
    ``(rows, errors, features, logits)``, rows in any order. ``failed`` maps the content
    digest of each photo it could not decode to the reason, so a later pass over the same
    photos (a catalogue's chunks after its one cache-filling pass) does not ship them again.
    """

    def __init__(self) -> None:
        self.failed: dict[str, str] = {}

    def encode(self, encoder, paths, **kwargs) -> Iterator:
        raise NotImplementedError

    def close(self) -> None:
        """Release what :meth:`encode` started (called when :func:`encoding_on` ends)."""


_REMOTE: ContextVar[RemoteEncoder | None] = ContextVar("multitag_remote_encoder", default=None)


@contextlib.contextmanager
def encoding_on(remote: RemoteEncoder | None) -> Iterator[RemoteEncoder | None]:
    """Every encoder pass in the block runs on ``remote`` (``None``: in this process);
    ``remote`` is closed at the end."""
    token = _REMOTE.set(remote)
    try:
        yield remote
    finally:
        _REMOTE.reset(token)
        if remote is not None:
            remote.close()


def remote_encoder() -> RemoteEncoder | None:
    """The :class:`RemoteEncoder` active here, if any."""
    return _REMOTE.get()


@torch.inference_mode()
def encode_batches(
    encoder: Encoder,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 64,
    workers: int | None = None,
    precision: str = "auto",
    engine: str = "auto",
    device: torch.device | None = None,
    progress: bool = True,
    description: str = "features",
    view: str | None = None,
    view_seed: int = 0,
) -> Iterator[tuple[np.ndarray, dict[int, str], torch.Tensor | None, torch.Tensor | None]]:
    """The one encoder loop: decode ``paths`` in threads (each photo as the extra ``view``
    makes it when given, :mod:`multitag.data.views`) and run ``engine`` (see
    :mod:`multitag.vision.engines`), yielding per batch ``(rows, errors, features, logits)``
    (``features`` None when no image of the batch decoded; ``logits`` None without an
    ImageNet classifier). Bad files are reported in ``errors``, never raised. Under
    :func:`encoding_on` the batches are computed remotely (rows then come in any order)."""
    remote = _REMOTE.get()
    if remote is not None and len(paths):
        yield from remote.encode(
            encoder, list(paths), batch_size=batch_size, workers=workers, precision=precision,
            engine=engine, progress=progress, description=description, view=view,
            view_seed=view_seed,
        )  # fmt: skip
        return
    runner = runner_for(encoder, engine, precision, device)
    prep = encoder.preprocessing
    loader = iter_batches(
        paths,
        prep.image_size,
        batch_size,
        workers,
        framing=prep.framing,
        detail=prep.detail,
        view=view,
        view_seed=view_seed,
    )
    with bar(description, len(paths), enabled=progress and len(paths) > batch_size) as pbar:
        batches = (((indices, errs), images) for indices, images, errs in loader)
        for (indices, errs), out in runner.stream(batches):
            features, logits = (None, None) if out is None else out
            yield indices.numpy(), errs, features, logits
            pbar.advance(len(indices) + len(errs))


def run_encoder(encoder: Encoder, paths: Sequence[str | os.PathLike], **kwargs) -> FeatureResult:
    """Encode ``paths`` (no cache) into arrays: :func:`encode_batches` collected."""
    feats = np.zeros((len(paths), encoder.out_dim), dtype=np.float32)
    logits = None
    errors: dict[int, str] = {}
    for rows, errs, f, lg in encode_batches(encoder, paths, **kwargs):
        errors.update(errs)
        if f is not None:
            feats[rows] = f.numpy()
            if lg is not None:
                if logits is None:
                    logits = np.zeros((len(paths), lg.shape[1]), dtype=np.float32)
                logits[rows] = lg.numpy()
    return FeatureResult(feats, errors, logits)


def extract_features(
    encoder: Encoder,
    paths: Sequence[str | os.PathLike],
    *,
    cache_dir: str | os.PathLike | None = None,
    encoder_id: dict | None = None,
    shard_size: int = 4096,
    progress: bool = True,
    view: str | None = None,
    view_seed: int = 0,
    **kwargs,
) -> FeatureResult:
    """Encode ``paths``, reusing and filling the on-disk cache when ``cache_dir`` is given.

    ``encoder_id`` must identify the encoder's weights and settings (see ``Encoder`` users).
    An extra ``view`` (:mod:`multitag.data.views`) is cached apart from the photos as they
    are: its :func:`~multitag.data.views.view_id` joins the cache key.
    """
    kwargs.update(view=view, view_seed=view_seed)
    if cache_dir is None:
        return run_encoder(encoder, paths, progress=progress, **kwargs)
    cache, keys, errors = _fill(encoder, paths, cache_dir, encoder_id, shard_size, progress, kwargs)
    feats = np.zeros((len(paths), 0), dtype=np.float32)
    present = [i for i, k in enumerate(keys) if k is not None and i not in errors]
    if present:
        got = cache.get([keys[i] for i in present])
        feats = np.zeros((len(paths), got.shape[1]), dtype=np.float32)
        feats[present] = got
    return FeatureResult(feats, errors, digests=[k or "" for k in keys])


def fill_cache(
    encoder: Encoder,
    paths: Sequence[str | os.PathLike],
    *,
    cache_dir: str | os.PathLike,
    encoder_id: dict,
    shard_size: int = 4096,
    progress: bool = True,
    view: str | None = None,
    view_seed: int = 0,
    **kwargs,
) -> dict[int, str]:
    """:func:`extract_features` without reading the features back: encode the photos of
    ``paths`` not in the cache yet and store them; returns ``{row: reason}`` for those that
    cannot be read. A job that then works in chunks (the catalogue) finds every photo cached,
    so its encoder pass ran once over everything (on a remote engine: one pool of actors)."""
    kwargs.update(view=view, view_seed=view_seed)
    return _fill(encoder, paths, cache_dir, encoder_id, shard_size, progress, kwargs)[2]


def _fill(encoder, paths, cache_dir, encoder_id, shard_size, progress, kwargs):
    """Hash ``paths``, encode those not in the cache (here, or on the active remote encoder)
    and store them: ``(cache, keys, errors)``, keys ``None`` where a file cannot be read."""
    if encoder_id is None:
        raise ValueError("extract_features: encoder_id is required with cache_dir")
    if kwargs.get("view") is not None:  # absent for the photos as they are: old caches match
        encoder_id = {**encoder_id, "view": view_id(kwargs["view"], kwargs["view_seed"])}
    cache = FeatureCache(cache_dir, encoder_id)
    errors: dict[int, str] = {}
    keys: list[str | None] = []
    with bar("hashing images", len(paths), enabled=progress and len(paths) > 2000) as pbar:
        for i, p in enumerate(paths):
            try:
                keys.append(file_digest(p))
            except OSError as err:
                keys.append(None)
                errors[i] = f"cannot read file ({err.strerror or err})"
            pbar.advance()
    todo = [i for i, k in enumerate(keys) if k is not None and k not in cache]
    remote = _REMOTE.get()
    if remote is not None and todo:
        _fill_remotely(remote, cache, encoder, paths, keys, todo, shard_size, progress, kwargs)
        errors.update({i: remote.failed[keys[i]] for i in todo if keys[i] in remote.failed})
        return cache, keys, errors
    for start in range(0, len(todo), shard_size):
        chunk = todo[start : start + shard_size]
        res = run_encoder(
            encoder,
            [paths[i] for i in chunk],
            progress=progress,
            description=f"features {start + len(chunk)}/{len(todo)} new",
            **kwargs,
        )
        good = [j for j in range(len(chunk)) if j not in res.errors]
        # several paths may share content: store each key once
        seen: dict[str, int] = {}
        for j in good:
            seen.setdefault(keys[chunk[j]], j)
        cache.put(list(seen), res.features[list(seen.values())])
        errors.update({chunk[j]: reason for j, reason in res.errors.items()})
    return cache, keys, errors


def _fill_remotely(remote, cache, encoder, paths, keys, todo, shard_size, progress, kwargs):
    """The uncached photos ``todo`` (each content once, none that ``remote`` failed on
    before) in one remote pass; a cache shard is committed every ``shard_size`` results as
    they arrive, so a killed job keeps what was computed. Failures go to ``remote.failed``."""
    first: dict[str, int] = {}
    for i in todo:
        if keys[i] not in remote.failed:
            first.setdefault(keys[i], i)
    unique = list(first.values())
    if not unique:
        return
    done_keys: list[str] = []
    done_feats: list[np.ndarray] = []

    def commit() -> None:
        if done_keys:
            cache.put(list(done_keys), np.concatenate(done_feats))
            done_keys.clear()
            done_feats.clear()

    stream = remote.encode(
        encoder, [paths[i] for i in unique], progress=progress, logits=False,
        description=f"features {len(unique)} new", **kwargs,
    )  # fmt: skip
    for rows, errs, feats, _ in stream:
        for j, reason in dict(errs).items():  # pairs or a dict, as encode_batches yields
            remote.failed[keys[unique[j]]] = reason
        if feats is not None:
            done_keys.extend(keys[unique[j]] for j in rows)
            done_feats.append(feats.numpy())
            if len(done_keys) >= shard_size:
                commit()
    commit()


def extract_prefix(
    encoder: Encoder,
    paths: Sequence[str | os.PathLike],
    block: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    encoder_id: dict | None = None,
    engine: str = "auto",
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor, dict[int, str]]:
    """Frozen-prefix outputs of ``paths``: ``(activations fp16 NCHW, prefix features, errors)``.

    Cached like features (fp16 on disk, keyed by ``encoder_id`` + the stage + the engine +
    image content), so training the upper stages never re-runs the frozen ones. Computed by
    the inference ``engine`` (OpenVINO where installed, faster than PyTorch; in fp32 the maps
    match PyTorch's within 1e-4, and they are stored as fp16 anyway)."""
    prefix_encoder = PrefixEncoder(encoder, block)
    kwargs["engine"] = engine = resolve_engine(engine)
    if cache_dir is not None:
        if encoder_id is None:
            raise ValueError("extract_prefix: encoder_id is required with cache_dir")
        encoder_id = {
            **encoder_id,
            "engine": engine,
            "prefix_stage": f"blocks.{block}",
            "kind": "stage-activations",
        }
    res = extract_features(
        prefix_encoder, paths, cache_dir=cache_dir, encoder_id=encoder_id, **kwargs
    )
    rows = res.features
    if rows.shape[1] == 0:
        rows = np.zeros((len(paths), prefix_encoder.out_dim), dtype=np.float32)
    acts, prefix = prefix_encoder.split(rows)
    return acts, prefix, res.errors
