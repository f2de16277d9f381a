"""How a saved tagger copes with photos framed differently from its catalogue.

Other photo sources put the product on a square or landscape canvas, crop it tight or leave
wide margins. This simulates each from the validation photos (the same product, on its own
background colour), tags them with the model's own preprocessing and reports weighted F1
per task and source: compare a squash-only model with one trained with ``framing="auto"``.

    python examples/framing_sources.py MODEL_DIR [MODEL_DIR ...] --n 1000 --out framing.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import f1_score

from multitag import MultiTaskTagger
from multitag.data.framing import background_colour, place_on_canvas, product_box
from multitag.data.manifest import load_manifest
from multitag.tagger.held_out import held_out_rows


def _canvas(a: np.ndarray, width: int, height: int) -> np.ndarray:
    return place_on_canvas(a, width, height, background_colour(a))


def _tight(a: np.ndarray) -> np.ndarray:
    box = product_box(a)
    return a if box is None else a[box[0] : box[1], box[2] : box[3]]


SOURCES = {  # name -> photo (H x W x 3, the catalogue's 80 x 60) -> the same product elsewhere
    "catalogue": lambda a: a,
    "square canvas": lambda a: _canvas(a, a.shape[0], a.shape[0]),
    "landscape 4:3": lambda a: _canvas(a, round(a.shape[0] * 4 / 3), a.shape[0]),
    "tight crop": _tight,
    "wide margins": lambda a: _canvas(a, round(a.shape[1] * 1.5), round(a.shape[0] * 1.5)),
}


def evaluate(model_dir: Path, data_root: Path, n: int, seed: int = 0) -> dict:
    tagger = MultiTaskTagger.load(model_dir)
    frame = load_manifest(data_root / "styles.csv", data_root / "images")
    val = held_out_rows(tagger, frame, "styles.csv").frame  # its validation photos
    rows = np.random.default_rng(seed).choice(len(val), min(n, len(val)), replace=False)
    sample = val.iloc[np.sort(rows)].reset_index(drop=True)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sample["path"]]
    result: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for source, make in SOURCES.items():
            folder = Path(tmp, source.replace(" ", "-").replace(":", "x"))
            folder.mkdir()
            paths = [folder / f"{i}.png" for i in range(len(photos))]
            for path, photo in zip(paths, photos):
                Image.fromarray(make(photo)).save(path)
            proba = tagger.predict_proba(paths)["proba"]
            scores = {}
            for task in tagger.tasks_:
                truth = sample[task.name].to_numpy()
                known = np.array([isinstance(t, str) and t in task.classes for t in truth])
                pred = np.array(task.classes)[proba[task.name].argmax(1)]
                scores[task.name] = f1_score(truth[known], pred[known], average="weighted")
            scores["mean"] = float(np.mean(list(scores.values())))
            result[source] = scores
            print(model_dir.name, source, f"mean {scores['mean']:.4f}", flush=True)
    return result


def markdown(results: dict[str, dict]) -> str:
    models = list(results)
    lines = ["| source | task | " + " | ".join(models) + " |", "|---|---|" + "---:|" * len(models)]
    for source in SOURCES:
        for task in ["mean", *[t for t in results[models[0]][source] if t != "mean"]]:
            cells = " | ".join(f"{results[m][source][task]:.4f}" for m in models)
            lines.append(f"| {source} | {task} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument(
        "--data-root", type=Path, default=Path("../shared/datasets/fashion-products")
    )
    parser.add_argument("--n", type=int, default=1000, help="validation photos to simulate from")
    parser.add_argument("--out", type=Path, default=Path("framing_sources.json"))
    args = parser.parse_args()
    results = {m.name: evaluate(m, args.data_root, args.n) for m in args.models}
    args.out.write_text(json.dumps(results, indent=1))
    print(markdown(results))


if __name__ == "__main__":
    main()
