"""CLI for embeddings: ``embed train|evaluate``, ``index build|add``, ``similar``, ``cluster``.

Thin commands: parse, call :mod:`multitag.embedding`, print. Registered on the main app by
:func:`register`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from multitag.cli.common import (
    DataOpt,
    ExtOpt,
    IdColOpt,
    ImagesOpt,
    PathColOpt,
    console,
    fail,
    load_frame,
    out_console,
    resolve_photos,
    split_names,
)
from multitag.cli.scaling import ActorsOpt, AddressOpt, CpusPerActorOpt, EncodeEngineOpt

embed_app = typer.Typer(help="Train and evaluate image embeddings (metric learning).")
index_app = typer.Typer(help="Build and extend FAISS vector indexes.")

SameOpt = Annotated[
    str, typer.Option("--same", help="Columns that define 'alike', e.g. articleType,baseColour.")
]


def _same(value: str) -> list[str]:
    cols = split_names(value)
    if not cols:
        fail("--same: name at least one label column, e.g. --same articleType,baseColour")
    return cols


@embed_app.command("train")
def embed_train(
    data: DataOpt,
    same: SameOpt,
    out: Annotated[Path, typer.Option("--out", help="Model directory (may hold a tagger).")],
    images: ImagesOpt = None,
    loss: Annotated[str | None, typer.Option(help="Metric-learning loss.")] = None,
    miner: Annotated[str | None, typer.Option(help="Miner (default: the loss's own).")] = None,
    coarse: Annotated[
        str | None,
        typer.Option(
            help="Some --same columns whose agreement alone also counts (e.g. articleType): "
            "better neighbour votes on them."
        ),
    ] = None,
    coarse_loss: Annotated[
        str | None,
        typer.Option(help="Loss of the --coarse term (default: --loss), e.g. proxy_anchor."),
    ] = None,
    coarse_weight: Annotated[
        float, typer.Option(min=0.0, help="Weight of the --coarse term (proxy_anchor: ~0.05).")
    ] = 0.25,
    dim: Annotated[int, typer.Option(min=1, help="Embedding size.")] = 256,
    hidden: Annotated[int, typer.Option(min=1, help="Hidden width of the mlp head.")] = 512,
    head: Annotated[str, typer.Option(help="linear or mlp.")] = "mlp",
    epochs: Annotated[int, typer.Option(min=1, help="Epochs on cached features.")] = 30,
    backbone: Annotated[str | None, typer.Option(help="Backbone (default lite0).")] = None,
    image_size: Annotated[
        int | None,
        typer.Option(min=32, max=1024, help="Square input size (default: the backbone's own)."),
    ] = None,
    freeze: Annotated[
        str,
        typer.Option(
            help="'all' = frozen backbone; a stage (e.g. blocks.5, see `multitag backbones`) "
            "= also fine-tune the stages above it with the metric loss."
        ),
    ] = "all",
    finetune_epochs: Annotated[int, typer.Option(min=1, help="Epochs of fine-tuning.")] = 3,
    framing: Annotated[
        str | None,
        typer.Option(
            help="'auto' (crop each photo to its product, centre it on the catalogue's "
            "canvas), 'none' (squash-resize only); default: the framing of the tagger in "
            "--out, else auto."
        ),
    ] = None,
    all_rows: Annotated[
        bool, typer.Option("--all-rows", help="Train on every row (default: train split).")
    ] = False,
    id_col: IdColOpt = None,
    path_col: PathColOpt = None,
    ext: ExtOpt = ".jpg",
) -> None:
    """Learn an embedding where rows agreeing on the --same columns are close."""
    from multitag.embedding import Embedder
    from multitag.embedding.evaluate import default_split
    from multitag.embedding.losses import DEFAULT_LOSS
    from multitag.tagger.persistence import tagger_preprocessing
    from multitag.vision import backbones

    frame = load_frame(data, images, id_col, path_col, ext, out / "inputs.rejects.csv")
    cols = _same(same)
    beside = tagger_preprocessing(out)
    detail = "auto"
    if beside is not None:  # one encoder pass for tags and embedding: use the tagger's input
        image_size = image_size or beside.image_size
        detail = beside.detail or "none"
        if framing is None:
            framing = beside.framing or "none"
    try:
        emb = Embedder(
            cols,
            dim=dim,
            head=head,
            hidden=hidden,
            loss=loss or DEFAULT_LOSS,
            miner=miner,
            coarse=split_names(coarse) if coarse else None,
            coarse_loss=coarse_loss,
            coarse_weight=coarse_weight,
            backbone=backbone or backbones.DEFAULT_BACKBONE,
            image_size=image_size,
            framing=framing or "auto",
            detail=detail,
            epochs=epochs,
            freeze=freeze,
            finetune_epochs=finetune_epochs,
        )
        rows = None if all_rows else default_split(frame, cols)[0]
        emb.fit(frame, rows=rows)
        emb.save(out)
    except ValueError as err:
        fail(str(err))
    console.print(f"embedder ({emb.loss}, miner {emb.miner_}, {emb.dim}-d) saved to {out}")


@embed_app.command("evaluate")
def embed_evaluate(
    model_dir: Annotated[Path, typer.Argument(help="Model directory.")],
    data: DataOpt,
    same: SameOpt,
    images: ImagesOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics as JSON.")] = None,
    knn: Annotated[
        str | None, typer.Option(help="Columns for kNN accuracy (default: the --same ones).")
    ] = None,
    id_col: IdColOpt = None,
    path_col: PathColOpt = None,
    ext: ExtOpt = ".jpg",
) -> None:
    """Recall@1/5/10, MAP@R, NMI on the val split: trained embedding vs raw backbone features."""
    from multitag.core.io import write_json
    from multitag.embedding.evaluate import evaluate_embedding
    from multitag.embedding.model import load_embedder
    from multitag.tagger.batch import rejects_path

    rejects = rejects_path(json_out) if json_out else None
    frame = load_frame(data, images, id_col, path_col, ext, rejects)
    try:
        emb = load_embedder(model_dir)
        result = evaluate_embedding(emb, frame, _same(same), knn_columns=split_names(knn) or None)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    table = Table(title=f"retrieval on {result['split']['val']} val images")
    keys = ["recall@1", "recall@5", "recall@10", "map@r", "nmi"]
    table.add_column("vectors")
    for k in keys:
        table.add_column(k, justify="right")
    for name in ("embedding", "backbone_features"):
        table.add_row(name, *(f"{result[name][k]:.4f}" for k in keys))
    out_console.print(table)
    for col, accs in result["knn"]["accuracy"].items():
        out_console.print(
            f"kNN (k={result['knn']['k']}) {col}: "
            + ", ".join(f"{n} {a:.4f}" for n, a in accs.items())
        )
    if json_out:
        write_json(json_out, result)
        console.print(f"metrics written to {json_out}")


@index_app.command("build")
def index_build(
    model_dir: Annotated[Path, typer.Argument(help="Model directory (embedder and/or tagger).")],
    paths: Annotated[list[Path], typer.Argument(help="Images, folders and manifests.")],
    out: Annotated[Path, typer.Option("--out", help="Index directory to write.")],
    images: ImagesOpt = None,
    kind: Annotated[str, typer.Option(help="auto, exact, ivf or hnsw.")] = "auto",
    exact_max: Annotated[
        int, typer.Option(min=0, help="auto: exact search up to this size.")
    ] = 50_000,
    id_col: IdColOpt = None,
    path_col: PathColOpt = None,
    ext: ExtOpt = ".jpg",
    encode_on: EncodeEngineOpt = "local",
    address: AddressOpt = None,
    actors: ActorsOpt = None,
    cpus_per_actor: CpusPerActorOpt = None,
) -> None:
    """Embed images and save a searchable index (manifest columns become filters).

    With --engine ray the encoder runs on Ray actors (features into the feature cache);
    the embedding head and the index are computed here."""
    from multitag.cli.scaling import encoder_engine
    from multitag.embedding.search import build_index_dir

    found = resolve_photos(paths, images, id_col, path_col, ext, out / "inputs.rejects.csv")
    try:
        with encoder_engine(encode_on, address, actors, cpus_per_actor):
            index, errors = build_index_dir(model_dir, found, out, kind=kind, exact_max=exact_max)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    console.print(
        f"{len(index)} items indexed ({index.kind_}, {index.dim_}-d, {index.meta['vectors']}) "
        f"in {out}" + (f"; {len(errors)} unreadable images skipped" if errors else "")
    )
    if len(index):
        from multitag.core.next_step import print_command

        first = str(index.items_["id"].iloc[0])
        print_command(console, "search it", "similar", out, "--id", first, "-k", "5")


@index_app.command("add")
def index_add(
    index_dir: Annotated[Path, typer.Argument(help="Index directory.")],
    paths: Annotated[list[Path], typer.Argument(help="Images, folders and manifests.")],
    images: ImagesOpt = None,
    id_col: IdColOpt = None,
    path_col: PathColOpt = None,
    ext: ExtOpt = ".jpg",
) -> None:
    """Append images to an index without rebuilding it."""
    from multitag.embedding.search import add_to_index_dir

    found = resolve_photos(paths, images, id_col, path_col, ext)
    try:
        index, errors = add_to_index_dir(index_dir, found)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    console.print(
        f"index now holds {len(index)} items" + (f"; {len(errors)} skipped" if errors else "")
    )


def similar_cmd(
    index_dir: Annotated[Path, typer.Argument(help="Index directory.")],
    image: Annotated[Path | None, typer.Argument(help="Query image.")] = None,
    item_id: Annotated[str | None, typer.Option("--id", help="Query by indexed item id.")] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Number of results.")] = 10,
    where: Annotated[
        list[str] | None, typer.Option("--where", help="Filter col=value (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Items that look most like an image or an indexed item."""
    from multitag.embedding.search import similar

    try:
        results = similar(index_dir, image, item_id=item_id, k=k, where=where)
    except (FileNotFoundError, KeyError, ValueError) as err:
        fail(str(err).strip("'\""))
    if as_json:
        print(json.dumps(results.to_dict(orient="records"), indent=2, default=str))
        return
    table = Table(title=f"similar to {item_id or image}")
    for col in results.columns:
        table.add_column(col, justify="right" if col in ("rank", "score") else "left")
    for row in results.itertuples(index=False):
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    out_console.print(table)


