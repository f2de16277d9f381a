"""FastAPI dependencies: the app's service, settings and worker pool (set by the factory)."""

from __future__ import annotations

from fastapi import Request

from multitag.serve.service import CatalogService
from multitag.serve.settings import ServeSettings
from multitag.serve.workers import ModelPool


def get_service(request: Request) -> CatalogService:
    return request.app.state.service


def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


def get_pool(request: Request) -> ModelPool:
    return request.app.state.pool
