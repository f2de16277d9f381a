"""The explorer in a real browser (Playwright + Debian chromium): map, hover thumbnail,
click -> similar items, upload -> tags, on a real catalogue."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from multitag.bench.catalog import CHROMIUM, CHROMIUM_ARGS  # one place for the launch flags
from tests.catalog_util import built_catalog, sample_rows
from tests.conftest import requires_fashion

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    requires_fashion,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (make browser)"),
]


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_explorer_hover_click_upload(browser, tmp_path_factory, trained_tagger, fashion_frame):
    from multitag.serve.app import create_app
    from multitag.serve.background import BackgroundServer

    cat_dir, model_dir, _ = built_catalog(tmp_path_factory, trained_tagger, fashion_frame)
    rows = sample_rows(fashion_frame)
    shots = tmp_path_factory.mktemp("screens")
    with BackgroundServer(create_app(cat_dir, model_dir)) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_function("window.__ready === true", timeout=30_000)
        assert page.locator("#map .scatterlayer, #map canvas").count() > 0
        n_points = page.evaluate("window.explorer.state.map.ids.length")
        assert n_points == len(rows)
        legend = page.locator("#map .legend .traces").count()
        assert legend >= 3  # topics + the similar/upload overlays

        # hover a point -> its thumbnail and tags
        row = 10
        xy = page.evaluate(f"window.explorer.pointPixel({row})")
        page.mouse.move(xy["x"], xy["y"])
        page.wait_for_function(
            "document.getElementById('hover-thumb').complete && "
            "document.getElementById('hover-thumb').naturalWidth > 0 && "
            "document.querySelectorAll('#hover-tags li').length > 0",
            timeout=15_000,
        )
        hovered = page.locator("#hover-id").inner_text()
        assert hovered in set(rows["id"])
        assert "/thumbs/" + hovered in page.locator("#hover-thumb").get_attribute("src")

        # click it -> similar items listed and highlighted on the map
        page.mouse.click(xy["x"], xy["y"])
        page.wait_for_selector("#similar-list .similar-item", timeout=15_000)
        assert page.locator("#similar-list .similar-item").count() == 12
        assert page.evaluate("window.explorer.state.highlight.length") == 12
        assert hovered in page.locator("#similar-title").inner_text()

        # colour by another field, filter by a tag
        page.select_option("#colour-by", "articleType")
        tag = "articleType:" + rows["articleType"].iloc[0]
        page.fill("#tag-filter", tag)
        page.dispatch_event("#tag-filter", "change")
        page.wait_for_function("window.explorer.state.match !== null", timeout=10_000)
        shown = page.evaluate("window.explorer.state.match.length")
        assert 0 < shown < len(rows)

        # upload a photo -> its tags and its neighbours highlighted
        page.set_input_files("#upload", rows["path"].iloc[3])
        page.wait_for_function(
            "document.querySelectorAll('#upload-tags li').length > 0", timeout=30_000
        )
        tags_text = page.locator("#upload-tags").inner_text()
        assert "articleType" in tags_text and "%" in tags_text
        assert page.evaluate("window.explorer.state.query.length") == 2
        page.wait_for_timeout(300)
        shot = shots / "explorer.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        keep = Path("/tmp/multitag-explorer.png")
        shutil.copy(shot, keep)  # for a person to look at
        assert errors == []
        page.close()


def test_explorer_with_an_api_key_never_puts_it_in_a_url(
    browser, tmp_path_factory, trained_tagger, fashion_frame
):
    """The explorer asks for the key once, trades it for the session cookie, and every request
    it makes (thumbnails included) leaves the key out of the URL."""
    from multitag.serve.app import create_app
    from multitag.serve.background import BackgroundServer

    key = "k3y-in-a-header-only"
    cat_dir, model_dir, _ = built_catalog(tmp_path_factory, trained_tagger, fashion_frame)
    with BackgroundServer(create_app(cat_dir, model_dir, api_key=key)) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        urls: list[str] = []
        page.on("request", lambda r: urls.append(r.url))
        page.on("dialog", lambda d: d.accept(key))
        page.goto(url + "/")
        page.wait_for_function("window.__ready === true", timeout=30_000)
        xy = page.evaluate("window.explorer.pointPixel(10)")
        page.mouse.move(xy["x"], xy["y"])
        page.wait_for_function(
            "document.getElementById('hover-thumb').complete && "
            "document.getElementById('hover-thumb').naturalWidth > 0",
            timeout=15_000,
        )
        assert any("/thumbs/" in u for u in urls) and any(u.endswith("/session") for u in urls)
        assert not [u for u in urls if key in u or "api_key" in u]
        assert page.evaluate("localStorage.length") == 0
        page.close()
