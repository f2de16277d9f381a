"""A fixed end-to-end run through the CLI, to prove a refactor changes no output.

``python tools/golden_run.py record DIR`` trains a small tagger on 2,000 fashion-products rows,
tags and evaluates 500 others, builds and queries an index and builds a catalogue, all under DIR.
``python tools/golden_run.py compare OLD NEW`` checks that every output matches (tags and
metrics exactly, probabilities within a float tolerance); ``--reuse-model OLD`` makes the new run
load OLD's saved model dir instead of training, which also proves old model dirs still load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parents[1].parent / "shared/datasets/fashion-products"
TASKS = "gender,masterCategory,articleType,baseColour"


def _cli(*args: str | Path) -> None:
    cmd = [sys.executable, "-m", "multitag", *map(str, args)]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def record(out: Path, reuse_model: Path | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    styles = pd.read_csv(DATA / "styles.csv", on_bad_lines="skip").sort_values("id")
    styles = styles[[(DATA / "images" / f"{i}.jpg").exists() for i in styles["id"]]]
    styles.iloc[:2000].to_csv(out / "train.csv", index=False)
    styles.iloc[2000:2500].to_csv(out / "query.csv", index=False)
    images = DATA / "images"
    model = reuse_model or out / "model"
    if reuse_model is None:
        _cli("train", "--data", out / "train.csv", "--images", images, "--tasks", TASKS,
             "--out", model, "--epochs", "5", "--seed", "0")
    _cli("tag", model, out / "query.csv", "--images", images, "--out", out / "tags.parquet")
    _cli("evaluate", model, "--data", out / "query.csv", "--images", images,
         "--json", out / "evaluate.json")
    _cli("index", "build", model, out / "query.csv", "--images", images, "--out", out / "index")
    first = str(styles.iloc[2000]["id"])
    result = subprocess.run(
        [sys.executable, "-m", "multitag", "similar", str(out / "index"), "--id", first, "--json"],
        check=True, capture_output=True, text=True)
    (out / "similar.json").write_text(result.stdout)
    _cli("catalog", "build", model, out / "query.csv", "--images", images, "--out", out / "catalog")


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame, what: str, atol: float) -> list[str]:
    problems = []
    if list(a.columns) != list(b.columns):
        return [f"{what}: columns differ {list(a.columns)} vs {list(b.columns)}"]
    for col in a.columns:
        x, y = a[col], b[col]
        if x.dtype.kind == "f":
            if not np.allclose(x.to_numpy(), y.to_numpy(), atol=atol, equal_nan=True):
                problems.append(f"{what}.{col}: max diff {np.nanmax(np.abs(x - y))}")
        elif x.astype(str).tolist() != y.astype(str).tolist():
            problems.append(f"{what}.{col}: values differ")
    return problems


def compare(old: Path, new: Path, atol: float) -> int:
    problems = _frames_equal(pd.read_parquet(old / "tags.parquet"),
                             pd.read_parquet(new / "tags.parquet"), "tags", atol)
    e_old, e_new = (json.loads((d / "evaluate.json").read_text()) for d in (old, new))
    for task, m in e_old.get("tasks", e_old).items():
        if isinstance(m, dict):
            for k, v in m.items():
                w = e_new.get("tasks", e_new).get(task, {}).get(k)
                if isinstance(v, float) and (w is None or abs(v - w) > atol):
                    problems.append(f"evaluate.{task}.{k}: {v} vs {w}")
    s_old, s_new = (json.loads((d / "similar.json").read_text()) for d in (old, new))
    ids = [[r.get("id") for r in s] for s in (s_old, s_new)] if isinstance(s_old, list) else None
    if ids is not None and ids[0] != ids[1]:
        problems.append(f"similar: {ids[0]} vs {ids[1]}")
    for name in sorted(p.name for p in (old / "catalog").rglob("items.parquet")):
        a = next((old / "catalog").rglob(name))
        b = next((new / "catalog").rglob(name))
        problems += _frames_equal(pd.read_parquet(a), pd.read_parquet(b), f"catalog/{name}", atol)
    print("\n".join(problems) or "golden run: every output matches")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("--reuse-model", type=Path)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("old", type=Path)
    cmp_.add_argument("new", type=Path)
    cmp_.add_argument("--atol", type=float, default=1e-5)
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, args.reuse_model)
        return 0
    return compare(args.old, args.new, args.atol)


if __name__ == "__main__":
    raise SystemExit(main())
