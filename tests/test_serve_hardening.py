"""``multitag serve`` under hostile input and load, on a synthetic catalogue (no model): the
streaming upload limits, pixel budgets before decoding, the bounded worker pool (503 +
Retry-After, event loop free), API key header/cookie only, the Host allow-list, thumbnail and
start-up errors that are plain and leak no paths."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.catalog_util import synthetic_catalog_dir

pytestmark = pytest.mark.reliability
LOCAL = "http://localhost"
BOUNDARY = b"b0undary"
HEAD = (  # the start of a multipart body whose one file then goes on and on
    b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; '
    b'filename="huge.png"\r\nContent-Type: image/png\r\n\r\n'
)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return synthetic_catalog_dir(tmp_path_factory.mktemp("hardening"), n=200)


def _app(catalog, **options):
    from multitag.serve.app import create_app

    return create_app(catalog, **options)


def _client(app):
    from fastapi.testclient import TestClient

    return TestClient(app, base_url=LOCAL)


def _png(size=(64, 48), colour=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _noise_png(side: int) -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format="PNG")
    return buf.getvalue()


def _asgi_post(app, path: str, chunks, headers: list[tuple[bytes, bytes]]):
    """Send ``chunks`` to the app as one request body, chunk by chunk; returns (status, body,
    bytes the app pulled)."""
    pulled = 0
    sent: list[dict] = []
    source = iter(chunks)

    async def receive():
        nonlocal pulled
        chunk = next(source, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, pulled


# ------------------------------------------------------------------ upload size limits
def test_chunked_upload_without_length_stops_at_the_limit(catalog):
    app = _app(catalog, max_upload_mb=1)
    chunk = b"\0" * 65536
    endless = (chunk for _ in range(16384))  # 1 GiB if anybody read it all
    ctype = [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY)]
    status, body, pulled = _asgi_post(
        app, "/tag", (c for part in ([HEAD], endless) for c in part), ctype
    )
    assert status == 413 and b"1 MB upload limit" in body
    assert pulled <= 1024 * 1024 + len(chunk) + len(HEAD)  # stopped one chunk past the limit


def test_declared_length_over_the_limit_is_refused_before_reading(catalog):
    app = _app(catalog, max_upload_mb=1)
    headers = [
        (b"content-type", b"multipart/form-data; boundary=x"),
        (b"content-length", str(1 << 30).encode()),
    ]
    status, body, pulled = _asgi_post(app, "/tag", iter([b"\0" * 65536] * 4), headers)
    assert status == 413 and pulled == 0


def test_no_spool_file_grows_past_the_per_file_limit(catalog, monkeypatch):
    """One 2.5 MB file among small ones in /recommend (under the request total) is cut off at
    the 1 MB per-file limit before its spool file passes it."""
    import starlette.formparsers as fp

    biggest = []
    real = fp.SpooledTemporaryFile

    class Recording(real):
        def write(self, data):
            out = super().write(data)
            biggest.append(self.tell())
            return out

    monkeypatch.setattr(fp, "SpooledTemporaryFile", Recording)
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (5 * 512 * 1024)
    files = [("files", ("a.png", _png(), "image/png")), ("files", ("big.png", big, "image/png"))]
    request = httpx.Request("POST", LOCAL + "/recommend", files=files)
    body = request.read()
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    ctype = [(b"content-type", request.headers["content-type"].encode())]
    status, detail, _ = _asgi_post(_app(catalog, max_upload_mb=1), "/recommend", chunks, ctype)
    assert status == 413 and b"big.png" in detail
    assert max(biggest) > 512 * 1024  # the big file was being spooled ...
    assert max(biggest) <= 1024 * 1024  # ... and stopped at the limit


def test_oversized_upload_over_a_real_socket(catalog):
    """uvicorn + a chunked body with no Content-Length: the server answers 413 (or hangs up)
    long before the client has pushed its 1 GiB."""
    from multitag.serve.background import BackgroundServer

    pushed = 0

    def body():
        nonlocal pushed
        yield HEAD
        for _ in range(16384):
            pushed += 65536
            yield b"\0" * 65536

    with BackgroundServer(_app(catalog, max_upload_mb=1)) as url:
        headers = {"content-type": "multipart/form-data; boundary=" + BOUNDARY.decode()}
        try:
            res = httpx.post(url + "/tag", content=body(), headers=headers, timeout=60)
            assert res.status_code == 413
        except httpx.TransportError:
            pass  # the server closed the connection mid-upload: also a refusal
    assert pushed < 64 * 1024 * 1024


# -------------------------------------------------------------------- pixel budgets
def test_pixel_budget_is_checked_from_the_header_before_decoding(catalog, monkeypatch):
    import multitag.data.images as images

    decoded = []
    real = images.load_image
    monkeypatch.setattr(images, "load_image", lambda *a, **k: decoded.append(1) or real(*a, **k))
    bomb = _png((9000, 9000), (10, 10, 10))  # solid colour: a small file, 81 Mpx
    assert len(bomb) < 1024 * 1024
    with _client(_app(catalog)) as c:
        res = c.post("/tag", files={"file": ("bomb.png", bomb, "image/png")})
    assert res.status_code == 413
    assert "bomb.png" in res.json()["detail"] and "--max-pixels" in res.json()["detail"]
    assert decoded == []


def test_total_pixel_budget_of_one_recommend_request(catalog):
    photos = [("files", (f"{i}.png", _png((100, 80)), "image/png")) for i in range(3)]
    with _client(_app(catalog, max_pixels=10_000, max_total_pixels=20_000)) as c:
        res = c.post("/recommend", files=photos)
        assert res.status_code == 413 and "--max-total-pixels" in res.json()["detail"]
        assert c.post("/recommend", files=photos[:2]).status_code == 503  # in budget: no model


# ---------------------------------------------------------------------- worker pool
def test_model_pool_bounds_running_and_waiting_jobs():
    from multitag.serve.workers import Busy, ModelPool

    release = threading.Event()

    async def scenario():
        pool = ModelPool(workers=1, queue=1)
        first = asyncio.ensure_future(pool.run(release.wait, 30))
        second = asyncio.ensure_future(pool.run(lambda: "queued"))
        await asyncio.sleep(0.05)
        assert pool.admitted == 2
        with pytest.raises(Busy) as err:
            await pool.run(lambda: "refused")
        assert err.value.retry_after >= 1
        release.set()
        assert await first is True and await second == "queued"
        assert pool.admitted == 0
        assert await pool.run(lambda: 7) == 7  # free again
        pool.shutdown()

    asyncio.run(scenario())


def test_busy_pool_answers_503_and_the_event_loop_stays_free(catalog, monkeypatch):
    """An upload stuck in decoding does not hold up GET /items; one more upload than the pool
    admits gets 503 with Retry-After at once."""
    from multitag.serve.background import BackgroundServer

    app = _app(catalog, workers=1, queue=0)
    service = app.state.service
    started, release = threading.Event(), threading.Event()
    real = service.analyse

    def slow_analyse(*args):
        started.set()
        release.wait(60)
        return real(*args)

    monkeypatch.setattr(service, "analyse", slow_analyse)
    files = {"file": ("a.png", _png(), "image/png")}
    with BackgroundServer(app) as url:
        results = {}
        first = threading.Thread(
            target=lambda: results.update(first=httpx.post(url + "/tag", files=files, timeout=60))
        )
        first.start()
        assert started.wait(30)
        try:
            items = httpx.get(url + "/items", timeout=30)  # hangs if the loop were blocked
            assert items.status_code == 200 and items.json()["total"] == 200
            busy = httpx.post(url + "/tag", files=files, timeout=30)
            assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
            assert "busy" in busy.json()["detail"]
        finally:
            release.set()
            first.join(60)
    assert results["first"].status_code == 503  # the deliberate one: no model loaded
    assert "no model" in results["first"].json()["detail"]


# ------------------------------------------------------------------ keys and hosts
def test_api_key_in_the_query_string_is_refused(catalog):
    with _client(_app(catalog, api_key="s3cret")) as c:
        for url in ("/items?api_key=s3cret", "/thumbs/s1?api_key=s3cret", "/?API_KEY=s3cret"):
            res = c.get(url, headers={"X-API-Key": "s3cret"})
            assert res.status_code == 400 and "X-API-Key" in res.json()["detail"], url
            assert "s3cret" not in res.text
        assert c.get("/items", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_session_cookie_for_the_explorer(catalog):
    from multitag.serve.security import SESSION_COOKIE

    with _client(_app(catalog, api_key="s3cret")) as c:
        assert c.post("/session").status_code == 401
        assert c.get("/thumbs/s1").status_code == 401
        res = c.post("/session", headers={"X-API-Key": "s3cret"})
        assert res.status_code == 204
        cookie = res.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert "s3cret" not in cookie  # an HMAC of the key, not the key
        thumb = c.get("/thumbs/s1")  # the cookie alone, as an <img> sends it
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        c.cookies.clear()
        c.cookies.set(SESSION_COOKIE, "forged")
        assert c.get("/thumbs/s1").status_code == 401


def test_access_log_never_shows_a_key(catalog):
    """Through uvicorn's real access logger: the refused query key is redacted."""
    import uvicorn

    from multitag.serve.background import free_port

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    app = _app(catalog, api_key="s3cret")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info"))
    handler = Keep()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started:
                break
            threading.Event().wait(0.05)
        logging.getLogger("uvicorn.access").addHandler(handler)
        res = httpx.get(f"http://127.0.0.1:{port}/items?page=1&api_key=s3cret", timeout=30)
        assert res.status_code == 400
    finally:
        server.should_exit = True
        thread.join(10)
        logging.getLogger("uvicorn.access").removeHandler(handler)
    lines = [r for r in records if "/items" in r]
    assert lines and all("s3cret" not in r for r in lines)
    assert "api_key=[redacted]" in lines[0]


