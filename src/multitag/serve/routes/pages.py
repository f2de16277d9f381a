"""The explorer page, its static files and the explorer's session cookie."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse

from multitag.serve.security import SESSION_COOKIE, require_key, session_token

STATIC = Path(__file__).resolve().parents[1] / "static"
router = APIRouter()


def plotly_js() -> Path:
    """The ``plotly.min.js`` bundled inside the installed ``plotly`` Python package."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        from multitag.core.next_step import install_extra

        raise FileNotFoundError(f"{path} missing: reinstall plotly ({install_extra('serve')})")
    return path


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/static/vendor/plotly.min.js", include_in_schema=False)
def plotly_bundle() -> FileResponse:
    return FileResponse(plotly_js(), media_type="text/javascript")


@router.post(
    "/session",
    status_code=204,
    dependencies=[Depends(require_key)],
    responses={401: {"description": "missing or wrong API key"}},
)
def open_session(request: Request) -> Response:
    """Trade the ``X-API-Key`` header for an HttpOnly same-site cookie (the explorer's
    thumbnails are ``<img>`` tags, which cannot send headers; keys never go into URLs)."""
    response = Response(status_code=204)
    key = request.app.state.settings.api_key
    if key is not None:
        response.set_cookie(
            SESSION_COOKIE,
            session_token(key),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    return response
