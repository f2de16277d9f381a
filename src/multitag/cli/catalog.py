"""CLI commands ``multitag catalog build`` and ``multitag serve`` (registered on the main app)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from multitag.cli.common import ExtOpt, IdColOpt, ImagesOpt, PathColOpt, PrecisionOpt
from multitag.cli.scaling import ActorsOpt, AddressOpt, CpusPerActorOpt, EncodeEngineOpt

catalog_app = typer.Typer(help="Build a browsable catalogue: tags, topics, 2-D map, clusters.")


@catalog_app.command("build")
def build_cmd(
    model_dir: Annotated[
        str,
        typer.Argument(
            help="Model directory (multitag train), or a backbone name (e.g. "
            "tf_efficientnet_lite0) for photos with no model and no labels: ImageNet tags."
        ),
    ],
    paths: Annotated[list[Path], typer.Argument(help="Image files, folders or manifests.")],
    out: Annotated[Path, typer.Option("--out", help="Catalogue folder (resumed if present).")],
    images: ImagesOpt = None,
    id_col: IdColOpt = None,
    path_col: PathColOpt = None,
    ext: ExtOpt = ".jpg",
    topics: Annotated[int, typer.Option("--topics", min=1, help="Number of NMF topics.")] = 12,
    topics_on: Annotated[
        str,
        typer.Option(
            "--topics-on",
            help="auto, tags (a trained tagger's probabilities), imagenet (the top-5 ImageNet "
            "tag matrix) or features. auto: tags with a model, else imagenet.",
        ),
    ] = "auto",
    layout: Annotated[str, typer.Option("--layout", help="umap or tsne.")] = "umap",
    maps: Annotated[
        str | None,
        typer.Option(
            "--maps",
            help="What the maps are drawn from, comma-separated: embedding, topics (the "
            "explorer switches between them). Default: embedding (and topics without a model).",
        ),
    ] = None,
    embedder: Annotated[
        Path | None,
        typer.Option(
            "--embedder", help="With a backbone name: an embedder folder (multitag embed train)."
        ),
    ] = None,
    clusters: Annotated[
        int, typer.Option("--clusters", min=1, help="Number of k-means clusters.")
    ] = 20,
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", min=1, help="Images per resumable chunk.")
    ] = 2048,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 64,
    refit_overview: Annotated[
        bool,
        typer.Option(
            "--refit-overview",
            help="Fit topics, map and clusters again over every item (default: new items are "
            "placed with the fitted ones).",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(min=0, help="Random seed (topics, map, clusters).")] = 0,
    fit_sample: Annotated[
        int,
        typer.Option(
            "--fit-sample",
            min=1,
            help="Fit topics and map on a random sample of this many items when there are "
            "more, then place every item (docs/large-catalogues.md).",
        ),
    ] = 1_000_000,
    precision: PrecisionOpt = None,
    encode_on: EncodeEngineOpt = "local",
    address: AddressOpt = None,
    actors: ActorsOpt = None,
    cpus_per_actor: CpusPerActorOpt = None,
) -> None:
    """Tag every image once (tags, ImageNet tags, embedding), then topics, map and clusters.

    Resumable after a kill; on an existing catalogue only new images are tagged and placed.
    With --engine ray the encoder runs over every new photo on Ray actors first (features
    into the feature cache), then the chunks are tagged here from the cache.
    """
    from multitag.catalog import build_catalog
    from multitag.cli.common import console, fail, resolve_photos
    from multitag.cli.scaling import encoder_engine

    found = resolve_photos(paths, images, id_col, path_col, ext)
    try:
        with encoder_engine(encode_on, address, actors, cpus_per_actor):
            meta = build_catalog(
                model_dir,
                found,
                out,
                n_topics=topics,
                topics_on=topics_on,
                layout=layout,
                maps=[m.strip() for m in maps.split(",") if m.strip()] if maps else None,
                embedder=embedder,
                n_clusters=clusters,
                chunk_size=chunk_size,
                batch_size=batch_size,
                refit_overview=refit_overview,
                seed=seed,
                fit_sample=fit_sample,
            )
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    lb = meta["last_build"]
    console.print(
        f"catalogue {out}: {meta['n_items']} items ({lb['new_items']} new, "
        f"{meta['n_rejects']} rejected), {len(meta['topics']['topics'])} topics, "
        f"{meta['clusters']['k']} clusters, {meta['layout']['method']} map, "
        f"embedding from {meta['embedding']['source']}; {lb['seconds']:.0f}s"
    )
    from multitag.core.next_step import print_command

    if meta.get("model_dir"):
        # The model as the user spelled it: the stored path is absolute, and a printed
        # command should read like the one the user just typed.
        print_command(console, "explore it", "serve", out, "--model", model_dir)
    else:
        print_command(console, "explore it", "serve", out)


@catalog_app.command("add-tagger")
def add_tagger_cmd(
    catalog_dir: Annotated[Path, typer.Argument(help="A catalogue built from a backbone name.")],
    model_dir: Annotated[Path, typer.Argument(help="Trained model directory (multitag train).")],
) -> None:
    """Add a trained tagger's tags to a catalogue built without a model.

    Its places, topics, clusters, features and ImageNet tags are kept; the tags come from the
    stored features when the tagger uses the same encoder, else from its feature cache.
    """
    from multitag.catalog.build import add_tagger
    from multitag.cli.common import console, fail

    try:
        meta = add_tagger(catalog_dir, model_dir)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    tasks = ", ".join(t["name"] for t in meta["tasks"])
    console.print(f"catalogue {catalog_dir}: {meta['n_items']} items tagged with {tasks}")


def serve_cmd(
    catalog_dir: Annotated[Path, typer.Argument(help="Catalogue folder (multitag catalog build).")],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Model directory for uploads (default: the one it was built with, if present).",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="MULTITAG_API_KEY",
            help="Require this key in the X-API-Key header (never in URLs).",
        ),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option(min=0.001, help="Largest accepted upload (MB).")
    ] = 10,
    max_pixels: Annotated[
        int, typer.Option(help="Largest accepted image, width x height, read before decoding.")
    ] = 25_000_000,
    max_total_pixels: Annotated[
        int, typer.Option(help="Pixels of all images in one request together (/recommend).")
    ] = 100_000_000,
    workers: Annotated[
        int, typer.Option(help="Threads decoding uploads and running the model.")
    ] = 2,
    queue: Annotated[
        int, typer.Option(help="Uploads that may wait for a worker; beyond that: 503.")
    ] = 8,
    map_points: Annotated[
        int,
        typer.Option(
            "--map-points",
            help="Most points one map answer holds; a larger catalogue is shown as a sample "
            "per view on a density layer.",
        ),
    ] = 50_000,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Host header value to accept besides the bind address, localhost and "
            "127.0.0.1 (repeatable; '*' accepts any).",
        ),
    ] = None,
    precision: PrecisionOpt = None,
) -> None:
    """Serve the catalogue API (docs at /docs) and the explorer page (at /)."""
    import uvicorn

    from multitag.catalog.store import read_meta
    from multitag.cli.common import check_port, console, fail
    from multitag.serve.app import create_app
    from multitag.serve.settings import default_hosts

    check_port(host, port)
    try:
        meta = read_meta(catalog_dir) or {}
        if model is None:
            built_with = meta.get("model_dir")
            if built_with and (Path(built_with) / "config.json").is_file():
                model = Path(built_with)
        hosts = default_hosts(host, allowed_host or ())
        app = create_app(
            catalog_dir,
            model,
            api_key=api_key,
            max_upload_mb=max_upload_mb,
            max_pixels=max_pixels,
            max_total_pixels=max_total_pixels,
            workers=workers,
            queue=queue,
            map_points=map_points,
            allowed_hosts=hosts,
        )
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    console.print(
        f"explorer: http://{host}:{port}/   API docs: http://{host}:{port}/docs"
        + ("" if model or meta.get("source") else "   (no model: uploads disabled, pass --model)")
    )
    if "*" not in hosts:
        console.print(f"accepting Host: {', '.join(hosts)} (add more with --allowed-host)")
    uvicorn.run(app, host=host, port=port, log_level=os.environ.get("MULTITAG_LOG", "info"))


def register(app: typer.Typer) -> None:
    """Add ``catalog build`` and ``serve`` to the main CLI."""
    app.add_typer(catalog_app, name="catalog")
    app.command("serve")(serve_cmd)
