"""The Datasets page with AppTest: synthetic default, a real npz by path, bad paths, offline download, adding
a local dataset, the sample grid and the tile viewer."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import histo_core.datasets.medmnist_source as medmnist_source
from tests.conftest import ROOT
from tests.test_datasets_sources import make_class_folders, write_medmnist_npz

PAGE = str(ROOT / "pages" / "1_Datasets.py")
KEY = "datasets_page"


def open_page(dataset: str | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    if dataset is not None:
        at.query_params["dataset"] = dataset
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


TABS = ["Class distribution", "Sample tiles", "Pixel statistics", "Tile viewer", "Citation & licence"]


def open_tab(at: AppTest, label: str) -> AppTest:
    """Click a tab of the page (only the open one is built)."""
    at.session_state["datasets_tab"] = label
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def each_tab(at: AppTest) -> Iterator[AppTest]:
    """The page with each of its tabs open in turn (what a test of everything the page shows must look at)."""
    for label in TABS:
        yield open_tab(at, label)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def image_captions(at: AppTest) -> list[str]:
    return [img.caption for el in at.get("image") for img in el.proto.imgs]


def test_synthetic_is_the_default_and_labelled():
    at = open_page()
    assert any("SYNTHETIC" in w.value for w in at.warning)
    assert at.subheader[0].value.startswith("Synthetic H&E demo (SYNTHETIC")
    assert metrics(at) == {
        "train": "1,200",
        "val": "300",
        "test": "300",
        "classes": "6",
        "tile size": "28 px",
        "channels": "3",
    }
    assert not at.error


def test_pathmnist_mini_by_path_shows_splits_classes_samples_and_stats(pathmnist_mini):
    at = open_page(str(pathmnist_mini))
    m = metrics(at)
    assert (m["train"], m["val"], m["test"], m["classes"]) == ("160", "40", "40", "9")
    assert not any("SYNTHETIC" in w.value for w in at.warning)
    table = at.dataframe[0].value  # class counts per split
    assert list(table.columns) == ["train", "val", "test"] and table["train"].sum() == 160 and len(table) == 9
    stats = open_tab(at, "Pixel statistics").dataframe[0].value
    assert list(stats["channel"]) == ["red", "green", "blue"] and 0.5 < stats["mean (0-1)"].iloc[0] < 0.9
    captions = image_captions(open_tab(at, "Tile viewer"))
    assert any("nearest-neighbour" in c for c in captions)  # 28 px tile in the viewer, enlarged
    captions = image_captions(open_tab(at, "Sample tiles"))
    assert sum(c.startswith("#") for c in captions) >= 9  # at least one sample per class in the grid
    assert any("CC BY 4.0" in md.value for md in open_tab(at, "Citation & licence").markdown)
    assert at.query_params["dataset"] == [str(pathmnist_mini)] or at.query_params["dataset"] == str(pathmnist_mini)


def test_bad_path_shows_an_error_not_an_exception(tmp_path):
    at = open_page(str(tmp_path / "nowhere.npz"))
    assert any("nowhere.npz" in e.value and "no such file or folder" in e.value for e in at.error)
    np.savez(tmp_path / "wrong.npz", a=np.zeros(2))
    at = open_page(str(tmp_path / "wrong.npz"))
    assert any("not a MedMNIST-layout npz" in e.value for e in at.error)


def test_download_failure_offline_shows_a_message(monkeypatch):
    monkeypatch.setattr(
        medmnist_source, "download_source", lambda flag, size: ("http://127.0.0.1:9/pathmnist.npz", "x")
    )
    at = open_page("pathmnist")
    assert any("is not downloaded" in i.value for i in at.info)
    at.button(key=f"{KEY}_download_selected").click().run()
    assert not at.exception
    messages = [e.value for e in at.error]
    assert any("cannot reach" in m and "pathmnist.npz" in m and "put it at" in m for m in messages), messages


def test_downloaded_medmnist_is_the_default():
    import os

    write_medmnist_npz(os.path.join(os.environ["HISTO_DATA_DIR"], "pathmnist.npz"), sizes=(18, 9, 9))
    at = open_page()  # a real dataset is here, so it is the default rather than the synthetic demo
    assert metrics(at)["train"] == "18" and at.subheader[0].value == "PathMNIST (28 px)"
    assert not any("SYNTHETIC" in w.value for w in at.warning)


def test_add_local_folder_then_it_is_selected(tmp_path):
    make_class_folders(tmp_path / "mine", classes=("ADI", "TUM"), per_class=10)
    at = open_page()
    at.session_state[f"{KEY}_add_open"] = True  # the section is built while open
    at.run()
    at.text_input(key=f"{KEY}_add_path").input(str(tmp_path / "mine")).run()
    at.button(key=f"{KEY}_add").click().run()
    assert not at.exception and not at.error
    assert any("Added mine" in s.value for s in at.success)
    assert at.subheader[0].value == "mine (image folder, 40 px)"
    assert metrics(at)["classes"] == "2" and metrics(at)["train"] == "12"
    viewer = [c for c in image_captions(open_tab(at, "Tile viewer")) if c.startswith("train #0")]
    assert viewer and "nearest-neighbour" in viewer[0]
    assert any(" · file ADI" in md.value for md in at.markdown)  # the viewer names the file
    assert any(c.startswith("original file: 40×40 px") for c in image_captions(at))  # and shows it as stored


def test_skipped_files_are_listed_in_words_not_as_code(tmp_path):
    make_class_folders(tmp_path / "mine", classes=("ADI", "TUM"), per_class=10)
    (tmp_path / "mine" / "ADI" / "broken_tile.png").write_bytes(b"not an image")
    at = open_page(str(tmp_path / "mine"))
    assert not at.exception and not at.code, [c.value for c in at.code]
    listed = [md.value for md in at.markdown if "broken\\_tile.png" in md.value or "broken_tile.png" in md.value]
    assert listed and listed[0].startswith("- "), [md.value for md in at.markdown]


def test_add_invalid_path_shows_the_reason(tmp_path):
    make_class_folders(tmp_path / "one", classes=("TUM",), per_class=2)
    at = open_page()
    at.session_state[f"{KEY}_add_open"] = True
    at.run()
    at.text_input(key=f"{KEY}_add_path").input(str(tmp_path / "one")).run()
    at.button(key=f"{KEY}_add").click().run()
    assert not at.exception
    assert any("only one class folder (TUM)" in e.value for e in at.error)


def test_reshuffle_and_single_class_grid():
    at = open_tab(open_page(), "Sample tiles")
    before = [c for c in image_captions(at) if c.startswith("#")]
    at.button(key=f"{KEY}_reshuffle").click().run()
    after = [c for c in image_captions(at) if c.startswith("#")]
    assert len(before) == len(after) == 6 * 8 and before != after
    at.selectbox(key=f"{KEY}_grid_class").select("tumour").run()
    at.slider(key=f"{KEY}_grid_count").set_value(5).run()
    grid = [c for c in image_captions(at) if c.startswith("#")]
    assert len(grid) == 5
    assert any(md.value.startswith("**tumour**") for md in at.markdown)


def test_only_the_open_tab_is_built_and_closed_tabs_keep_their_settings():
    """The browser drew all five tabs on every load (issue 24: Datasets 1.8 s); only the open one is built now."""
    at = open_page()
    tabs = at.tabs
    assert [t.label for t in tabs] == TABS
    assert len(tabs[0].children) > 0 and all(len(t.children) == 0 for t in tabs[1:])
    assert len(at.dataframe) == 1 and not image_captions(at)  # the class table; no tile grid, viewer, histogram
    assert not at.get("plotly_chart")  # the class counts are bars in the table: no chart library to load
    open_tab(at, "Sample tiles")
    assert len(at.tabs[0].children) == 0 and len(at.tabs[1].children) > 0
    assert not at.get("plotly_chart") and sum(c.startswith("#") for c in image_captions(at)) == 6 * 8
    at.slider(key=f"{KEY}_grid_count").set_value(3).run()
    open_tab(at, "Pixel statistics")
    assert not any(c.startswith("#") for c in image_captions(at)) and len(at.get("plotly_chart")) == 1
    open_tab(at, "Sample tiles")  # the tile count chosen before is still set
    assert at.slider(key=f"{KEY}_grid_count").value == 3
    assert sum(c.startswith("#") for c in image_captions(at)) == 6 * 3


def test_a_link_opens_its_tab():
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["datasets_tab"] = "Tile viewer"
    at.run()
    assert not at.exception
    assert [c for c in image_captions(at) if c.startswith("train #0")] and not at.get("plotly_chart")


@pytest.mark.parametrize("spec", ["pcam"])
def test_missing_registered_pcam_explains_where_to_put_files(spec):
    at = open_page(spec)
    assert any("pcam is not present" in e.value for e in at.error)


def dataset_box(at: AppTest):
    return at.selectbox(key=f"{KEY}_choice")


def test_the_users_first_choice_is_not_undone_by_the_url_the_page_wrote():
    """Issue 14: the page writes ?dataset=synthetic on the first visit; the rerun the user's first choice starts
    still carries that URL, and re-applying it put the selection back to the synthetic demo."""
    at = open_page()
    assert at.query_params["dataset"] in ("synthetic", ["synthetic"])
    dataset_box(at).select("pathmnist").run()
    assert dataset_box(at).value == "pathmnist"
    assert any("is not downloaded" in i.value for i in at.info)
    assert at.query_params["dataset"] in ("pathmnist", ["pathmnist"])  # the URL follows the choice


def test_a_link_followed_while_on_the_page_selects_its_dataset(pathmnist_mini):
    at = open_page("pathmnist")
    assert dataset_box(at).value == "pathmnist"
    at.query_params["dataset"] = str(pathmnist_mini)  # a new ?dataset= (a link, the browser's back button)
    at.run()
    assert at.text_input(key=f"{KEY}_path").value == str(pathmnist_mini)
    assert metrics(at)["train"] == "160"
    dataset_box(at).select("synthetic").run()  # and the user's next choice stands
    assert dataset_box(at).value == "synthetic" and metrics(at)["train"] == "1,200"


def test_class_counts_are_bars_in_the_table_scaled_to_each_split():
    """The class distribution was a plotly chart beside the same counts in a table: loading plotly's code made the
    Datasets page take 3.2 s to answer (1.9 s without it, benchmarks/page_speed.py). The table draws each count as
    a bar, scaled to its split's largest class, with the whole count beside it and the split's total in the header."""
    from pages.ui.datasets import class_count_columns

    columns = class_count_columns({"train": [2, 3], "val": [0, 0]})
    assert [c["label"] for c in columns.values()] == ["train (5)", "val (0)"]
    train, val = (c["type_config"] for c in columns.values())
    assert (train["type"], train["format"], train["min_value"], train["max_value"]) == ("progress", "%d", 0, 3)
    assert val["max_value"] == 1  # an empty split: bars of zero, not a division by zero
    at = open_page()
    assert at.dataframe[0].value.index.name == "class" and list(at.dataframe[0].value.columns)[:1] == ["train"]


def test_the_closed_sections_draw_no_widgets_until_opened(tmp_path):
    """Issue 24: "Add your own dataset" and "Download a MedMNIST set" are built only while open (a new tab draws
    each widget after fetching its code); a path typed in a section stays there when it closes and reopens."""
    at = open_page()
    keys = {w.key for kind in ("selectbox", "text_input", "button") for w in at.get(kind)}
    assert not {f"{KEY}_add_path", f"{KEY}_add", f"{KEY}_dl_flag", f"{KEY}_dl_size"} & keys, keys
    at.session_state[f"{KEY}_dl_open"] = True
    at.session_state[f"{KEY}_add_open"] = True
    at.run()
    assert at.selectbox(key=f"{KEY}_dl_flag").value and at.text_input(key=f"{KEY}_add_path").value == ""
    at.text_input(key=f"{KEY}_add_path").input(str(tmp_path / "typed")).run()
    at.session_state[f"{KEY}_add_open"] = False
    at.run()
    assert f"{KEY}_add_path" not in {w.key for w in at.text_input}
    at.session_state[f"{KEY}_add_open"] = True
    at.run()
    assert at.text_input(key=f"{KEY}_add_path").value == str(tmp_path / "typed")
