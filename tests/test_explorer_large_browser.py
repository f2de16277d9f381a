"""The explorer on a catalogue too large for one response, in a real browser: a sample on a
density layer, zooming fetches the new view's points, the tag filter runs on the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from multitag.bench.catalog import CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (make browser)"),
]


def test_explorer_shows_a_sample_and_fetches_points_per_view(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    from multitag.catalog.synthetic import synthetic_catalog
    from multitag.serve.app import create_app
    from multitag.serve.background import BackgroundServer

    # 20,000 items with at most 2,000 points an answer: sampled like millions would be
    app = create_app(synthetic_catalog(tmp_path / "catalog", 20_000), map_points=2000)
    with (
        playwright.sync_playwright() as p,
        BackgroundServer(app) as url,
    ):
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_function("window.__ready === true", timeout=60_000)
        state = "window.explorer.state"
        assert page.evaluate(f"{state}.large") is True
        assert page.evaluate(f"{state}.map.ids.length") == 2000
        assert page.evaluate(f"{state}.map.total") == 20_000
        assert page.locator("#map .heatmaplayer image, #map .hm image").count() >= 1
        assert "zoom in for more" in page.locator("#status").inner_text()

        # zoom into a quarter of the map: the points of that view are fetched
        page.evaluate(
            "Plotly.relayout('map', {'xaxis.range[0]': 0, 'xaxis.range[1]': 0.5,"
            " 'yaxis.range[0]': 0, 'yaxis.range[1]': 0.5})"
        )
        page.wait_for_function(f"{state}.views >= 1", timeout=30_000)
        xs = page.evaluate(f"{state}.map.x")
        ys = page.evaluate(f"{state}.map.y")
        assert xs and all(0 <= x <= 0.5 for x in xs) and all(0 <= y <= 0.5 for y in ys)
        assert page.evaluate(f"{state}.map.total") < 20_000

        # the tag filter asks the server for the view's matching points
        page.fill("#tag-filter", "gender:gender1")
        page.dispatch_event("#tag-filter", "change")
        page.wait_for_function(f"{state}.views >= 2", timeout=30_000)
        codes = page.evaluate(f"{state}.map.colour_by.gender.codes")
        cats = page.evaluate(f"{state}.map.colour_by.gender.categories")
        assert codes and {cats[c] for c in codes} == {"gender1"}
        assert errors == []
        browser.close()
