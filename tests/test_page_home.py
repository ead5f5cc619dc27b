"""The app shell (app.py: one page list, "Home" first) and the home page (datasets here, latest runs)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

from histo_core.config import TrainConfig
from histo_core.fsutil import write_json_atomic
from histo_core.runs import RunStatus, create_run_dir

ROOT = Path(__file__).resolve().parent.parent


def test_navigation_lists_every_page_file_once_home_first(monkeypatch):
    registered: list = []
    real_navigation = st.navigation

    def spy(pages, **kwargs):
        registered.extend(pages)
        return real_navigation(pages, **kwargs)

    monkeypatch.setattr(st, "navigation", spy)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception

    files = [Path(page._page).name for page in registered]  # the file each st.Page runs
    assert sorted(files) == sorted(p.name for p in (ROOT / "pages").glob("*.py"))  # every page file, once
    home = registered[0]
    assert (home.title, home.url_path, files[0]) == ("Home", "", "0_Home.py")  # "Home" in the sidebar, at /
    titles = {name: page.title for name, page in zip(files, registered)}
    assert titles["3_Runs.py"] == "Runs" and titles["7_Feature_map.py"] == "Feature map"
    # The URLs the app has always had (/Runs?run=..., /Feature_map): links and bookmarks keep working.
    assert [page.url_path for page in registered[1:]] == [
        "Datasets",
        "Train",
        "Runs",
        "Compare",
        "Classify",
        "Review",
        "Feature_map",
        "Slides",
        "Studies",
        "Curation",
    ]
    assert all(page.icon for page in registered)

    # The home page is what the root shows; every other page opens from the same navigation.
    assert at.title[0].value == "Histo Explorer"
    assert len(at.get("page_link")) == len(registered) - 1  # the home page links every other page
    at.switch_page("pages/4_Compare.py").run()
    assert not at.exception and at.title[0].value == "Compare runs"


def test_home_lists_synthetic_and_latest_runs():
    run = create_run_dir(run_id="20260101-000000-demo")
    write_json_atomic(run.config_path, TrainConfig(dataset="synthetic", arch="cnn3", name="demo run").to_dict())
    write_json_atomic(run.dataset_path, {"title": "Synthetic H&E demo (SYNTHETIC, 28 px)"})
    run.write_status(RunStatus(state="completed", epoch=2, epochs=2))
    write_json_atomic(run.results_path, {"test": {"accuracy": 0.875}})

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    (runs_table,) = at.dataframe  # the datasets are a list (a new tab draws it without a table's code)
    runs = runs_table.value
    assert any(md.value.startswith("- **Synthetic H&E demo") and "synthetic" in md.value for md in at.markdown)
    row = runs.iloc[0]
    assert row["run"] == "demo run" and row["run id"] == run.id  # the name a user gave, the id beside it
    assert row["state"] == "completed" and row["architecture"] == "cnn3"
    assert row["test acc"] == 0.875 and row["test AUC"] is None  # shown as a percentage; an empty AUC cell
    assert row["dataset"] == "Synthetic H&E demo (SYNTHETIC, 28 px)"


def test_home_without_runs_says_how_to_start():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert any("No runs yet" in i.value for i in at.info)
