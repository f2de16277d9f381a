"""Index a folder of product photos with a saved model, then find the items most like a photo
(Python API).

    python examples/similar_items.py runs/example/model photos/ query.jpg -k 5 --out runs/index

The same steps as ``multitag index build`` then ``multitag similar``. The index uses the
model's embedding when it has one (``multitag embed train``), else its encoder features;
it is saved to ``--out``, so later queries need not embed the folder again. A manifest
instead of the folder makes its label columns filters (``similar(..., where={...})``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from multitag.embedding.search import build_index_dir, similar


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="a saved tagger or embedder folder")
    parser.add_argument("folder", type=Path, help="the catalogue's photos (or a manifest)")
    parser.add_argument("query", type=Path, help="the photo to find similar items for")
    parser.add_argument("-k", type=int, default=5, help="how many items to return")
    parser.add_argument("--out", type=Path, default=Path("runs/index"))
    args = parser.parse_args(argv)

    index, unreadable = build_index_dir(args.model, [args.folder], args.out)
    print(f"indexed {len(index)} photos -> {args.out} ({len(unreadable)} could not be read)")

    hits = similar(index, args.query, k=args.k)  # rank, id, score (cosine), path
    print(hits.to_string(index=False))
    if len(hits):  # from an item already in the index: its neighbours, itself left out
        print(similar(index, item_id=str(hits["id"].iloc[0]), k=args.k).to_string(index=False))
    return hits


if __name__ == "__main__":
    main()
