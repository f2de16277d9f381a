"""Shared fixtures: tiny generated images and a few hundred real fashion-products images."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a hub in tests
# idle OpenMP threads sleep instead of spinning: the tests run many tiny tensor ops, and
# spinning workers took most of the fast tier's CPU time (docs/testing.md); set before
# torch (and its OpenMP runtime) is loaded, inherited by the CLI subprocesses
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# hermetic: a cold feature cache per test session, as on a fresh CI machine
os.environ["MULTITAG_CACHE"] = tempfile.mkdtemp(prefix="multitag-test-cache-")

REPO = Path(__file__).resolve().parents[1]
FASHION = Path(os.environ.get("MULTITAG_FASHION", REPO.parent / "shared/datasets/fashion-products"))
TASKS = ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"]


def fashion_available() -> bool:
    return (FASHION / "styles.csv").is_file()


requires_fashion = pytest.mark.skipif(not fashion_available(), reason=f"{FASHION} not found")
#: fixtures that read the real data set: a test using one belongs to the slow tier
REAL_DATA_FIXTURES = {"fashion_frame", "trained_tagger"}


def pytest_collection_modifyitems(config, items):
    """Every test on real data (``requires_fashion`` or a real-data fixture) is ``slow``, so
    ``make test-fast`` (``-m "not slow"``) never reads the data set, wherever it is present;
    ``make test`` runs them all the same."""
    for item in items:
        marked = any(
            m.kwargs.get("reason") == requires_fashion.kwargs["reason"]
            for m in item.iter_markers("skipif")
        )
        if marked or REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def fashion_frame() -> pd.DataFrame:
    """A fixed, class-balanced sample of ~300 real rows (id, path + labels)."""
    if not fashion_available():
        pytest.skip(f"{FASHION} not found")
    from multitag.data.manifest import load_manifest

    frame = load_manifest(FASHION / "styles.csv", FASHION / "images")
    common = frame["articleType"].value_counts().index[:8]
    sample = (
        frame[frame["articleType"].isin(common)].sort_values("id").groupby("articleType").head(40)
    )
    return sample.reset_index(drop=True)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="session")
def trained_tagger(fashion_frame, cache_dir):
    """A tagger on the real sample with the real Lite0 weights (small image size, quick)."""
    from multitag import MultiTaskTagger
    from multitag.tagger.config import FeatureConfig, LabelConfig, RuntimeConfig, TrainConfig

    tagger = MultiTaskTagger(
        ["gender", "masterCategory", "articleType", "baseColour", "season"],
        features=FeatureConfig(image_size=96),
        labels=LabelConfig(min_count=3),
        training=TrainConfig(epochs=15),
        runtime=RuntimeConfig(cache_dir=cache_dir, progress=False),
    )
    return tagger.fit(fashion_frame)


@pytest.fixture(scope="session")
def synthetic_rows(tmp_path_factory) -> pd.DataFrame:
    """160 generated product photos with learnable labels (no real data needed)."""
    from tests.synthetic import synthetic_frame

    return synthetic_frame(tmp_path_factory.mktemp("synthetic-photos"))


@pytest.fixture(scope="session")
def synthetic_tagger(synthetic_rows, cache_dir):
    """A tagger fitted on the generated photos (real Lite0 weights, 64-px input)."""
    from multitag import MultiTaskTagger
    from multitag.tagger.config import FeatureConfig, RuntimeConfig, TrainConfig
    from tests.synthetic import TASKS

    # PyTorch engine: converting to OpenVINO costs more than these few photos take to encode
    tagger = MultiTaskTagger(
        TASKS,
        features=FeatureConfig(image_size=64),
        training=TrainConfig(epochs=8),
        runtime=RuntimeConfig(cache_dir=cache_dir, engine="torch", progress=False),
    )
    return tagger.fit(synthetic_rows)


def make_image(path: Path, size=(40, 30), colour=(200, 30, 30), mode="RGB") -> Path:
    """Write a small solid image (product-like: coloured square on white)."""
    img = Image.new("RGB", size, (255, 255, 255))
    w, h = size
    arr = np.asarray(img).copy()
    arr[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = colour
    Image.fromarray(arr).convert(mode).save(path)
    return path
