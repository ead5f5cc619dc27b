"""User text is data: run names, class names, file names and dataset titles are shown as text on every page,
never rendered as Markdown (an image link in a run name would make every viewer's browser fetch its URL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from tests.runfiles import CLASSES, write_run
from tests.test_page_datasets import each_tab

PAYLOAD = "![x](http://tracker.invalid/t.png)"
FILE_PAYLOAD = "![x](t.png)"  # a file name cannot hold a slash
# Elements that show their text as it is: tables (Arrow), plain text, code, charts, and the options of pickers.
PLAIN = {
    "dataframe",
    "image",
    "arrow_data_frame",
    "text",
    "code",
    "plotly_chart",
    "json",
    "selectbox",
    "multiselect",
    "text_input",
}


def rendered_as_markdown(at: AppTest) -> list[str]:
    """Every element whose Markdown would carry a raw payload: (element type, its text)."""
    out, stack = [], [at._tree]
    while stack:
        node = stack.pop()
        stack.extend(getattr(node, "children", {}).values())
        proto = getattr(node, "proto", None)
        if proto is None:
            continue
        text = str(proto)
        kind = getattr(node, "type", type(node).__name__)
        if ("![x](" in text) and kind not in PLAIN:
            lines = [line for line in text.splitlines() if "![x](" in line]
            out.append(f"{kind}: {lines[:3]}")
    return out


def hostile_runs() -> None:
    classes = list(CLASSES[:-1]) + [PAYLOAD]
    write_run("completed", name=PAYLOAD, seed=1, run_id="run-a", classes=classes)
    write_run("completed", name=PAYLOAD, seed=2, run_id="run-b", classes=classes)
    write_run("failed", name=PAYLOAD, seed=3, run_id="run-c", classes=classes, error=PAYLOAD)


def open_page(page: str, **params) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize(
    "page,params",
    [
        ("0_Home.py", {}),
        ("3_Runs.py", {"run": "run-a"}),
        ("3_Runs.py", {"run": "run-c"}),
        ("4_Compare.py", {"run": ["run-a", "run-b"]}),
        ("5_Classify.py", {"run": "run-a"}),
        ("6_Review.py", {"run": "run-a"}),
        ("7_Feature_map.py", {"run": "run-a"}),
    ],
)
def test_run_names_and_class_names_are_never_markdown(page, params):
    hostile_runs()
    at = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert rendered_as_markdown(at) == []


def hostile_csv(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rows = ["path,label"]
    for i in range(12):
        name = f"{FILE_PAYLOAD}{i}.png"
        Image.new("RGB", (20, 20), (200, 30 * (i % 2), 90)).save(folder / name)
        rows.append(f"{name},{PAYLOAD if i % 2 else 'TUM'}")
    (folder / "README.md").write_text(PAYLOAD)
    csv = folder / "manifest.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


@pytest.mark.parametrize("page", ["1_Datasets.py", "2_Train.py"])
def test_dataset_class_and_file_names_are_never_markdown(page, tmp_path):
    csv = hostile_csv(tmp_path / "ds")
    at = open_page(page, dataset=str(csv))
    assert not at.error, [e.value for e in at.error]
    assert rendered_as_markdown(at) == []
    if page == "1_Datasets.py":  # every tab (only the open one is built)
        assert all(rendered_as_markdown(tab) == [] and not tab.error for tab in each_tab(at))


def test_a_class_folder_named_as_markdown_is_shown_as_text(tmp_path):
    root = tmp_path / "folder"
    for c in (FILE_PAYLOAD, "TUM"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (20, 20), (200, 40 * i, 90)).save(root / c / f"{c}{i}.png")
    at = open_page("1_Datasets.py", dataset=str(root))
    assert all(rendered_as_markdown(tab) == [] for tab in each_tab(at))