def test_host_allow_list(catalog):
    from multitag.serve.settings import default_hosts

    with _client(_app(catalog)) as c:
        assert c.get("/topics").status_code == 200
        assert c.get("/topics", headers={"host": "127.0.0.1:8000"}).status_code == 200
        rebound = c.get("/topics", headers={"host": "evil.example"})
        assert rebound.status_code == 400
    with _client(_app(catalog, allowed_hosts=("*",))) as c:
        assert c.get("/topics", headers={"host": "evil.example"}).status_code == 200
    assert default_hosts("0.0.0.0") == ("localhost", "127.0.0.1")
    assert default_hosts("10.1.2.3", ["shop.internal"])[0] == "10.1.2.3"
    assert "shop.internal" in default_hosts("10.1.2.3", ["shop.internal"])


def test_explorer_never_puts_the_key_in_a_url():
    from multitag.serve.app import STATIC

    js = (STATIC / "app.js").read_text()
    assert "api_key" not in js and "localStorage" not in js
    assert '"/session"' in js and "X-API-Key" in js


# ----------------------------------------------------------- plain errors, no paths
def test_thumbnail_of_a_truncated_or_missing_source_is_a_plain_404(tmp_path):
    import pandas as pd

    from multitag.catalog.store import load_catalog

    catalog = synthetic_catalog_dir(tmp_path, n=12, n_images=3)
    paths = pd.read_parquet(load_catalog(catalog).data_dir / "items.parquet")["path"].tolist()
    Path(paths[1]).write_bytes(Path(paths[1]).read_bytes()[:60])  # truncated mid-stream
    Path(paths[2]).unlink()
    with _client(_app(catalog)) as c:
        assert c.get("/thumbs/s0").status_code == 200
        cut, gone = c.get("/thumbs/s1"), c.get("/thumbs/s2")
    assert cut.status_code == 404 and "cannot be read" in cut.json()["detail"]
    assert gone.status_code == 404 and "no longer" in gone.json()["detail"]
    for res in (cut, gone):
        assert str(tmp_path) not in res.text and "/images/" not in res.text


