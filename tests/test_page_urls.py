"""Every page that shows a run or a dataset keeps it in the URL (`?run=`, `?dataset=`; Compare: `?run=` repeated),
with one rule (pages/ui/common.py: url_selection, keep_in_url): a link selects its view, the user's choice goes
back into the URL, and the URL the page wrote on the previous run never undoes the user's next choice (issue 14:
in the browser that rerun still carries the old URL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.runfiles import write_run

PAGES = Path(__file__).resolve().parent.parent / "pages"


def param(at: AppTest, name: str) -> list[str]:
    value = at.query_params.get(name, [])
    return [value] if isinstance(value, str) else list(value)


def open_page(page: str, **params: str | list[str]) -> AppTest:
    at = AppTest.from_file(str(PAGES / page), default_timeout=60)
    for name, value in params.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception, at.exception
    return at


def shows(at: AppTest, key: str, run_id: str) -> bool:
    """The selectbox `key` holds `run_id` (Classify's holds the run's folder)."""
    value = str(at.selectbox(key=key).value)
    return value == run_id or Path(value).name == run_id


@pytest.mark.parametrize(
    "page, key",
    [
        ("3_Runs.py", "runs_select"),
        ("5_Classify.py", "classify_model"),
        ("6_Review.py", "review_run"),
        ("7_Feature_map.py", "fm_run"),
    ],
)
def test_a_run_page_follows_the_url_and_the_url_follows_the_user(page, key):
    a = write_run("completed", seed=1, run_id="run-a")
    b = write_run("completed", seed=2, run_id="run-b")
    at = open_page(page, run=b.id)
    assert shows(at, key, b.id) and param(at, "run") == [b.id]  # a shared link opens its run
    at.selectbox(key=key).set_value(value_of(key, a.id)).run()  # the user's first choice
    assert not at.exception, at.exception
    assert shows(at, key, a.id), "the URL of the previous run undid the user's choice"
    assert param(at, "run") == [a.id]  # a reload or a shared link shows the user's choice
    at.query_params["run"] = b.id  # a link followed while on the page
    at.run()
    assert shows(at, key, b.id)


def value_of(key: str, run_id: str) -> str:
    """What the selectbox `key` holds for `run_id` (Classify's holds the model's reference, not its name)."""
    if key != "classify_model":
        return run_id
    from histo_core.model_catalog import list_models

    return next(e.ref for e in list_models() if e.name == run_id)


def test_compare_keeps_its_runs_in_the_url():
    a, b, c = (write_run("completed", seed=i, run_id=f"run-{n}") for i, n in enumerate("abc"))
    at = open_page("4_Compare.py", run=[a.id, c.id])
    assert at.multiselect(key="compare_runs").value == [a.id, c.id]
    at.multiselect(key="compare_runs").set_value([b.id, c.id]).run()
    assert not at.exception, at.exception
    assert at.multiselect(key="compare_runs").value == [b.id, c.id]
    assert param(at, "run") == [b.id, c.id]
    at.multiselect(key="compare_runs").set_value([]).run()
    assert "run" not in at.query_params  # nothing picked: no stale runs in a shared link


def test_compare_without_a_link_shares_its_default_runs():
    a, b = write_run("completed", seed=1, run_id="run-a"), write_run("completed", seed=2, run_id="run-b")
    at = open_page("4_Compare.py")
    assert sorted(param(at, "run")) == sorted(at.multiselect(key="compare_runs").value) == sorted([a.id, b.id])


def test_train_keeps_its_dataset_in_the_url(pathmnist_mini):
    at = open_page("2_Train.py", dataset=str(pathmnist_mini))
    assert at.text_input(key="train_ds_path").value == str(pathmnist_mini)
    at.selectbox(key="train_ds_choice").set_value("synthetic").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="train_ds_choice").value == "synthetic" and param(at, "dataset") == ["synthetic"]


def test_feature_map_of_a_frozen_model_keeps_model_and_dataset_in_the_url(pathmnist_mini):
    from histo_core.datasets.catalog import add_local_dataset

    write_run("completed", seed=1, run_id="run-a")
    b = write_run("completed", seed=2, run_id="run-b")
    add_local_dataset(str(pathmnist_mini))
    at = open_page("7_Feature_map.py", model=b.id, dataset=str(pathmnist_mini))
    assert at.radio(key="fm_source").value.startswith("Any dataset")
    assert Path(str(at.selectbox(key="fm_model").value)).name == b.id
    assert at.selectbox(key="fm_dataset").value == str(pathmnist_mini.resolve())  # listed resolved
    at.selectbox(key="fm_dataset").set_value("synthetic").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="fm_dataset").value == "synthetic"
    assert param(at, "dataset") == ["synthetic"] and param(at, "model") == [b.id] and not param(at, "run")
    at.radio(key="fm_source").set_value("A run's dataset").run()  # the user's switch stands
    assert at.radio(key="fm_source").value == "A run's dataset"
    assert param(at, "run") and not param(at, "model") and not param(at, "dataset")


@pytest.mark.parametrize(
    "page,params",
    [
        ("3_Runs.py", {"run": "../.."}),
        ("6_Review.py", {"run": "/etc/passwd"}),
        ("5_Classify.py", {"model": "/etc/passwd"}),
        ("5_Classify.py", {"run": "no-such-run"}),
        ("4_Compare.py", {"run": ["run-a", "../x"]}),
        ("7_Feature_map.py", {"model": "/etc/passwd"}),
    ],
)
def test_a_link_naming_what_is_not_here_says_so_without_echoing_it(page, params):
    write_run("completed", seed=1, run_id="run-a")
    write_run("completed", seed=2, run_id="run-b")
    at = open_page(page, **params)
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert any("this link names is not available here" in w for w in warnings), warnings
    assert "passwd" not in " ".join(warnings) and "../" not in " ".join(warnings)
