"""``ItemColumns``: the catalogue's items as columns for filters and map views on millions.

Filtering by tag, topic and cluster and picking the map points inside a box are vectorised
(numpy over Arrow buffers), never a Python loop over rows: the ``tags`` list column is read
from ``items.parquet`` with pyarrow and turned into an inverted index (tag -> sorted rows), so
a tag filter costs the number of rows carrying the tag. Map views show a fixed random order
of the rows (the first ``limit`` inside the box), so zooming in reveals more points and a
point never jumps out of a view it was in; a density grid counts every point in the box.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


class ItemColumns:
    """Columns of the items table: ``x``, ``y``, ``topic``, ``cluster`` and the tag index.

    ``maps``: the names of the catalogue's maps (``--maps``), the first one being ``x``,
    ``y`` and each other one ``x_<name>``, ``y_<name>``; a view is asked for in one of them.
    """

    def __init__(
        self,
        items: pd.DataFrame,
        tags: pa.ChunkedArray | pa.Array,
        seed: int = 0,
        maps: Sequence[str] = ("embedding",),
    ):
        self.n = len(items)
        self.x = items["x"].to_numpy(np.float32)
        self.y = items["y"].to_numpy(np.float32)
        self.maps = {maps[0]: (self.x, self.y)}
        for name in maps[1:]:
            if f"x_{name}" in items:
                self.maps[name] = (
                    items[f"x_{name}"].to_numpy(np.float32),
                    items[f"y_{name}"].to_numpy(np.float32),
                )
        self.topic = items["topic"].to_numpy(np.int64)
        self.cluster = items["cluster"].to_numpy(np.int64)
        tags = tags.combine_chunks() if isinstance(tags, pa.ChunkedArray) else tags
        if len(tags) != self.n:
            raise ValueError(f"{len(tags)} tag lists for {self.n} items: they must match")
        flat = pc.list_flatten(tags)
        parent = pc.list_parent_indices(tags).to_numpy().astype(np.int64)
        encoded = pc.dictionary_encode(flat)
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        self.tag_names = [str(t) for t in encoded.dictionary.to_pylist()]
        order = np.argsort(codes, kind="stable")  # rows stay ascending inside each tag
        self._tag_rows = parent[order]
        self._tag_start = np.searchsorted(codes[order], np.arange(len(self.tag_names) + 1))
        self._code = {t: i for i, t in enumerate(self.tag_names)}
        self._list_offsets = tags.offsets.to_numpy().astype(np.int64)
        self._flat_codes = codes
        perm = np.random.default_rng(seed).permutation(self.n)
        self._perm = perm  # one order for every map: a point is sampled in all or none
        self._pxy = {name: (x[perm], y[perm]) for name, (x, y) in self.maps.items()}

    @classmethod
    def from_parquet(
        cls, items: pd.DataFrame, path: str | os.PathLike, maps: Sequence[str] = ("embedding",)
    ) -> ItemColumns:
        """Columns of ``items``, the tag lists read straight from its ``items.parquet``."""
        return cls(items, pq.read_table(path, columns=["tags"])["tags"], maps=maps)

    def xy(self, layout: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of every row on the map ``layout`` (None: the first)."""
        if layout is None:
            return self.x, self.y
        if layout not in self.maps:
            raise KeyError(f"no map {layout!r}: this catalogue has {', '.join(self.maps)}")
        return self.maps[layout]

    # ------------------------------------------------------------------ filters
    def rows_with(self, tag: str) -> np.ndarray:
        """Ascending rows that carry ``tag`` (empty when no row does)."""
        code = self._code.get(tag)
        if code is None:
            return np.zeros(0, np.int64)
        return self._tag_rows[self._tag_start[code] : self._tag_start[code + 1]]

    def tags_of(self, row: int) -> list[str]:
        """The ``task:label`` tags of one row."""
        codes = self._flat_codes[self._list_offsets[row] : self._list_offsets[row + 1]]
        return [self.tag_names[c] for c in codes]

    def mask(
        self, tags: Sequence[str] = (), topic: int | None = None, cluster: int | None = None
    ) -> np.ndarray:
        """Rows having every tag in ``tags`` and the given topic / cluster."""
        keep = np.ones(self.n, bool)
        for t in tags:
            has = np.zeros(self.n, bool)
            has[self.rows_with(t)] = True
            keep &= has
        if topic is not None:
            keep &= self.topic == topic
        if cluster is not None:
            keep &= self.cluster == cluster
        return keep

    # --------------------------------------------------------------------- map
    def view(
        self,
        box: tuple[float, float, float, float] | None = None,
        limit: int = 50_000,
        keep: np.ndarray | None = None,
        bins: int = 64,
        layout: str | None = None,
    ) -> dict:
        """Points for a map view: ``rows`` (ascending; the first ``limit`` in the fixed random
        order of those in ``box`` = ``(x0, x1, y0, y1)`` on the map ``layout`` and in
        ``keep``), ``total`` (all of them) and, when that is more than ``limit``, a ``bins``
        x ``bins`` ``density`` grid of every one."""
        self.xy(layout)  # an unknown map is refused
        px, py = self._pxy[layout if layout is not None else next(iter(self.maps))]
        inside = np.ones(self.n, bool) if keep is None else keep[self._perm]
        if box is not None:
            # as the coordinates' type, clipped to its range (a huge bound would overflow)
            lim = np.finfo(px.dtype).max
            x0, x1, y0, y1 = np.clip(np.asarray(box, np.float64), -lim, lim).astype(px.dtype)
            inside &= (px >= x0) & (px <= x1) & (py >= y0) & (py <= y1)
        hits = np.flatnonzero(inside)
        rows = np.sort(self._perm[hits[:limit]])  # chosen in the fixed order, listed in row order
        out = {"rows": rows, "total": len(hits), "density": None}
        if len(hits) > limit:  # the grid covers the box, cut to where the points are
            x0, x1, y0, y1 = box or (-np.inf, np.inf, -np.inf, np.inf)
            x0, x1 = max(x0, float(px[hits].min())), min(x1, float(px[hits].max()))
            y0, y1 = max(y0, float(py[hits].min())), min(y1, float(py[hits].max()))
            x1, y1 = max(x1, x0 + 1e-6), max(y1, y0 + 1e-6)
            counts, _, _ = np.histogram2d(py[hits], px[hits], bins=bins, range=[[y0, y1], [x0, x1]])
            out["density"] = {"box": [x0, x1, y0, y1], "counts": counts.astype(np.int64)}
        return out
