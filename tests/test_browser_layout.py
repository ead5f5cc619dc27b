"""In real Chromium at 1024 px wide (issue 24, "labels cut off"): the labels and values a user reads are whole, not
cut off with "…" (every option of the Train form's selects, the run and model pickers, the Curation and Studies
pickers and buttons), the tables of Runs, Compare, Curation and Studies fit beside the sidebar, and tiles shown side
by side have one size.

Only what needs a browser's layout is tested here; what AppTest can see (formats, "None" cells) is in
tests/test_page_formats.py. Needs /usr/bin/chromium; skipped where it is absent (see tests/test_browser_e2e.py)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, app_dirs, streamlit_server
from tests.test_browser_e2e import ARTIFACTS, _require_browser, goto, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

WIDTH = 1024

# Text cut off inside a widget: a select's value (an <input> narrower than its text) or a label drawn on one line
# with an ellipsis (Streamlit's stMarkdownEllipsis) that is wider than its box.
CUT_OFF = """(root) => {
  const cut = [];
  const wider = (el) => el.scrollWidth > el.clientWidth + 1;
  for (const w of root.querySelectorAll('[data-testid="stSelectbox"], [data-testid="stCheckbox"]')) {
    for (const input of w.querySelectorAll('input')) {
      if (input.type !== 'checkbox' && wider(input)) cut.push(input.value);
    }
    for (const el of w.querySelectorAll('[class*="stMarkdownEllipsis"]')) {
      if (wider(el)) cut.push(el.textContent.trim());
    }
  }
  return cut;
}"""


# Every option of a select, measured in the select's own font against its box: the longest one a user can pick
# must show whole once picked, not only the one picked now.
OPTIONS_TOO_WIDE = """(options) => {
  const canvas = document.createElement('canvas').getContext('2d');
  const out = [];
  for (const w of document.querySelectorAll('[data-testid="stSelectbox"]')) {
    const label = (w.querySelector('label') || {innerText: ''}).innerText.trim();
    const input = w.querySelector('input');
    if (!(label in options) || !input) continue;
    canvas.font = getComputedStyle(input).font;
    for (const text of options[label]) {
      if (canvas.measureText(text).width > input.clientWidth) out.push(`${label}: ${text}`);
    }
  }
  return out;
}"""


def _train_select_options() -> dict[str, list[str]]:
    """The Train form's selects and the words of each of their options (the one table of training options)."""
    from histo_core.train_options import TABLE

    return {o.label: [o.choice_label(v) for v in o.choices()] for o in TABLE if o.choices is not None}


def _select_value(page, label: str):
    """The value box of the select whose label is exactly `label`."""
    return (
        page.locator('[data-testid="stSelectbox"]')
        .filter(has=page.get_by_text(label, exact=True))
        .locator("input")
        .first
    )


def _cut_off(page, where: str = "body") -> list[str]:
    return page.locator(where).first.evaluate(CUT_OFF)


def _settle(page) -> None:
    """Widgets appear after their code is fetched: wait until no skeleton placeholder is left."""
    deadline = time.monotonic() + 60
    while page.locator('[data-testid="stSkeleton"]').count() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1)


