"""Model directories saved before the tagger's settings were grouped (flat ``params`` in
``config.json``, ``ensemble`` for the head sets) still load and predict identically."""

from __future__ import annotations

import json

import numpy as np
import pytest

from multitag import MultiTaskTagger
from multitag.tagger.config import (
    FeatureConfig,
    HeadConfig,
    RuntimeConfig,
    TrainConfig,
    flat_settings,
)
from tests.synthetic import TASKS


@pytest.fixture(scope="module")
def two_head_sets(synthetic_rows, cache_dir):
    """Two averaged head sets on the synthetic photos (the features are cached)."""
    return MultiTaskTagger(
        TASKS,
        features=FeatureConfig(image_size=64),
        heads=HeadConfig(head_sets=2),
        training=TrainConfig(epochs=2, seed=4),
        runtime=RuntimeConfig(cache_dir=cache_dir, engine="torch", progress=False),
    ).fit(synthetic_rows)


def _as_saved_before_the_groups(model_dir) -> dict:
    """Rewrite ``config.json`` as multitag wrote it with flat constructor arguments."""
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    params = {"ensemble" if k == "head_sets" else k: v for k, v in config["params"].items()}
    assert "ensemble" in params and "head_sets" not in params
    config["params"] = params
    config["heads"]["ensemble"] = config["heads"].pop("head_sets")
    config.pop("integrity", None)  # rewritten by hand: its hashes no longer match
    path.write_text(json.dumps(config))
    return config


def test_a_model_saved_with_flat_params_loads_and_predicts_identically(
    two_head_sets, synthetic_rows, tmp_path
):
    model_dir = two_head_sets.save(tmp_path / "model")
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["heads"]["head_sets"] == 2 and saved["params"]["head_sets"] == 2
    old = _as_saved_before_the_groups(model_dir)
    assert old["params"]["ensemble"] == 2 and old["params"]["epochs"] == 2

    loaded = MultiTaskTagger.load(model_dir)
    assert loaded.settings("heads").head_sets == 2
    assert loaded.settings("training").seed == 4
    assert loaded.tasks == TASKS
    ours = flat_settings(two_head_sets)
    theirs = flat_settings(loaded)
    assert {k: theirs[k] for k in ("backbone", "epochs", "head_sets", "image_size")} == {
        k: ours[k] for k in ("backbone", "epochs", "head_sets", "image_size")
    }
    loaded.set_params(runtime__engine="torch", runtime__progress=False)
    paths = synthetic_rows["path"].tolist()[:12]
    want = two_head_sets.predict_proba(paths)["proba"]
    got = loaded.predict_proba(paths)["proba"]
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_a_flat_params_entry_of_another_version_is_ignored(two_head_sets, tmp_path):
    model_dir = two_head_sets.save(tmp_path / "model")
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config["params"]["no_longer_a_setting"] = 1
    config.pop("integrity", None)
    path.write_text(json.dumps(config))
    assert MultiTaskTagger.load(model_dir).settings("heads").head_sets == 2
