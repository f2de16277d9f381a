"""Access rules: the API key (header or explorer session cookie, never the URL), the Host
allow-list, and keeping keys out of the access log.

Keys in URLs end up in access logs, browser history and ``Referer`` headers, so a request
carrying ``api_key`` in its query string is refused outright (``400``), whether or not the key
is right. The explorer trades the key (sent once in the header to ``POST /session``) for an
HttpOnly, SameSite=Strict cookie holding an HMAC of the key, so ``<img>`` thumbnails load
without the key in their URL. The Host allow-list stops DNS rebinding: a page on
``evil.example`` that re-points its name at 127.0.0.1 still sends ``Host: evil.example``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyCookie, APIKeyHeader

KEY_HEADER = "X-API-Key"
SESSION_COOKIE = "multitag_session"
_QUERY_KEY = re.compile(r"(?i)([?&](?:api[_-]?key|key|token)=)[^&\s]*")

key_header = APIKeyHeader(name=KEY_HEADER, auto_error=False)
session_cookie = APIKeyCookie(name=SESSION_COOKIE, auto_error=False)


def session_token(api_key: str) -> str:
    """The cookie value for ``api_key``: an HMAC, so the cookie never holds the key itself."""
    return hmac.new(api_key.encode(), b"multitag explorer session v1", hashlib.sha256).hexdigest()


def require_key(
    request: Request,
    key: str | None = Depends(key_header),
    cookie: str | None = Depends(session_cookie),
) -> None:
    """``401`` unless the server is open or the header key / session cookie matches
    (constant-time comparisons)."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    ok_key = secrets.compare_digest((key or "").encode(), expected.encode())
    ok_cookie = secrets.compare_digest((cookie or "").encode(), session_token(expected).encode())
    if not (ok_key or ok_cookie):
        raise HTTPException(401, f"missing or wrong API key: send it in the {KEY_HEADER} header")


class RefuseQueryKeys:
    """ASGI middleware: ``400`` for any request with an ``api_key`` in its query string."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        query = "?" + scope.get("query_string", b"").decode("latin-1")
        if scope["type"] == "http" and _QUERY_KEY.search(query):
            detail = f"API keys in URLs are refused (URLs get logged): send the {KEY_HEADER} header"
            await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RedactKeys(logging.Filter):
    """Blank ``api_key=...`` (and ``key=`` / ``token=``) query values in access-log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _QUERY_KEY.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = _QUERY_KEY.sub(r"\1[redacted]", record.msg)
        return True


def redact_access_log() -> None:
    """Install :class:`RedactKeys` on uvicorn's access logger (once)."""
    log = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactKeys) for f in log.filters):
        log.addFilter(RedactKeys())
