"""The main job (`multitag demo`) end to end on a real sample: validate, train, evaluate,
tag with the reloaded model, build the catalogue."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from multitag.catalog.store import load_array, load_catalog
from multitag.cli.demo import DEMO_SAME, run_demo
from multitag.data.manifest import read_table
from multitag.embedding.model import load_embedder

from .conftest import FASHION, requires_fashion

pytestmark = [pytest.mark.slow, requires_fashion]


def test_demo_runs_end_to_end_on_a_sample(fashion_frame, tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    styles = read_table(FASHION / "styles.csv")
    keep = styles["id"].isin(fashion_frame["id"].astype(str))
    styles[keep].to_csv(root / "styles.csv", index=False)
    (root / "images").symlink_to(FASHION / "images")
    paths = run_demo(root, tmp_path / "out", image_size=64)

    config = json.loads((paths["model"] / "config.json").read_text())
    assert config["heads"]["head_sets"] == 3
    refit = config["training"]["refit"]  # the saved heads trained on train + val
    assert refit["rows_after"] == refit["rows_before"] + refit["val_rows"] > refit["rows_before"]
    assert len(refit["epochs"]) == 3 and "prior_shift" in config["heads"]
    assert config["preprocessing"]["framing"]["aspect"] == 0.75  # measured on the catalogue
    assert "pattern" in [t["name"] for t in config["tasks"] if t["kind"] == "multilabel"]
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["tasks"]["masterCategory"]["accuracy"] > 0.8
    val_ids = read_table(tmp_path / "out" / "val.csv")["id"]
    tags = pd.read_parquet(paths["tags"])
    assert len(tags) == len(val_ids) == refit["val_rows"] > 20
    assert set(tags["id"].astype(str)) == set(val_ids)
    assert metrics["split"]["n_val"] == refit["val_rows"]
    assert paths["report"].is_file()
    catalog = json.loads((paths["catalog"] / "catalog.json").read_text())
    assert catalog["complete"] and catalog["n_items"] == len(fashion_frame)
    # similar items come from the embedder trained beside the tagger, from the same pass
    embedding = json.loads((paths["model"] / "embedding.json").read_text())
    assert embedding["same"] == DEMO_SAME and not embedding["finetuned"]
    assert catalog["embedding"] == {"source": "embedder", "dim": embedding["dim"]}
    emb = load_embedder(paths["model"])
    store = load_catalog(paths["catalog"])
    features = load_array(store.data_dir / "features.npy")
    np.testing.assert_allclose(store.embeddings, emb.transform_features(features), atol=1e-5)
    assert emb.tagger_ is not None  # one encoder: tags and embedding from one pass

    steps = ["1/6 validate", "2/6 train", "3/6 embed", "4/6 evaluate", "5/6 tag", "6/6 catalogue"]
    assert list(paths["seconds"]) == steps
    printed = capsys.readouterr().out
    assert [s for s in steps if s in printed] == steps  # each step's heading, numbered alike
    summary = printed[printed.rindex("summary") :]
    assert len(summary.splitlines()) <= 40  # one screen
    assert re.search(r"embedding: .*recall@1 on the val split 0\.\d+, raw features 0\.\d+", summary)
    for line in ("model:", "tags:", "report:", "catalogue:", "| masterCategory |", "total"):
        assert line in summary
    for step in steps:
        assert re.search(rf"{step}\s+\d+(m\d\ds|s)", summary), step
    serve = shlex.split(re.search(r"explore: (.+?)   then open", summary).group(1))
    assert Path(serve[0]).is_file()  # the program it names exists (here: this interpreter)
    assert serve[serve.index("serve") + 1] == str(paths["catalog"])
