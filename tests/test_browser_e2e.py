"""End-to-end in real Chromium: the app as a user meets it.

Starts `streamlit run app.py` on a free localhost port, visits every page, trains a short run on the synthetic
demo from the Train page and sees it complete on the Runs page, uploads real tiles (and one corrupt file) on the
Classify page and sees predictions and Grad-CAM images, opens the Review page, asserts no page shows an
exception, saves screenshots under test-artifacts/browser/, and stops the server.

Needs /usr/bin/chromium (Debian's package; `.ci/run` installs it). Skipped where it is absent, unless
HISTO_REQUIRE_BROWSER=1 (CI), where a missing browser fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, ROOT, app_dirs, streamlit_server

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

ARTIFACTS = ROOT / "test-artifacts" / "browser"
SCREENSHOTS = (
    ROOT / "tests" / "screenshots"
)  # committed: the README shows them; refreshed with HISTO_UPDATE_SCREENSHOTS=1
PAGES = ["Datasets", "Train", "Runs", "Compare", "Classify", "Review"]


def _require_browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("HISTO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`)")
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium)")
    return pytest.importorskip("playwright.sync_api")


def wait_images_loaded(page, timeout_s: float = 60) -> None:
    """Every st.image on the page has loaded (on a loaded machine the browser may still be fetching some)."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
        ".every(img => img.complete && img.naturalWidth > 0)",
        timeout=timeout_s * 1000,
    )


