"""Backbone features: a pipelined image loader and a multi-stage pooling encoder.

The :class:`Encoder` wraps a timm model. Images arrive as uint8 tensors (decoded by loader
workers in parallel with the forward pass); normalisation runs inside the model, under bf16
autocast and channels_last where the hardware benefits. Pooled features from several stages
are concatenated: early stages keep the colour information the last layer has pooled away.
Running an encoder over files, and the on-disk feature cache, are in
:mod:`multitag.vision.extraction`.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from multitag.core import runtime
from multitag.data.detail import Detail, match_detail
from multitag.data.framing import Framing, reframe
from multitag.data.images import ImageDecodeError, load_image
from multitag.data.resize import resize_to_square
from multitag.data.views import apply_view

FEATURE_VERSION = 5  # bump when the meaning of cached features changes


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a tensor: optional product framing
    (:func:`~multitag.data.framing.reframe`), then an optional downscale to the training
    photos' level of detail (:func:`~multitag.data.detail.match_detail`),
    square resize (no crop), mean/std normalisation."""

    image_size: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    framing: Framing | None = None
    detail: Detail | None = None

    def to_dict(self) -> dict:
        d = {"image_size": self.image_size, "mean": self.mean, "std": self.std}
        # absent = step off: configs and feature caches from before each step still match
        if self.framing is not None:
            d["framing"] = self.framing.to_dict()
        if self.detail is not None:
            d["detail"] = self.detail.to_json()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        framing = Framing.from_dict(d["framing"]) if d.get("framing") else None
        detail = Detail.from_json(d["detail"]) if d.get("detail") else None
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]), framing, detail)

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        image_size: int | None = None,
        framing: Framing | None = None,
        detail: Detail | None = None,
    ) -> Preprocessing:
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        size = image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
        if size < 32 or size > 1024:
            raise ValueError(f"image_size must be between 32 and 1024, not {size}")
        mean, std = tuple(cfg.get("mean", (0.5,) * 3)), tuple(cfg.get("std", (0.5,) * 3))
        return cls(size, mean, std, framing, detail)


