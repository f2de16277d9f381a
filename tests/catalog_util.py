"""Shared, build-once real catalogue for the catalogue, API and browser tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

BUILD = dict(chunk_size=64, n_topics=6, n_clusters=6, umap_epochs=60, progress=False)
_CACHE: dict[str, Path] = {}


def sample_rows(fashion_frame: pd.DataFrame) -> pd.DataFrame:
    """~150 real rows across the sample's article types (ids as strings)."""
    rows = fashion_frame.groupby("articleType").head(19).reset_index(drop=True)
    return rows.assign(id=rows["id"].astype(str))


def write_manifest(rows: pd.DataFrame, path: Path) -> Path:
    rows[["id", "path"]].to_csv(path, index=False)
    return path


def built_catalog(tmp_path_factory, trained_tagger, fashion_frame) -> tuple[Path, Path, Path]:
    """``(catalog_dir, model_dir, manifest)``, built once per session."""
    if "catalog" not in _CACHE:
        from multitag.catalog import build_catalog

        root = tmp_path_factory.mktemp("catalog")
        model = trained_tagger.save(root / "model")
        manifest = write_manifest(sample_rows(fashion_frame), root / "items.csv")
        build_catalog(model, [manifest], root / "catalog", **BUILD)
        _CACHE.update(catalog=root / "catalog", model=Path(model), manifest=manifest)
    return _CACHE["catalog"], _CACHE["model"], _CACHE["manifest"]


def synthetic_catalog_dir(root: Path, n: int = 300, n_images: int = 6) -> Path:
    """A catalogue of ``n`` made-up items (no model needed) whose thumbnails cycle through
    ``n_images`` small generated photos under ``root/images``."""
    from multitag.bench.catalog import synthetic_catalog
    from tests.conftest import make_image

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    paths = [
        str(make_image(images / f"{i}.png", (60, 80), (40 * i % 256, 90, 200 - 30 * i)))
        for i in range(n_images)
    ]
    return synthetic_catalog(root / "catalog", paths, n=n)