def wait_idle(page, timeout_s: float = 120) -> None:
    """Wait until Streamlit has rendered the app and finished running the script."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_s * 1000)
    # Every page starts with its heading (pages/ui/common.py page_setup): until it is there the page's script
    # has not started, and the status widget would not show yet either.
    page.wait_for_selector("h1", timeout=timeout_s * 1000)
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        running = page.locator('[data-testid="stStatusWidget"]').count() > 0
        skeleton = page.locator('[data-testid="stAppSkeleton"], [data-testid="stSpinner"]').count() > 0
        if running or skeleton:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 1.5:
            return
        time.sleep(0.25)
    raise AssertionError("the app did not finish running its script in time")


def assert_no_exception(page, where: str) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, f"{where} shows an exception: {exceptions.first.inner_text()[:500]}"


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if os.environ.get("HISTO_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


def goto(page, url: str, name: str) -> None:
    page.goto(url, wait_until="domcontentloaded")
    wait_idle(page)
    assert_no_exception(page, name)


def test_user_journey(tmp_path, shared_data):
    sync_api = _require_browser()
    env = app_dirs(tmp_path, HISTO_MAX_RUNS_CPU="1")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "streamlit.log"

    with streamlit_server(env, log) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})

            # Every page renders without an exception.
            goto(page, url, "home")
            assert page.get_by_text("Histo Explorer").first.is_visible()
            nav = page.locator('[data-testid="stSidebarNav"]').inner_text()  # icons and titles, "Home" first
            words = [w for w in nav.split() if w.isascii()]
            assert words == [
                "Home",
                "Datasets",
                "Train",
                "Runs",
                "Compare",
                "Classify",
                "Review",
                "Feature",
                "map",
                "Slides",
                "Studies",
                "Curation",
            ]
            shot(page, "home")
            for name in PAGES:
                goto(page, f"{url}/{name}", name)
                shot(page, name.lower())

            # The synthetic demo is shown, and labelled as such, on the Datasets page.
            goto(page, f"{url}/Datasets?dataset=synthetic", "Datasets (synthetic)")
            assert page.get_by_text("SYNTHETIC", exact=False).first.is_visible()
            # only the open tab is built: no tile before its tab is clicked, which then opens it (and the URL says so)
            assert page.locator('[data-testid="stImage"]').count() == 0
            page.get_by_role("tab", name="Sample tiles").click()
            page.locator('[data-testid="stImage"]').first.wait_for(timeout=60_000)
            wait_idle(page)
            assert "datasets_tab=Sample+tiles" in page.url

            # Train a short run on the synthetic demo from the Train page.
            goto(page, f"{url}/Train?dataset=synthetic", "Train")
            epochs = page.get_by_label("Epochs", exact=True)
            epochs.fill("2")
            epochs.press("Enter")
            wait_idle(page)
            page.get_by_role("button", name="Start training").click()
            wait_idle(page)
            assert_no_exception(page, "Train after start")
            started = page.get_by_text(re.compile(r"Started run")).first
            started.wait_for(timeout=60_000)
            run_id = re.search(r"Started run\s+(\S+)", started.inner_text()).group(1).strip("`")
            shot(page, "train-started")

            # ... and see it complete on the Runs page.
            deadline = time.monotonic() + 300
            while True:
                goto(page, f"{url}/Runs?run={run_id}", "Runs")
                status_file = tmp_path / "runs" / run_id / "status.json"
                text = status_file.read_text() if status_file.exists() else ""
                if '"completed"' in text and page.get_by_text("completed").count() > 0:
                    break
                assert '"failed"' not in text, f"the run failed: {text}"
                assert time.monotonic() < deadline, f"run {run_id} did not complete in time: {text}"
                time.sleep(3)
            shot(page, "runs-completed")

            # Classify real tiles plus a corrupt file: per-file error, the rest classified with CAMs.
            goto(page, f"{url}/Classify", "Classify")
            tiles = sorted((shared_data / "tiles" / "pathmnist-224").rglob("*.png"))[:3]
            tiles += sorted((shared_data / "tiles" / "crc-he").rglob("*.tif"))[:1]
            assert tiles, "no shared tiles found"
            corrupt = tmp_path / "corrupt.png"
            corrupt.write_bytes(b"this is a text file, not a PNG\n" * 10)
            upload_dir = tmp_path / "uploads"
            upload_dir.mkdir()
            files = [shutil.copy(t, upload_dir / t.name) for t in tiles] + [str(corrupt)]
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(files)
            page.get_by_text(re.compile(r"\d+ of \d+ file\(s\) classified")).first.wait_for(timeout=120_000)
            wait_idle(page)
            shot(page, "classify")
            assert_no_exception(page, "Classify after upload")
            assert page.get_by_text(re.compile(r"4 of 5 file\(s\) classified")).count() > 0
            assert page.get_by_text("corrupt.png").count() > 0
            cam_captions = page.get_by_text(re.compile(r"GradCAM for '"))
            cam_captions.first.wait_for(timeout=180_000)
            wait_idle(page)
            body = page.locator('[data-testid="stMain"]').inner_text()
            assert cam_captions.count() >= len(tiles), f"Grad-CAM overlays not rendered for every tile:\n{body[-3000:]}"
            images = page.locator('[data-testid="stImage"] img')
            assert images.count() >= 2 * len(tiles)
            wait_images_loaded(page)
            assert all(images.nth(i).evaluate("img => img.naturalWidth > 0") for i in range(images.count()))
            cam_captions.first.scroll_into_view_if_needed()
            shot(page, "classify-cams")

            # The Review page opens on the finished run.
            goto(page, f"{url}/Review", "Review")
            assert page.get_by_text(run_id).count() > 0 or page.get_by_text("misclassified", exact=False).count() > 0
            shot(page, "review")
        finally:
            browser.close()
    assert not re.search(r"Traceback \(most recent call last\)", log.read_text()), (
        f"the server logged a traceback:\n{log.read_text()[-3000:]}"
    )


def test_new_user_walk(tmp_path, shared_data, monkeypatch):
    """Issue 14's journey on the real samples: the PathMNIST npz by path, train with the defaults, watch it finish,
    evaluate it on the crc-he folder from the Runs page, classify real tiles with CAMs at their own resolution,
    Review with a cell selected then another run, the default run's label errors with their tiles."""
    sync_api = _require_browser()
    env = app_dirs(tmp_path, monkeypatch, HISTO_MAX_RUNS_CPU="1")
    npz = shared_data / "pathmnist-mini" / "pathmnist.npz"
    crc = shared_data / "tiles" / "crc-he" / "NCT-CRC-HE-100K-NONORM"
    log = ARTIFACTS / "streamlit-walk.log"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with streamlit_server(env, log) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # the npz by path, trained with the defaults (train+val, no validation split)
            goto(page, f"{url}/Train?dataset={npz}", "Train (npz)")
            page.get_by_text(re.compile(r"9 classes")).first.wait_for(timeout=120_000)
            wait_idle(page)
            start = page.get_by_role("button", name="Start training")
            start.click()
            start.click()  # a double click starts one run
            wait_idle(page)
            started = page.get_by_text(re.compile(r"Started run")).first
            started.wait_for(timeout=60_000)
            run_id = re.search(r"Started run\s+(\S+)", started.inner_text()).group(1).strip("`")
            deadline = time.monotonic() + 600
            while True:
                goto(page, f"{url}/Runs?run={run_id}", "Runs")
                text = (
                    (tmp_path / "runs" / run_id / "status.json").read_text()
                    if (tmp_path / "runs" / run_id / "status.json").exists()
                    else ""
                )
                if '"completed"' in text and page.get_by_text("No validation split").count() > 0:
                    break
                assert '"failed"' not in text, f"the run failed: {text}"
                assert time.monotonic() < deadline, f"run {run_id} did not complete in time: {text}"
                time.sleep(5)
            assert len(list((tmp_path / "runs").glob("*/config.json"))) == 1  # the double click made one run
            shot(page, "walk-runs-no-validation")

            # evaluate it on the crc-he folder from the page (a background job), listed when done
            goto(page, f"{url}/Runs?run={run_id}&dataset={crc}", "Runs (evaluate)")
            page.get_by_role("button", name="Start the evaluation").click()
            page.get_by_text("Evaluations on other datasets").first.wait_for(timeout=240_000)
            wait_idle(page)
            assert_no_exception(page, "Runs after the evaluation")
            shot(page, "walk-evaluation")

            # classify the real full-size tiles: CAMs at the upload's resolution, beside it
            goto(page, f"{url}/Classify?run={run_id}", "Classify")
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
                [str(p) for p in sorted(crc.rglob("*.tif"))]
            )
            page.get_by_text(re.compile(r"9 of 9 file\(s\) classified")).first.wait_for(timeout=180_000)
            page.get_by_text(re.compile(r"GradCAM for '.*' at 224x224 px")).first.wait_for(timeout=180_000)
            wait_idle(page)
            assert_no_exception(page, "Classify after upload")
            shot(page, "walk-classify")

            # Review: a cell selected, then another run (its cells differ), then the label errors with their tiles
            from tests.runfiles import write_run

            other = write_run("completed", skill=1.0, seed=3)
            goto(page, f"{url}/Review?run={run_id}", "Review")
            cell = page.get_by_label("Confusion-matrix cell (true → predicted, count)")
            cell.click()
            page.get_by_role("option").nth(1).click()
            wait_idle(page)
            assert_no_exception(page, "Review with a cell")
            shot(page, "walk-review-cell")
            page.get_by_label("Run", exact=True).click()
            page.get_by_role("option", name=re.compile(other.id)).click()
            wait_idle(page)
            page.get_by_role("combobox", name="Sort by").click()
            page.get_by_role("option", name="index").click()
            wait_idle(page)
            assert_no_exception(page, "Review after switching runs")
            goto(page, f"{url}/Review?run={run_id}", "Review (default run)")
            for label, value in (("Folds", "2"), ("Epochs per fold", "2")):
                box = page.get_by_label(label, exact=True)
                box.fill(value)
                box.press("Enter")
                wait_idle(page)
            page.get_by_role("button", name="Find suspected label errors").click()
            page.get_by_text(re.compile(r"given .* · looks like")).first.wait_for(timeout=300_000)
            wait_idle(page)
            assert_no_exception(page, "Review label errors")
            assert page.get_by_text("refer to row").count() == 0
            page.get_by_text("Most suspicious training tiles").first.scroll_into_view_if_needed()
            shot(page, "walk-label-errors")
        finally:
            browser.close()
    assert not re.search(r"Traceback \(most recent call last\)", log.read_text()), (
        f"the server logged a traceback:\n{log.read_text()[-3000:]}"
    )