class ImageDataset(Dataset):
    """Decode ``paths`` to uint8 HxWx3 arrays at their own size (:func:`_collate` resizes a
    batch at once), as the extra ``view`` makes them when given (:mod:`multitag.data.views`),
    reframed when ``framing`` is given and brought down to the training photos' ``detail``
    when sharper (:mod:`multitag.data.detail`); a bad file yields an error string, never raises."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        image_size: int,
        max_pixels=None,
        framing: Framing | None = None,
        detail: Detail | None = None,
        view: str | None = None,
        view_seed: int = 0,
    ):
        self.paths = [str(p) for p in paths]
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.framing = framing
        self.detail = detail
        self.view = view
        self.view_seed = view_seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str]:
        path = self.paths[index]
        try:
            kwargs = {} if self.max_pixels is None else {"max_pixels": self.max_pixels}
            img = load_image(path, target_size=self.image_size, **kwargs)
        except ImageDecodeError as err:
            return index, None, err.reason
        array = np.asarray(img)
        if self.view is not None:
            array = apply_view(array, self.view, self.view_seed)
        photo_pixels = array.shape[0] * array.shape[1]
        if self.framing is not None:
            array = reframe(array, self.framing)
        return index, match_detail(array, self.detail, photo_pixels), ""


def _collate(items, image_size: int):
    indices = [i for i, x, _ in items if x is not None]
    arrays = [x for _, x, _ in items if x is not None]
    errors = [(i, e) for i, x, e in items if x is None]
    images = resize_to_square(arrays, image_size) if arrays else None
    return torch.tensor(indices, dtype=torch.long), images, errors


def iter_batches(
    paths: Sequence[str | os.PathLike],
    image_size: int,
    batch_size: int = 64,
    workers: int | None = None,
    prefetch: int = 3,
    max_pixels: int | None = None,
    framing: Framing | None = None,
    detail: Detail | None = None,
    view: str | None = None,
    view_seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, list[tuple[int, str]]]]:
    """Batches of ``(indices, uint8 images, [(index, reason), ...])``, decoded (as ``view``
    makes them when given, reframed when ``framing`` is given, brought down to the
    training photos' ``detail`` when sharper) ahead.

    Decoding runs in a thread pool (Pillow releases the GIL while decoding and resizing), so
    it overlaps the forward pass without the start-up and copy costs of worker processes;
    at most ``prefetch`` batches wait in memory.
    """
    dataset = ImageDataset(paths, image_size, max_pixels, framing, detail, view, view_seed)
    starts = range(0, len(dataset), batch_size)

    def decode(start: int):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        return _collate(items, image_size)

    threads = runtime.loader_workers(workers)
    if threads == 0:
        for start in starts:
            yield decode(start)
        return
    pending: collections.deque = collections.deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="multitag-decode") as pool:
        for start in starts:
            pending.append(pool.submit(decode, start))
            if len(pending) > prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


HSV_BINS = (16, 4, 4)
STAGE_GRID = (3, 2)  # rows x columns of the spatial pooling of mid-level stages
COLOUR_GRID = (6, 4)  # rows x columns of the foreground colour layout
PRODUCT_BINS = 28  # 12 hues x 2 saturations + 4 grey levels
COLOUR_STATS_POOL = 4  # colour layout / product colour are computed on a 4x smaller image


def default_grid_stages(feature_info: Sequence[dict]) -> list[int]:
    """The stages at stride 8 and 16: the last maps that still say *where* something is
    (upper body or feet, product or the model wearing it) before the network pools it away."""
    return [i for i, s in enumerate(feature_info) if s.get("reduction") in (8, 16)]


def pool_stage(x: torch.Tensor, grid: bool) -> list[torch.Tensor]:
    """What one tapped stage map contributes to the feature vector: its global average pool,
    then (``grid``) its ``STAGE_GRID`` average pool."""
    x = x.float()
    out = [x.mean((2, 3))]
    if grid:
        out.append(F.adaptive_avg_pool2d(x, STAGE_GRID).flatten(1))
    return out


def _srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """0-255 float NCHW sRGB -> CIELAB (D65) / 100, so the three channels are of order 1."""
    c = rgb / 255.0
    c = torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = torch.tensor(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]],
        dtype=c.dtype,
        device=c.device,
    ) / torch.tensor([[0.9505], [1.0], [1.089]], dtype=c.dtype, device=c.device)
    xyz = torch.einsum("ij,njhw->nihw", m, c)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-6) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lab = torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)
    return lab / 100.0


def _skin_mask(x: torch.Tensor) -> torch.Tensor:
    """Pixels in the classic YCbCr skin range (models wearing the product), NHW bool."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    cr = 128 + 0.5 * r - 0.4187 * g - 0.0813 * b
    cb = 128 - 0.1687 * r - 0.3313 * g + 0.5 * b
    return (cr > 135) & (cr < 173) & (cb > 77) & (cb < 127) & (r > g) & (r > 95)


def _hsv(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per pixel of a 0-255 float NCHW RGB batch: hue in [0, 1), saturation in [0, 1],
    value (0-255) and chroma (max - min channel, 0-255)."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = x.amax(1)
    c = v - x.amin(1)
    s = torch.where(v > 0, c / v.clamp_min(1e-6), torch.zeros_like(v))
    safe = c.clamp_min(1e-6)
    h = torch.where(
        v == r, ((g - b) / safe) % 6, torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    h = torch.where(c > 0, h / 6.0, torch.zeros_like(h))
    return h, s, v, c


def _hsv_index(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel HSV bin index (``HSV_BINS``) of a 0-255 float NCHW RGB batch."""
    h, s, v, _ = _hsv(x)
    nh, ns, nv = HSV_BINS
    hi = (h * nh).floor().clamp(0, nh - 1).long()
    si = (s * ns).floor().clamp(0, ns - 1).long()
    vi = (v / 256.0 * nv).floor().clamp(0, nv - 1).long()
    return hi * ns * nv + si * nv + vi


def _product_bin(x: torch.Tensor) -> torch.Tensor:
    """Per pixel of a 0-255 NCHW batch: 12 hues x 2 saturations for chromatic pixels,
    4 grey levels (by value) for the rest -> bin index in [0, PRODUCT_BINS)."""
    h, s, v, c = _hsv(x)
    hue = (h * 12).floor().clamp(0, 11).long() * 2 + (s * 2).floor().clamp(0, 1).long()
    grey = 24 + (v / 64.0).floor().clamp(0, 3).long()
    return torch.where((s > 0.25) & (c > 25), hue, grey)


def _is_staged(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")) and (
        type(model).__name__ == "EfficientNet"
    )


class Encoder(nn.Module):
    """timm model -> one feature vector per image: pooled stages, head and colour.

    Layout: for each tapped stage its global-average pool (``stages``: indices into the
    model's ``feature_info``, ``None`` = all) followed, for ``grid_stages``, by a
    ``STAGE_GRID`` (3x2) average pool that keeps where things are; then the pooled head
    activation; then the colour features (:meth:`colour_features`). ``forward`` returns
    ``(features, imagenet_logits)``, the logits being ``None`` when ``with_imagenet`` is false.
    """

    def __init__(
        self,
        model: nn.Module,
        preprocessing: Preprocessing,
        stages: Sequence[int] | None = None,
        with_imagenet: bool = True,
        colour_bins: int = 6,
        grid_stages: Sequence[int] | str = "auto",
    ) -> None:
        super().__init__()
        self.model = model
        self.colour_bins = colour_bins
        self.preprocessing = preprocessing
        info = list(model.feature_info)
        self.stages = list(range(len(info))) if stages is None else sorted(stages)
        self.stage_names = [info[i]["module"] for i in range(len(info))]
        if isinstance(grid_stages, str):
            if grid_stages != "auto":
                raise ValueError(
                    f"grid_stages: 'auto' or a list of stage indices, not {grid_stages!r}"
                )
            grid_stages = default_grid_stages(info)
        self.grid_stages = sorted(int(i) for i in grid_stages if int(i) in self.stages)
        self.with_imagenet = with_imagenet
        self.staged = _is_staged(model)
        if self.staged:
            ends = {int(info[i]["module"].split(".")[1]): i for i in self.stages}
            self._take_blocks = ends
        cells = STAGE_GRID[0] * STAGE_GRID[1]
        pooled_dims = sum(
            info[i]["num_chs"] * (1 + (cells if i in self.grid_stages else 0)) for i in self.stages
        )
        self.head_slice = (pooled_dims, pooled_dims + model.num_features)
        self.colour_dim = sum(self.colour_parts().values())
        self.out_dim = pooled_dims + model.num_features + self.colour_dim
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1) * 255)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0-255 float) NCHW -> normalised float, channels_last."""
        x = (images.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)

    def _taps(self, x: torch.Tensor, stage: int) -> list[torch.Tensor]:
        return pool_stage(x, stage in self.grid_stages)

    def colour_parts(self) -> dict[str, int]:
        """Name -> width of each part of :meth:`colour_features`, in order."""
        if not self.colour_bins:
            return {}
        return {
            "rgb_hist": self.colour_bins**3,
            "hsv_hist": HSV_BINS[0] * HSV_BINS[1] * HSV_BINS[2],
            "layout": 4 * COLOUR_GRID[0] * COLOUR_GRID[1],  # share, L, a, b per cell
            "product_hist": PRODUCT_BINS,
            "product_share": 1,
            "product_lab": 3,
            "skin_share": 1,
        }

    def mirror_index(self) -> np.ndarray:
        """For each feature, the index of the same feature of the mirror image, as far as the
        layout says: a ``STAGE_GRID`` cell's pool maps to the cell in the mirrored column, a
        colour-layout cell likewise; global pools and histograms map to themselves. So
        ``features[:, mirror_index()]`` is nearly what a mirrored photo gives (the network's
        own filters are not exactly mirror-symmetric), and averaging the two removes what
        keeps left and right apart (:class:`~multitag.multitask.heads.MultiTaskHeads`)."""
        info = list(self.model.feature_info)
        rows, cols = STAGE_GRID
        cell = np.arange(rows * cols).reshape(rows, cols)[:, ::-1].ravel()
        parts: list[np.ndarray] = []
        for stage in self.stages:
            c = info[stage]["num_chs"]
            parts.append(np.arange(c))
            if stage in self.grid_stages:  # channel-major, each channel's cells row-major
                parts.append((np.arange(c)[:, None] * rows * cols + cell).ravel())
        parts.append(np.arange(self.model.num_features))
        for name, width in self.colour_parts().items():
            if name == "layout":  # cell-major (row, column), 4 values per cell
                r, k = COLOUR_GRID
                cells = np.arange(r * k).reshape(r, k)[:, ::-1].ravel()
                parts.append((cells[:, None] * 4 + np.arange(4)).ravel())
            else:
                parts.append(np.arange(width))
        index, offset = [], 0
        for part in parts:
            index.append(part + offset)
            offset += len(part)
        return np.concatenate(index)

    def colour_features(self, images: torch.Tensor) -> torch.Tensor:
        """Colour, which CNN features blur (``colour_bins=0`` turns it off):

        - foreground histograms, square-rooted: joint RGB (``bins``^3) and HSV (hue 16 x
          saturation 4 x value 4; hue separates shades that RGB cells mix);
        - the colour layout: a ``COLOUR_GRID`` (6x4) of cells, each with its foreground share
          and mean CIELAB colour (the heads learn where a product type sits in the photo);
        - the product's own colour: a hue/grey histogram and mean CIELAB of the foreground
          without skin-toned pixels (clothes are often worn by a model), their share, and
          the skin share of the foreground.

        Product photos sit on white: pixels whose darkest channel is >= 235 are background.
        """
        b = self.colour_bins
        x = images.float()
        n = x.shape[0]
        fg = (x.amin(1) < 235).float().flatten(1)  # (N, HW)
        empty = fg.sum(1, keepdim=True) < 16
        fg = torch.where(empty, torch.ones_like(fg), fg)

        def hist(idx: torch.Tensor, bins: int, mask: torch.Tensor) -> torch.Tensor:
            h = torch.zeros(n, bins, device=x.device).scatter_add_(1, idx.flatten(1), mask)
            return (h / mask.sum(1, keepdim=True).clamp_min(1.0)).sqrt()

        q = (x * (b / 256.0)).floor().clamp(0, b - 1).long()
        rgb = hist(q[:, 0] * b * b + q[:, 1] * b + q[:, 2], b**3, fg)
        hsv = hist(_hsv_index(x), HSV_BINS[0] * HSV_BINS[1] * HSV_BINS[2], fg)
        # colour layout and product colour on a 4x smaller image (the photos are small anyway)
        small = F.avg_pool2d(x, COLOUR_STATS_POOL) if x.shape[-1] >= 64 else x
        lab = _srgb_to_lab(small)
        fg_s = (small.amin(1) < 235).float().unsqueeze(1)
        share = F.adaptive_avg_pool2d(fg_s, COLOUR_GRID)
        cell_lab = F.adaptive_avg_pool2d(lab * fg_s, COLOUR_GRID) / share.clamp_min(1e-6)
        layout = torch.cat([share, cell_lab], 1).permute(0, 2, 3, 1).flatten(1)  # cell-major
        skin = _skin_mask(small).float().unsqueeze(1) * fg_s
        product = (fg_s - skin).flatten(1)
        count = product.sum(1, keepdim=True)
        product_hist = hist(_product_bin(small), PRODUCT_BINS, product)
        product_lab = (lab.flatten(2) * product[:, None]).sum(2) / count.clamp_min(1.0)
        pixels = product.shape[1]
        fg_count = fg_s.flatten(1).sum(1, keepdim=True)
        skin_share = skin.flatten(1).sum(1, keepdim=True) / fg_count.clamp_min(1.0)
        return torch.cat(
            [rgb, hsv, layout, product_hist, count / pixels, product_lab, skin_share], 1
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.normalize(images)
        pooled: list[torch.Tensor] = []
        if self.staged:
            m = self.model
            x = m.bn1(m.conv_stem(x))
            for i, block in enumerate(m.blocks):
                x = block(x)
                if i in self._take_blocks:
                    pooled.extend(self._taps(x, self._take_blocks[i]))
            x = m.bn2(m.conv_head(x))
        else:
            x, inter = self.model.forward_intermediates(x, indices=self.stages)
            for stage, t in zip(self.stages, inter):
                pooled.extend(self._taps(t, stage))
        final = x.float().mean((2, 3)) if x.ndim == 4 else x.float()
        pooled.append(final)
        if self.colour_bins:  # layout: [stage pools..., head pool, colour features]
            pooled.append(self.colour_features(images))
        logits = None
        if self.with_imagenet:
            logits = self.model.get_classifier()(final.to(x.dtype)).float()
        return torch.cat(pooled, dim=1), logits

    # ------------------------------------------------------- frozen prefix / upper part
    def block_index(self, stage: str | int) -> int:
        """The last frozen block for a freeze point: ``"blocks.4"`` (any block) or a
        ``feature_info`` index -> 4. Only staged (EfficientNet-family) models can be split."""
        if not self.staged:
            raise ValueError(
                f"{type(self.model).__name__}: freezing part of the backbone needs an "
                "EfficientNet-family model (conv_stem, bn1, blocks, conv_head, bn2)"
            )
        n = len(self.model.blocks)
        if isinstance(stage, int):
            return int(self.stage_names[stage].split(".")[1])
        name = str(stage)
        if name.startswith("blocks.") and name[7:].isdigit() and int(name[7:]) < n:
            return int(name[7:])
        raise ValueError(
            f"freeze point {name!r}: use 'all' or one of "
            f"{', '.join(f'blocks.{i}' for i in range(n))} (the last frozen block)"
        )

    def forward_until(self, images: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the frozen prefix: stem and ``blocks[0..block]``.

        Returns ``(activation map after blocks[block], prefix features)``; the prefix features
        are the pooled taps up to ``block`` followed by the colour histogram (the parts of
        :meth:`forward`'s feature vector that the upper stages do not change)."""
        m = self.model
        x = m.bn1(m.conv_stem(self.normalize(images)))
        pooled: list[torch.Tensor] = []
        for i in range(block + 1):
            x = m.blocks[i](x)
            if i in self._take_blocks:
                pooled.extend(self._taps(x, self._take_blocks[i]))
        if self.colour_bins:
            pooled.append(self.colour_features(images))
        prefix = torch.cat(pooled, 1) if pooled else x.new_zeros((x.shape[0], 0)).float()
        return x, prefix

    def forward_from(
        self, block: int, activations: torch.Tensor, prefix: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Continue :meth:`forward_until` from the activations after ``blocks[block]``:
        ``forward(images) == forward_from(block, *forward_until(images, block))``."""
        m = self.model
        x = activations
        upper: list[torch.Tensor] = []
        for i in range(block + 1, len(m.blocks)):
            x = m.blocks[i](x)
            if i in self._take_blocks:
                upper.extend(self._taps(x, self._take_blocks[i]))
        x = m.bn2(m.conv_head(x))
        final = x.float().mean((2, 3))
        logits = None
        if self.with_imagenet:
            logits = self.model.get_classifier()(final.to(x.dtype)).float()
        return self.assemble(prefix, upper, final), logits

    def assemble(
        self, prefix: torch.Tensor, upper: Sequence[torch.Tensor], final: torch.Tensor
    ) -> torch.Tensor:
        """The feature vector of :meth:`forward` from prefix features (:meth:`forward_until`),
        the pooled upper taps and the pooled head: [stage pools..., head pool, colour]."""
        n_colour = self.colour_dim
        prefix = prefix.float()
        taps, colour = (
            prefix[:, : prefix.shape[1] - n_colour],
            prefix[:, prefix.shape[1] - n_colour :],
        )
        return torch.cat([taps, *upper, final, colour], dim=1)


class PrefixEncoder(nn.Module):
    """The frozen prefix of an :class:`Encoder` as a flat-vector encoder, so that
    :func:`~multitag.vision.extraction.extract_features` and its cache store stage activations
    unchanged: each row is ``[activation map (C*H*W), prefix features]``."""

    with_imagenet = False  # no logits output (inference engines convert tensors only)

    def __init__(self, encoder: Encoder, block: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.block = block
        self.preprocessing = encoder.preprocessing
        size = encoder.preprocessing.image_size
        with torch.no_grad():
            acts, prefix = encoder.eval().forward_until(
                torch.full((1, 3, size, size), 255, dtype=torch.uint8), block
            )
        self.map_shape = tuple(acts.shape[1:])
        self.prefix_dim = prefix.shape[1]
        self.out_dim = int(np.prod(self.map_shape)) + self.prefix_dim

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        acts, prefix = self.encoder.forward_until(images, self.block)
        return torch.cat([acts.float().flatten(1), prefix.float()], 1), None

    def split(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat rows -> (fp16 activation maps ``(N, C, H, W)``, float32 prefix features)."""
        n_map = int(np.prod(self.map_shape))
        acts = torch.from_numpy(np.ascontiguousarray(rows[:, :n_map], dtype=np.float16))
        prefix = torch.from_numpy(np.ascontiguousarray(rows[:, n_map:], dtype=np.float32))
        return acts.view(len(rows), *self.map_shape), prefix


def pool_features(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling of an NCHW map in float32."""
    return F.adaptive_avg_pool2d(x.float(), 1).flatten(1)
