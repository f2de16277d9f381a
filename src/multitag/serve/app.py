"""The catalogue API and the explorer page: ``create_app(catalog_dir, model_dir=None, ...)``.

Uploads are checked before any model work: size while the body arrives (413), image type by
content (415), pixel count from the header (413), decodable (422 with the reason); decoding and
the model run on a bounded worker pool (503 with ``Retry-After`` when it is full). Files are
only ever served from the catalogue's own item paths (by row, never by a user-supplied path)
and from the package's static folder. Routes live in :mod:`multitag.serve.routes`.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from multitag.catalog.store import load_catalog
from multitag.serve.routes import analysis, catalogue, items, pages
from multitag.serve.routes.pages import STATIC, plotly_js
from multitag.serve.security import RefuseQueryKeys, redact_access_log
from multitag.serve.service import CatalogService
from multitag.serve.settings import MAX_PHOTOS, ServeSettings
from multitag.serve.workers import ModelPool

__all__ = ["MAX_PHOTOS", "STATIC", "create_app", "plotly_js"]


def create_app(
    catalog_dir: str | os.PathLike,
    model_dir: str | os.PathLike | None = None,
    api_key: str | None = None,
    max_upload_mb: float = 10,
    **options,
) -> FastAPI:
    """The FastAPI app serving one catalogue (and, with ``model_dir``, tagging uploads).

    ``options`` are the other fields of :class:`~multitag.serve.settings.ServeSettings`
    (``max_pixels``, ``max_total_pixels``, ``workers``, ``queue``, ``allowed_hosts``); all are
    validated before anything is loaded.
    """
    if "allowed_hosts" in options:
        options["allowed_hosts"] = tuple(options["allowed_hosts"])
    settings = ServeSettings(api_key=api_key, max_upload_mb=max_upload_mb, **options)
    service = CatalogService(load_catalog(catalog_dir), model_dir)
    pool = ModelPool(settings.workers, settings.queue)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        pool.shutdown()

    app = FastAPI(
        title="multitag catalogue",
        description="Tags, topics, map and visual search over a product catalogue.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings, app.state.service, app.state.pool = settings, service, pool
    for module in (pages, items, catalogue, analysis):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(RefuseQueryKeys)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))
    redact_access_log()
    return app
