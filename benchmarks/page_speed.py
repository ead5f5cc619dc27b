"""How fast the pages answer in a real browser: start the app, wait, drive Chromium, print the table.

    python benchmarks/page_speed.py                 # every page once, then the first and a later classification
    python benchmarks/page_speed.py --repeat 3      # each page's first load in 3 fresh servers (median shown)
    python benchmarks/page_speed.py --pages Datasets Classify --no-classify --repeat 1   # some pages only
    python benchmarks/page_speed.py --open cold warm sidebar --no-classify   # the three ways a page is opened
    python benchmarks/page_speed.py --json

For each repeat: a fresh server (`python serve.py`, which starts the warm-up with the server; `--launcher
streamlit` for `streamlit run app.py`, where it starts with the first session) on a free port with an empty data
folder (HISTO_DATA_DIR, runs in it), then `--settle` seconds (default 10: a user opening the page and choosing
files takes longer), then each page (`--pages`: some of them) is opened (`--open`: in a new tab of a fresh browser
profile, "cold", the default and the hardest case; in a new tab of a browser that has shown the app before, "warm",
whose cache holds Streamlit's code as a real browser's does after the first visit; or from the sidebar of an open
tab, "sidebar") and timed from
navigation to an idle page: its heading drawn, the script finished (the app root's `data-test-script-state`), no
element still waiting for its code (Streamlit's grey skeletons while a chart's or a table's JavaScript loads), no
spinner and no stale element, for half a second; the time is taken where the last of them was seen. Then `--tiles`
(default 12) real tiles of ../shared/data are dropped on the Classify page and timed from the drop until the
results are shown ("N of N file(s) classified" and every card of the first page drawn down to its map's
faithfulness line, which says "being checked" until the page's maps are scored) and until the page is idle: the
first classification after server start (model load and imports), and a later one, other tiles dropped on the
page in a new tab (a new session: nothing of the first is reused but what the server process keeps, the model and
the imports). `--no-classify` leaves them out.

Before 2026-12-07 (branch h-speed) the script took a page as busy only while Streamlit's status widget or a
spinner was shown; the app's minimal toolbar never shows the status widget, so the figures before that were
mostly the time to the heading (see RESULTS.md), and the later classification dropped its tiles beside the first
ones (24 files in the uploader).

Needs Playwright (a dependency) and Debian's chromium at /usr/bin/chromium (`apt-get install -y chromium`).
Figures depend on the machine and on its load: quote them with both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, streamlit_server  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
PAGES = [("Home", ""), ("Datasets", "Datasets"), ("Train", "Train"), ("Runs", "Runs"), ("Compare", "Compare")]
PAGES += [("Classify", "Classify"), ("Review", "Review"), ("Feature map", "Feature_map")]
QUIET_S = 0.5
CARDS_PER_PAGE = 12  # the Classify page's default "Tiles per page"


BUSY_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const state = app ? app.getAttribute('data-test-script-state') : null;
  const waiting = '[data-testid="stAppSkeleton"], [data-testid="stSkeleton"], [data-testid="stSpinner"], '
    + '[data-stale="true"]';
  return state !== 'notRunning' || document.querySelector('h1') === null || document.querySelector(waiting) !== null;
}"""