def _image_folder(root: Path) -> Path:
    """A folder of class folders (the tile-size select offers "auto" for it)."""
    rng = np.random.default_rng(0)
    for cls in ("tumour", "stroma"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_labels_and_tables_fit_a_1024_px_window(tmp_path, monkeypatch):
    sync_api = _require_browser()
    env = app_dirs(tmp_path, monkeypatch)
    from tests.runfiles import write_run

    run = write_run("completed", name="first", skill=1.0, seed=5)
    write_run("completed", name="second", skill=1.5, seed=6, noise=0.2)
    folder = _image_folder(tmp_path / "data" / "tiles")
    log = ARTIFACTS / "streamlit-layout.log"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with streamlit_server(env, log) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})

            # Train on an image folder: the tile-size select shows "auto (≤ 64 px)" whole; every checkbox of the
            # form (its sections opened) shows its whole label, wrapped where long
            goto(page, f"{url}/Train?dataset={folder}", "Train (folder)")
            _settle(page)
            size = page.locator('[data-testid="stSelectbox"]').filter(has_text="Tile size").locator("input")
            assert size.input_value().startswith("auto")
            for section in page.locator('[data-testid="stExpander"] summary').all():
                section.click()
            _settle(page)
            cut = _cut_off(page)
            assert size.input_value() not in cut, f"the tile-size select is cut off: {cut}"
            boxes = page.locator('[data-testid="stCheckbox"]')
            assert boxes.count() >= 5
            cut_boxes = [c for c in cut if any(c == t.strip() for t in boxes.all_inner_texts())]
            assert not cut_boxes, f"checkbox labels cut off: {cut_boxes}"
            options = _train_select_options()
            assert len(options) >= 8
            too_wide = page.evaluate(OPTIONS_TOO_WIDE, options)
            assert not too_wide, f"Train select options cut off once picked: {too_wide}"
            shot(page, "layout-train-1024")

            # Runs: the table's columns all fit beside the sidebar (no hidden last columns)
            goto(page, f"{url}/Runs", "Runs")
            _settle(page)
            scroller = page.locator('[data-testid="stDataFrame"] .dvn-scroller').first
            assert scroller.evaluate("el => el.scrollWidth <= el.clientWidth + 1"), "the runs table scrolls sideways"

            # Compare: the settings of the two runs side by side fit too (25 columns scrolled sideways)
            goto(page, f"{url}/Compare", "Compare")
            _settle(page)
            tables = page.locator('[data-testid="stDataFrame"] .dvn-scroller')
            assert tables.count() >= 1
            for i in range(tables.count()):
                assert tables.nth(i).evaluate("el => el.scrollWidth <= el.clientWidth + 1"), (
                    "a Compare table scrolls sideways"
                )

            # Classify: the model picker shows its whole label (the run's name, what it is, how good)
            goto(page, f"{url}/Classify?run={run.id}", "Classify")
            _settle(page)
            model = _select_value(page, "Model")
            assert f"first ({run.id}) · run · " in model.input_value(), model.input_value()
            assert model.input_value() not in _cut_off(page, '[data-testid="stMain"]'), "the model picker is cut off"

            # Review: the filters' values are whole ("Sort by" showed "los"), "CAM on all" stays on one line,
            # and the examples side by side have one size
            goto(page, f"{url}/Review?run={run.id}", "Review")
            _settle(page)
            cut = _cut_off(page, '[data-testid="stMain"]')
            run_value = _select_value(page, "Run").input_value()
            assert run_value.startswith(f"first · {run.id}") and run_value not in cut, f"the run picker is cut: {cut}"
            for name in ("Sort by", "True class", "Predicted class", "Tiles per page"):
                value = page.locator('[data-testid="stSelectbox"]').filter(has_text=name).locator("input")
                assert value.input_value() not in cut, f"{name} is cut off: {cut}"
            toggle = page.locator('[data-testid="stCheckbox"]').filter(has_text="CAM on all")
            label_height = toggle.locator("p").first.evaluate("el => el.getBoundingClientRect().height")
            line_height = toggle.locator("p").first.evaluate("el => parseFloat(getComputedStyle(el).lineHeight)")
            assert label_height < 1.5 * line_height, "'CAM on all' wraps onto several lines"
            examples = page.locator('[data-testid="stExpander"]').filter(has_text="Examples side by side")
            examples.locator("summary").click()
            _settle(page)
            widths = examples.locator('[data-testid="stImage"] img').evaluate_all(
                "imgs => imgs.map(i => Math.round(i.getBoundingClientRect().width))"
            )
            assert len(widths) >= 2 and len(set(widths)) == 1, f"examples of mixed sizes: {widths}"
            shot(page, "layout-review-1024")
        finally:
            browser.close()


# Buttons whose label is cut off with "…" (a long label in a narrow column).
BUTTONS_CUT = """(root) => {
  const cut = [];
  for (const b of root.querySelectorAll('[data-testid="stButton"] button, [data-testid="stDownloadButton"] button')) {
    const els = [b, ...b.querySelectorAll('*')];
    if (els.some(el => el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).textOverflow === 'ellipsis')) {
      cut.push(b.innerText.trim());
    }
  }
  return cut;
}"""