def cluster_cmd(
    index_dir: Annotated[Path, typer.Argument(help="Index directory.")],
    html: Annotated[Path, typer.Option("--html", help="Write the cluster page here.")],
    k: Annotated[
        int | None,
        typer.Option("-k", min=1, help="Number of clusters (default: suggested by silhouette)."),
    ] = None,
    max_k: Annotated[int, typer.Option("--max-k", help="Without -k: try k = 2 .. this many.")] = 20,
    assignments: Annotated[
        Path | None, typer.Option("--out", help="Also write id -> cluster as a table.")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="k-means seed.")] = 0,
) -> None:
    """k-means clusters of an index, summarised in a self-contained HTML page.

    Without -k, k is the one in 2..--max-k whose clusters have the best silhouette on a
    sample of the items."""
    from multitag.core.io import write_table
    from multitag.embedding.cluster import write_cluster_report
    from multitag.embedding.index import VectorIndex
    from multitag.embedding.kmeans import suggest_k

    if k is None and max_k < 2:
        fail(f"--max-k {max_k}: use 2 or more, or choose the number of clusters with -k")
    try:
        index = VectorIndex.load(index_dir)
        if k is None:
            k, scores = suggest_k(index.vectors(), k_max=max_k, random_state=seed)
            console.print(
                f"no -k given: k={k} has the best silhouette ({scores[k]:.3f}) of "
                f"k={min(scores)}..{max(scores)} on a sample of the {len(index)} items; "
                "pass -k to choose another"
            )
        _, summaries, assign = write_cluster_report(index, k, html, seed=seed)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    if assignments:
        write_table(assign.reset_index(), assignments)
    for s in summaries:
        dom = "; ".join(
            f"{c}={v[0]['value']} ({v[0]['share']:.0%})" for c, v in s["dominant"].items() if v
        )
        out_console.print(f"cluster {s['cluster']}: {s['size']} items  {dom}")
    console.print(f"cluster page written to {html}")


def register(app: typer.Typer) -> None:
    """Add ``embed``, ``index``, ``similar`` and ``cluster`` to the main app."""
    app.add_typer(embed_app, name="embed")
    app.add_typer(index_app, name="index")
    app.command("similar")(similar_cmd)
    app.command("cluster")(cluster_cmd)