def test_datasets_first_choice_and_offline_download(tmp_path, shared_data):
    """Issue 14, in the browser only: the user's first dataset choice used to snap back to the ?dataset= the page
    had written on the first visit, and after adding a dataset the first offline download click showed no
    message (its expander reopened collapsed). Downloads are made to fail here even with internet (a dead proxy)."""
    sync_api = _require_browser()
    env = app_dirs(tmp_path, https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    crc = shared_data / "tiles" / "crc-he" / "NCT-CRC-HE-100K-NONORM"
    log = ARTIFACTS / "streamlit-datasets.log"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with streamlit_server(env, log) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            goto(page, f"{url}/Datasets", "Datasets")
            page.get_by_text("SYNTHETIC DEMO DATA").first.wait_for(timeout=60_000)
            page.get_by_label("Dataset", exact=True).click()
            page.get_by_role("option", name=re.compile(r"PathMNIST.*not downloaded")).first.click()
            wait_idle(page)
            assert page.get_by_text("train (official)").count() == 1, "the first choice did not stick"
            assert "dataset=pathmnist" in page.url

            page.get_by_text("Add your own dataset").click()
            wait_idle(page)
            page.get_by_label("Path", exact=True).fill(str(crc))
            page.get_by_label("Path", exact=True).press("Enter")
            wait_idle(page)
            page.get_by_role("button", name="Add dataset").click()
            page.get_by_text(re.compile(r"Added NCT-CRC-HE-100K-NONORM")).first.wait_for(timeout=120_000)
            wait_idle(page)
            page.get_by_text("Download a MedMNIST set").click()
            wait_idle(page)
            page.get_by_role("button", name=re.compile(r"Download pathmnist")).click()
            wait_idle(page)
            message = page.get_by_text(re.compile(r"cannot reach .*put it at")).first
            message.wait_for(timeout=60_000)
            assert message.is_visible()
            assert_no_exception(page, "Datasets after the offline download")
            shot(page, "datasets-offline-download")
        finally:
            browser.close()


DOCS_SHOTS = ROOT / "docs" / "screenshots"  # small viewport shots the README shows; HISTO_UPDATE_SCREENSHOTS=1


def doc_shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    if os.environ.get("HISTO_UPDATE_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_SHOTS / f"{name}.png"))


def nav_words(page) -> list[str]:
    return [w for w in page.locator('[data-testid="stSidebarNav"]').inner_text().split() if w.isascii()]


def test_walk_from_a_shared_link(tmp_path, shared_data, shipped_model, monkeypatch):
    """Issue 24's walk II: a shared Review link opened first after the server starts (the sidebar as from /), a
    click on a confusion-matrix cell, the shipped model on Classify (the CSV with the flag's columns, its most
    similar training tiles) and its evaluation on the Kather folder with the pre-filled class map."""
    sync_api = _require_browser()
    env = app_dirs(tmp_path, monkeypatch)
    env["HISTO_SHIPPED_WEIGHTS_DIR"] = str(shipped_model.parent)  # the repository's weights/
    from tests.runfiles import CLASSES, write_run

    run = write_run("completed", skill=1.0, seed=5)
    kather = shared_data / "tiles" / "kather2016"
    uploads = sorted((shared_data / "tiles" / "breakhis-400x").rglob("*.png"))[:2]
    uploads += sorted((shared_data / "tiles" / "crc-he" / "CRC-VAL-HE-7K").rglob("*.tif"))[:2]
    log = ARTIFACTS / "streamlit-shared-link.log"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with streamlit_server(env, log) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860}, accept_downloads=True)
            # a shared link is the first page the server serves: the sidebar is the app's, as when / comes first
            goto(page, f"{url}/Review?run={run.id}", "Review (shared link first)")
            first = nav_words(page)
            assert first[:3] == ["Home", "Datasets", "Train"] and "app" not in first, first
            icons = page.locator('[data-testid="stSidebarNav"] [data-testid="stIconEmoji"]').count()
            goto(page, url, "Home")
            assert nav_words(page) == first
            assert page.locator('[data-testid="stSidebarNav"] [data-testid="stIconEmoji"]').count() == icons > 0

            # Review: a click on an off-diagonal cell of the matrix (true class 0, predicted 1) filters the tiles
            goto(page, f"{url}/Review?run={run.id}", "Review")
            chart = page.locator('[data-testid="stPlotlyChart"]').first
            chart.scroll_into_view_if_needed()
            point = chart.locator(".scatterlayer .point").nth(1)  # cells row by row: (0, 1)
            box = point.bounding_box()
            assert box is not None
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            wait_idle(page)
            assert page.get_by_role("combobox", name="True class").input_value() == CLASSES[0]
            assert page.get_by_role("combobox", name="Predicted class").input_value() == CLASSES[1]
            assert_no_exception(page, "Review after a cell click")
            doc_shot(page, "walk2-review-cell-click")

            # the shipped model on Classify, as a shared link in a new tab: real tiles of two organs, the CSV with
            # the flag's score in its columns
            page = browser.new_page(viewport={"width": 1280, "height": 860}, accept_downloads=True)
            goto(page, f"{url}/Classify?model=pathmnist-resnet9", "Classify (shipped model)")
            assert page.get_by_role("combobox", name="Model").input_value().startswith("pathmnist-resnet9 ")
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files([str(p) for p in uploads])
            page.get_by_text(re.compile(rf"{len(uploads)} of {len(uploads)} file\(s\) classified")).first.wait_for(
                timeout=180_000
            )
            wait_idle(page)
            with page.expect_download() as dl:
                page.get_by_role("button", name=re.compile("Download the table")).click()
            import pandas as pd

            csv = pd.read_csv(dl.value.path())
            assert {"unlike training score", "unlike training"} <= set(csv.columns)
            assert csv["unlike training score"].notna().all() and len(csv) == len(uploads)
            breakhis = csv[csv["file"].astype(str).str.contains("SOB_")]
            assert len(breakhis) == 2 and (breakhis["unlike training score"] >= 1.0).all(), csv.to_string()
            # each card shows the score (flagged or not), after its Grad-CAM is computed
            page.get_by_text(re.compile(r"[Uu]nlike.the.training.tiles\W{0,3}score \d")).first.wait_for(timeout=240_000)
            wait_idle(page)
            doc_shot(page, "walk2-classify-flag")

            # its most similar training tiles: the card names the dataset, embedded once in the background
            page.get_by_text("Most similar training tiles").first.click()
            wait_idle(page)
            assert page.get_by_text("does not record").count() == 0
            embed = page.get_by_role("button", name="Embed the training tiles")
            if embed.count():
                embed.first.click()
            page.get_by_text(re.compile(r"k-NN vote of the \d+ nearest")).first.wait_for(timeout=300_000)
            wait_idle(page)
            assert_no_exception(page, "Classify, similar tiles")
            page.get_by_text(re.compile(r"k-NN vote of the")).first.scroll_into_view_if_needed()
            doc_shot(page, "walk2-similar-tiles")

            # the Kather folder: classes pre-filled (only 03_COMPLEX unscored), evaluated in the background
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            goto(page, f"{url}/Classify?model=pathmnist-resnet9&dataset={kather}", "Classify (evaluate on Kather)")
            page.get_by_text(re.compile(r"Not scored \(1 of 8 classes.*03_COMPLEX")).first.wait_for(timeout=120_000)
            assert page.get_by_text("No dataset class is matched").count() == 0
            assert page.locator('[data-testid="stAlertContentError"]').count() == 0  # no error before an edit
            page.get_by_role("button", name="Start the evaluation").click()
            page.get_by_text("Evaluations on other datasets").first.wait_for(timeout=240_000)
            wait_idle(page)
            assert_no_exception(page, "Classify after the Kather evaluation")
            page.get_by_text("Evaluations on other datasets").first.scroll_into_view_if_needed()
            doc_shot(page, "walk2-kather-evaluation")
        finally:
            browser.close()
    assert not re.search(r"Traceback \(most recent call last\)", log.read_text()), (
        f"the server logged a traceback:\n{log.read_text()[-3000:]}"
    )