# Every table on the page fits its box (no columns off the right edge): the tables that are shown, as their
# scrollers' widths.
TABLES_SCROLL = """() => [...document.querySelectorAll('[data-testid="stDataFrame"] .dvn-scroller')]
  .filter(el => el.clientWidth > 0)
  .map(el => [el.scrollWidth, el.clientWidth])"""


def _tables(page, at_least: int, timeout_s: float = 60) -> list:
    """TABLES_SCROLL once `at_least` tables are drawn (a page's tables below a chart can be drawn a moment after
    its skeletons are gone) or the timeout passed."""
    deadline = time.monotonic() + timeout_s
    while len(tables := page.evaluate(TABLES_SCROLL)) < at_least and time.monotonic() < deadline:
        time.sleep(0.5)
    return tables


def test_curation_and_studies_fit_a_1024_px_window(tmp_path, monkeypatch):
    """Curation (the dataset picker, the marks table) and Studies (the study and method pickers, the summary, the
    as-labelled-against-corrections, per-class, detection and runs tables): no label cut off, no table scrolled
    sideways, at 1024 px beside the sidebar, for a study of the widest kind (with corrections and a search)."""
    sync_api = _require_browser()
    env = app_dirs(tmp_path, monkeypatch)
    from histo_core import study as S
    from histo_core.corrections import add_marks, corrections_path, dataset_identity
    from histo_core.datasets import open_dataset
    from tests.test_study import _save_search, fake_study

    task = fake_study({"codivide": 2.5, "elr+mixup": 1.0}, compare=True)  # the longest method names
    runs = S.study_runs(task)
    flipped = np.array([True, True, False, False])
    for key in ("simplecnn|0.4|codivide|0", "simplecnn|0.4|codivide|0|corrected"):
        _save_search(runs[key], flipped, np.array([0, 2, 1, 3]), np.array([True, False, True, False]))
    identity = dataset_identity(open_dataset("synthetic"))
    marks = [{"tile": "train:12", "action": "relabel", "label": 3, "given": 1}, {"tile": "val:7", "action": "exclude"}]
    run_id = next(iter(runs.values())).id
    add_marks(corrections_path(identity), identity, marks, run=run_id, source="suspected label errors by a.user")
    log = ARTIFACTS / "streamlit-layout-curation.log"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with streamlit_server(env, log) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            problems = []

            goto(page, f"{url}/Curation", "Curation")
            _settle(page)
            dataset = _select_value(page, "Dataset").input_value()
            assert "Synthetic" in dataset, dataset
            problems += [f"Curation: cut off: {c}" for c in _cut_off(page, '[data-testid="stMain"]')]
            problems += [f"Curation: button cut off: {b}" for b in page.locator("body").evaluate(BUTTONS_CUT)]
            tables = page.evaluate(TABLES_SCROLL)
            assert tables, "the marks table is not shown"
            problems += [f"Curation: a table scrolls sideways {t}" for t in tables if t[0] > t[1] + 1]
            shot(page, "layout-curation-1024")

            goto(page, f"{url}/Studies", "Studies")
            _settle(page)
            assert _select_value(page, "Study").input_value() == task.id
            assert _select_value(page, "Method").input_value().startswith("simplecnn · codivide")
            problems += [f"Studies: cut off: {c}" for c in _cut_off(page, '[data-testid="stMain"]')]
            problems += [f"Studies: button cut off: {b}" for b in page.locator("body").evaluate(BUTTONS_CUT)]
            shot(page, "layout-studies-1024")
            tables = _tables(page, at_least=5)  # summary, the two labels side by side, per class, detection, runs
            assert len(tables) >= 5, tables
            problems += [f"Studies: a table scrolls sideways {t}" for t in tables if t[0] > t[1] + 1]
            shot(page, "layout-studies-1024")
            assert not problems, problems
        finally:
            browser.close()
