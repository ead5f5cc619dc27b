"""The Feature map page in real Chromium: the plotly scatter draws every tile of a trained run, and a lasso drawn
with the mouse on the plot shows the selected tiles in the grid below.

Uses the session's trained PathMNIST run (tests/conftest.py: 240 real tiles, embedded at the end of training).
Needs /usr/bin/chromium; skipped where it is absent unless HISTO_REQUIRE_BROWSER=1. Screenshot:
test-artifacts/browser/feature-map*.png (and tests/screenshots/ with HISTO_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import re
import time

import pytest

from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, app_dirs, streamlit_server
from tests.test_browser_e2e import ARTIFACTS, _require_browser, goto, shot, wait_idle, wait_images_loaded

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

POINTS = '[data-testid="stPlotlyChart"] .scatterlayer .point'


def _centres(page) -> list[tuple[float, float]]:
    return page.eval_on_selector_all(
        POINTS,
        "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })",
    )


def _inside(centres, cx: float, cy: float, half: float) -> int:
    return sum(abs(x - cx) <= half and abs(y - cy) <= half for x, y in centres)


def test_feature_map_scatter_and_lasso_selection(tmp_path, trained_pathmnist_run):
    sync_api = _require_browser()
    store = trained_pathmnist_run.path / "embeddings" / "meta.json"
    assert store.exists(), "the fixture run was not embedded at the end of training"
    env = app_dirs(tmp_path)
    (tmp_path / "runs" / trained_pathmnist_run.id).symlink_to(trained_pathmnist_run.path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "streamlit-feature-map.log"

    with streamlit_server(env, log) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            goto(page, f"{url}/Feature_map?run={trained_pathmnist_run.id}", "Feature map")
            page.locator(POINTS).first.wait_for(timeout=60_000)
            assert page.locator(POINTS).count() == 240  # every real tile of the run: 160 train, 40 val, 40 test
            assert page.get_by_text("Select points on the map").count() > 0
            shot(page, "feature-map")

            # a square lasso around the first drawn point, with the mouse
            centres = _centres(page)
            box = page.locator('[data-testid="stPlotlyChart"] .nsewdrag').first.bounding_box()
            assert box is not None
            inner = [
                (x, y)
                for x, y in centres
                if box["x"] + 40 < x < box["x"] + box["width"] - 40
                and box["y"] + 40 < y < box["y"] + box["height"] - 40
            ]
            cx, cy = inner[0]
            half = 25.0
            page.mouse.move(cx - half, cy - half)
            page.mouse.down()
            for x, y in (
                (cx + half, cy - half),
                (cx + half, cy + half),
                (cx - half, cy + half),
                (cx - half, cy - half),
            ):
                page.mouse.move(x, y, steps=8)
            page.mouse.up()
            selected = page.get_by_text(re.compile(r"\d+ tile\(s\) selected"))
            selected.first.wait_for(timeout=60_000)
            wait_idle(page)
            n = int(re.search(r"(\d+) tile\(s\) selected", selected.first.inner_text()).group(1))
            # the points whose centres lie well inside the square are selected; none far outside it
            assert _inside(centres, cx, cy, half - 4) <= n <= _inside(centres, cx, cy, half + 4), n
            assert n >= 1
            captions = page.get_by_text(re.compile(r"^(train|val|test) #\d+ · true .+ · pred "))
            deadline = time.monotonic() + 30
            while captions.count() < min(n, 48) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert captions.count() == min(n, 48)
            images = page.locator('[data-testid="stImage"] img')
            assert images.count() >= min(n, 48)
            wait_images_loaded(page)
            assert all(images.nth(i).evaluate("img => img.naturalWidth > 0") for i in range(images.count()))
            assert page.locator('[data-testid="stException"]').count() == 0
            shot(page, "feature-map-selection")
        finally:
            browser.close()
    assert not re.search(r"Traceback \(most recent call last\)", log.read_text()), log.read_text()[-3000:]
