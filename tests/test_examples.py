"""The user examples run as documented: examples/*.py on generated photos, the study YAMLs
load with the study's own config loader, and the research scripts still import."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from multitag.research.study import StudyConfig
from tests.conftest import REPO

EXAMPLES = REPO / "examples"
COLOURS = {"red": (200, 30, 30), "blue": (30, 40, 200)}


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def product_photo(path: Path, colour: str, seed: int) -> Path:
    """A 60x80 catalogue-like photo: a jittered coloured block of varying size on white."""
    rng = np.random.default_rng(seed)
    arr = np.full((80, 60, 3), 255, np.uint8)
    h, w = rng.integers(30, 60), rng.integers(20, 45)
    top, left = (80 - h) // 2, (60 - w) // 2
    arr[top : top + h, left : left + w] = np.clip(
        np.array(COLOURS[colour]) + rng.integers(-25, 25, 3), 0, 255
    )
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """examples/tag_a_folder.py run on 24 labelled photos and a folder of 4 new ones + 1 broken."""
    root = tmp_path_factory.mktemp("example")
    images, folder = root / "images", root / "new"
    images.mkdir()
    folder.mkdir()
    rows = []
    for i in range(24):
        colour = "red" if i % 2 else "blue"
        product_photo(images / f"{colour}{i}.png", colour, i)
        rows.append({"id": f"{colour}{i}", "path": f"{colour}{i}.png", "colour": colour})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    for i, colour in enumerate(["red", "blue", "red", "blue"]):
        product_photo(folder / f"new-{colour}{i}.png", colour, 100 + i)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    argv = [str(root / "labels.csv"), str(images), str(folder), "--tasks", "colour"]
    argv += ["--out", str(root / "out"), "--image-size", "64"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MULTITAG_ENGINE", "torch")  # no OpenVINO conversion for 28 photos
        out = load_script(EXAMPLES / "tag_a_folder.py").main(argv)
    return root, out


def test_tag_a_folder_trains_saves_and_tags(tagged):
    root, out = tagged
    assert (root / "out/model/config.json").is_file()
    tags = pd.read_csv(out)
    assert sorted(tags["id"]) == ["new-blue1", "new-blue3", "new-red0", "new-red2"]
    assert (tags["colour"] == tags["id"].str.extract(r"new-(red|blue)")[0]).all()
    rejects = pd.read_csv(root / "out/tags.rejects.csv")
    assert rejects["id"].tolist() == ["broken"]


def test_similar_items_indexes_and_queries(tagged, capsys, monkeypatch):
    monkeypatch.setenv("MULTITAG_ENGINE", "torch")
    root, _ = tagged
    query = product_photo(root / "query.png", "red", 999)
    hits = load_script(EXAMPLES / "similar_items.py").main(
        [str(root / "out/model"), str(root / "images"), str(query), "-k", "3",
         "--out", str(root / "index")]
    )  # fmt: skip
    assert len(hits) == 3 and hits["id"].str.startswith("red").all()
    assert hits["score"].is_monotonic_decreasing
    assert (root / "index").is_dir() and "indexed 24 photos" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "runs", "subset"), [("study", 13, 8000), ("study_16k", 13, 16000)]
)
def test_study_yaml_loads(name, runs, subset):
    cfg = StudyConfig.load(EXAMPLES / f"{name}.yaml")
    assert cfg.subset == subset and len(cfg.runs()) == runs
    assert Path(cfg.data).name == "styles.csv" and Path(cfg.data).is_absolute()
    assert {r["sharing"] for r in cfg.runs()} == {"hard", "single", "soft", "cross_stitch"}


def test_examples_holds_only_user_examples():
    assert sorted(p.name for p in EXAMPLES.iterdir()) == [
        "similar_items.py",
        "study.yaml",
        "study_16k.yaml",
        "tag_a_folder.py",
    ]


@pytest.mark.parametrize("path", sorted((REPO / "research").glob("*.py")), ids=lambda p: p.name)
def test_research_scripts_import(path, monkeypatch):
    """The experiment drivers are not run here (tens of minutes on the full data), but their
    imports must follow the package's layout."""
    monkeypatch.syspath_prepend(str(path.parent))  # class_bias.py imports knn_blend.py
    module = load_script(path)
    assert callable(module.main)
    sys.modules.pop("knn_blend", None)


def test_research_index_lists_every_script_and_result():
    """research/README.md names every script and result file, and every research-log section
    it cites exists, so a new experiment cannot land without its provenance row."""
    index = (REPO / "research/README.md").read_text()
    log = (REPO / "research/LOG.md").read_text()
    results = [*(REPO / "research/results").iterdir(), *(REPO / "docs/study").iterdir()]
    for path in [*(REPO / "research").glob("*.py"), *results]:
        assert path.name in index, f"{path.relative_to(REPO)} is not in research/README.md"
    sections = {line.lstrip("#").strip() for line in log.splitlines() if line.startswith("#")}
    for row in index.split("## Result files")[0].splitlines()[1:]:
        for cited in re.findall(r'"([^"]+)"', row.rsplit("|", 2)[-2] if "|" in row else ""):
            assert cited in sections, f"research/README.md cites a missing log section: {cited}"
