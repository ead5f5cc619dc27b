"""The home page: datasets available here, latest runs, links to every page."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from histo_core.config import TrainConfig
from histo_core.fsutil import write_json_atomic
from histo_core.runs import RunStatus, create_run_dir

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["1_Datasets.py", "2_Train.py", "3_Runs.py", "4_Compare.py", "5_Classify.py", "6_Review.py", "7_Feature_map.py"]


def test_every_page_exists_and_is_linked():
    for name in PAGES:
        assert (ROOT / "pages" / name).is_file(), name
    source = (ROOT / "app.py").read_text()
    for name in PAGES:
        assert f"pages/{name}" in source


def test_home_lists_synthetic_and_latest_runs():
    run = create_run_dir(run_id="20260101-000000-demo")
    write_json_atomic(run.config_path, TrainConfig(dataset="synthetic", arch="cnn3", name="demo run").to_dict())
    write_json_atomic(run.dataset_path, {"title": "Synthetic H&E demo (SYNTHETIC, 28 px)"})
    run.write_status(RunStatus(state="completed", epoch=2, epochs=2))
    write_json_atomic(run.results_path, {"test": {"accuracy": 0.875}})

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    runs, datasets = at.dataframe[0].value, at.dataframe[1].value
    assert "synthetic" in set(datasets["spec"])
    row = runs.iloc[0]
    assert row["run"] == "demo run" and row["run id"] == run.id  # the name a user gave, the id beside it
    assert row["state"] == "completed" and row["architecture"] == "cnn3"
    assert row["test accuracy"] == "87.5%" and row["test AUC"] == "-"  # a percentage; no "None" cell


def test_home_without_runs_says_how_to_start():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert any("No runs yet" in i.value for i in at.info)