def time_to_idle(page, started: float, timeout_s: float = 120) -> float:
    """Seconds from `started` (time.monotonic) until the page is idle: heading drawn, script not running, no
    skeleton, spinner or stale element for QUIET_S; the time is where the page was last seen busy."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_s * 1000)
    last_busy = time.monotonic()
    deadline = last_busy + timeout_s
    while time.monotonic() < deadline:
        busy = page.evaluate(BUSY_JS)
        now = time.monotonic()
        if busy:
            last_busy = now
        elif now - last_busy >= QUIET_S:
            return last_busy - started
        time.sleep(0.03)
    raise RuntimeError("the page did not become idle in time")


def upload_sets(n: int) -> tuple[list[Path], list[Path]]:
    tiles = sorted((SHARED / "tiles" / "pathmnist-224").rglob("*.png"))
    if len(tiles) < 2 * n:
        raise SystemExit(f"{SHARED}/tiles/pathmnist-224 has {len(tiles)} tiles; {2 * n} are needed")
    return tiles[0 : 2 * n : 2], tiles[1 : 2 * n : 2]


CARDS_JS = """() => [...document.querySelectorAll('[data-testid="stCaptionContainer"], [data-testid="stAlert"]')]
  .filter(e => e.innerText.includes('Faithfulness:')).length"""


def drop_and_time(browser, url: str, files: list[Path], staged: Path) -> tuple[float, float]:
    """Open Classify in a new tab, wait for it, drop `files`; seconds until the results are shown (the count and
    every card of the first page down to its map's faithfulness line, scored or being checked) and until the
    page is idle."""
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(f"{url}/Classify", wait_until="commit")
    time_to_idle(page, time.monotonic())
    staged.mkdir()
    paths = [str(shutil.copy(f, staged / f"{i}-{f.name}")) for i, f in enumerate(files)]
    t0 = time.monotonic()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(paths)
    page.get_by_text(f"{len(paths)} of {len(paths)} file(s) classified").first.wait_for(timeout=180_000)
    while page.evaluate(CARDS_JS) < min(len(paths), CARDS_PER_PAGE):
        if time.monotonic() - t0 > 180:
            raise RuntimeError("the cards were not drawn in time")
        time.sleep(0.03)
    shown = time.monotonic() - t0
    idle = time_to_idle(page, t0)
    page.close()
    return shown, idle


VIEWPORT = {"width": 1280, "height": 900}
OPENINGS = {
    "cold": "a new tab of a browser that never opened the app (nothing cached: a first visit)",
    "warm": "a new tab of a browser that opened the app before (Streamlit's code cached, as on a second visit)",
    "sidebar": "a click on the page's entry in the sidebar of a tab showing Home (no new tab)",
}


def open_pages(browser, url: str, pages, opening: str) -> dict[str, float]:
    """Seconds to an idle page for each of `pages`, opened the `opening` way (OPENINGS)."""
    out: dict[str, float] = {}
    warm = browser.new_context(viewport=VIEWPORT)
    try:
        if opening == "warm":  # the browser has shown the app once: its tab closed, its cache kept
            first = warm.new_page()
            first.goto(f"{url}/Runs", wait_until="commit")
            time_to_idle(first, time.monotonic())
            first.close()
        for title, path in pages:
            context = warm if opening != "cold" else browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            if opening == "sidebar":  # from Home (to Home: from Runs)
                page.goto(url if path else f"{url}/Runs", wait_until="commit")
                time_to_idle(page, time.monotonic())
                link = page.locator(f'[data-testid="stSidebarNav"] a[href$="/{path}"]').first
                t0 = time.monotonic()
                link.click()
                page.wait_for_url(lambda u, p=path: urlsplit(u).path.strip("/") == p, wait_until="commit")
            else:
                t0 = time.monotonic()
                page.goto(f"{url}/{path}", wait_until="commit")
            out[title] = time_to_idle(page, t0)
            page.close()
            if context is not warm:
                context.close()
    finally:
        warm.close()
    return out


def one_server(
    settle_s: float,
    n_tiles: int,
    tmp: Path,
    launcher: str = "serve",
    pages=PAGES,
    classify: bool = True,
    openings: tuple[str, ...] = ("cold",),
) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    env = {"HISTO_DATA_DIR": str(tmp / "data"), "HISTO_RUNS_DIR": str(tmp / "data" / "runs"), "PYTHONPATH": str(ROOT)}
    out: dict[str, float] = {}
    first, second = upload_sets(n_tiles)
    with streamlit_server(env, tmp / "server.log", launcher=launcher) as url, sync_playwright() as p:
        time.sleep(settle_s)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for opening in openings:
                for title, seconds in open_pages(browser, url, pages, opening).items():
                    out[title if openings == ("cold",) else f"{title} ({opening})"] = seconds
            if classify:
                for label, files in (("first classification", first), ("later classification", second)):
                    shown, idle = drop_and_time(browser, url, files, tmp / label.replace(" ", "-"))
                    out[f"{label}: results shown"], out[label] = shown, idle
        finally:
            browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1, help="fresh servers to measure (median shown)")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds the server is up before the first page")
    ap.add_argument("--tiles", type=int, default=12, help="files per classification")
    ap.add_argument(
        "--launcher",
        choices=("serve", "streamlit"),
        default="serve",
        help="serve: python serve.py (warm-up at server start, the default); streamlit: streamlit run app.py",
    )
    ap.add_argument(
        "--pages", nargs="+", metavar="PAGE", help="only these pages (their titles: Home Datasets 'Feature map' ...)"
    )
    ap.add_argument("--no-classify", action="store_true", help="leave out the two classifications")
    ap.add_argument(
        "--open",
        nargs="+",
        choices=list(OPENINGS),
        default=["cold"],
        help="how each page is opened: " + "; ".join(f"{k}: {v}" for k, v in OPENINGS.items()),
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    titles = {t.lower(): (t, path) for t, path in PAGES}
    unknown = [t for t in args.pages or [] if t.lower() not in titles]
    if unknown:
        raise SystemExit(f"unknown page {unknown[0]!r}: one of {', '.join(t for t, _ in PAGES)}")
    pages = [titles[t.lower()] for t in args.pages] if args.pages else PAGES
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: the real sample tiles are needed")
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(
                one_server(
                    args.settle, args.tiles, Path(tmp), args.launcher, pages, not args.no_classify, tuple(args.open)
                )
            )
    table = {k: [r[k] for r in runs] for k in runs[0]}
    if args.json:
        print(json.dumps({"settle_s": args.settle, "tiles": args.tiles, "cpus": os.cpu_count(), "seconds": table}))
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{args.launcher} launcher, server up {args.settle:g} s before the first page; {os.cpu_count()} CPUs, "
        f"load average {load:.1f}" + (" (HISTO_NO_WARMUP=1)" if os.environ.get("HISTO_NO_WARMUP") == "1" else "")
    )
    print("| page | seconds to idle" + (f" (median of {args.repeat})" if args.repeat > 1 else "") + " |")
    print("|---|---|")
    for k, v in table.items():
        shown = f"{statistics.median(v):.2f}" + (f" ({min(v):.2f}-{max(v):.2f})" if len(v) > 1 else "")
        print(f"| {k}{f' ({args.tiles} tiles)' if 'classification' in k else ''} | {shown} |")


if __name__ == "__main__":
    main()
