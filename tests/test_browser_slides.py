"""The Slides page in real Chromium: pick the real CMU slide found under the data roots, start the analysis with
the shipped PathMNIST model (a background task), see the class map appear, click a tissue tile on it, and see that
tile's prediction and Grad-CAM.

Needs /usr/bin/chromium; skipped where it is absent unless HISTO_REQUIRE_BROWSER=1. Screenshots:
test-artifacts/browser/slides*.png (and tests/screenshots/ with HISTO_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import csv
import re

import pytest

from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, ROOT, app_dirs, streamlit_server
from tests.test_browser_e2e import ARTIFACTS, _require_browser, assert_no_exception, goto, shot, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

POINTS = '[data-testid="stPlotlyChart"] .scatterlayer .point'


def test_slides_pick_analyse_click_a_tile_see_its_cam(tmp_path, shared_data, shipped_model):
    sync_api = _require_browser()
    slide = shared_data / "slides" / "CMU-1-Small-Region.svs"
    if not slide.exists():
        pytest.skip(f"{slide} is absent")
    env = app_dirs(tmp_path, HISTO_SHIPPED_WEIGHTS_DIR=str(ROOT / "weights"), HISTO_DATA_ROOTS=str(slide.parent))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "streamlit-slides.log"

    with streamlit_server(env, log) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1500})
            goto(page, f"{url}/Slides?model=pathmnist-resnet9", "Slides")
            # pick the slide from those found in the data roots
            box = page.get_by_label("Slides found in the data folders", exact=True)
            box.click()
            page.get_by_role("option", name=re.compile("CMU-1-Small-Region.svs")).click()
            wait_idle(page)
            # (st.dataframe draws on a canvas: its cells are in the page but hidden)
            page.get_by_text("0.499 (metadata)").first.wait_for(state="attached", timeout=60_000)
            page.get_by_text(re.compile(r"Tiles of 112 µm = 224 px at level 0")).first.wait_for(timeout=60_000)
            # start the analysis: a background task; the class map appears when it is done
            page.get_by_role("button", name="Analyse the slide").click()
            try:
                page.get_by_role("button", name="Analyse again").wait_for(timeout=240_000)
            except sync_api.TimeoutError:
                shot(page, "slides-not-finished")
                tasks = tmp_path / "runs" / ".tasks"
                found = {p.parent.name: p.read_text() for p in tasks.glob("*/*.json")} if tasks.is_dir() else {}
                raise AssertionError(f"the analysis did not finish; tasks: {found}") from None
            wait_idle(page)
            assert_no_exception(page, "Slides after the analysis")
            assert page.get_by_role("heading", name="Class map").count() == 1
            page.locator(POINTS).first.wait_for(timeout=60_000)
            page.get_by_text("(unlike the training tiles)").first.wait_for(state="attached", timeout=30_000)
            page.get_by_role("heading", name="Class map").scroll_into_view_if_needed()
            shot(page, "slides-class-map")

            # the analysis left its table: click the point of a tissue tile that is not the page's default tile
            [folder] = list((tmp_path / "runs" / ".slides").iterdir())
            rows = list(csv.DictReader(open(folder / "tiles.csv")))
            first = rows[0]  # row 1: not the tile the panel shows first (the centre one)
            cols = 9  # the CMU slide at 112 µm: a 9 x 13 grid (tests/test_slides.py::test_grid_at_112_um)
            assert page.locator(POINTS).count() == cols * 13  # one point per tile, row by row
            point = page.locator(POINTS).nth(int(first["row"]) * cols + int(first["col"]))
            point.scroll_into_view_if_needed()
            bb = point.bounding_box()
            assert bb is not None
            page.mouse.click(bb["x"] + bb["width"] / 2, bb["y"] + bb["height"] / 2)
            cam = page.get_by_text(re.compile(f"^GradCAM for '{re.escape(first['class'])}'"))
            cam.first.wait_for(timeout=120_000)
            wait_idle(page)
            assert page.get_by_label("Row", exact=True).input_value() == first["row"]
            assert page.get_by_label("Column", exact=True).input_value() == first["col"]
            assert page.get_by_text(re.compile(rf"^{re.escape(first['class'])} \(\d+\.\d%\)")).count() >= 1
            assert page.get_by_text(re.compile(r"^the tile, 224 px")).count() >= 1
            assert_no_exception(page, "Slides after a tile click")
            page.get_by_text(re.compile(r"level-0 box x")).first.evaluate("e => e.scrollIntoView({block: 'start'})")
            shot(page, "slides-tile")
        finally:
            browser.close()
    assert not re.search(r"Traceback \(most recent call last\)", log.read_text()), log.read_text()[-3000:]