def test_unexpected_errors_give_no_traceback_or_path(catalog, monkeypatch):
    from fastapi.testclient import TestClient

    app = _app(catalog)

    def broken(row):
        raise RuntimeError(f"{catalog}/items.parquet exploded")

    monkeypatch.setattr(app.state.service, "detail", broken)
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as c:
        res = c.get("/items/s1")
    assert res.status_code == 500
    assert str(catalog) not in res.text and "Traceback" not in res.text


def test_missing_or_torn_index_is_refused_at_start(tmp_path):
    import shutil

    import faiss
    from typer.testing import CliRunner

    from multitag.catalog.build import build_index
    from multitag.catalog.store import CatalogError, load_catalog
    from multitag.cli.main import app as cli

    catalog = synthetic_catalog_dir(tmp_path, n=30, n_images=2)
    index = load_catalog(catalog).data_dir / "index.faiss"  # in the published state folder
    shutil.copy(index, tmp_path / "good.faiss")
    index.unlink()
    with pytest.raises(CatalogError, match="index.faiss is missing"):
        _app(catalog)
    result = CliRunner().invoke(cli, ["serve", str(catalog)])
    assert result.exit_code == 2 and "index.faiss is missing" in result.output
    assert "Traceback" not in result.output and "catalog build" in result.output
    faiss.write_index(build_index(np.eye(8, 64, dtype=np.float32))[0], str(index))  # 8 vs 30
    with pytest.raises(CatalogError, match="torn catalogue.*items.parquet 30, index.faiss 8"):
        _app(catalog)
    index.write_bytes(b"not a faiss index")
    with pytest.raises(CatalogError, match="index.faiss is unreadable"):
        _app(catalog)
    shutil.copy(tmp_path / "good.faiss", index)
    assert _app(catalog).state.service.index.ntotal == 30


@pytest.mark.parametrize(
    ("option", "value"),
    [("--workers", "0"), ("--queue", "-1"), ("--max-pixels", "0"), ("--max-upload-mb", "0")],
)
def test_serve_options_are_validated(catalog, option, value):
    from typer.testing import CliRunner

    from multitag.cli.main import app as cli

    result = CliRunner().invoke(cli, ["serve", str(catalog), option, value])
    assert result.exit_code == 2 and option in result.output and value in result.output
