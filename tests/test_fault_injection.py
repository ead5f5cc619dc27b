"""One bad file never takes a page or a command down: a runs folder holding one good run and one run per broken
file. Every page opens, `runs list/show/resume/cancel` answer in one line, the broken runs are listed as
unreadable (file and reason), never resumed with invented settings, never counted against the queue limit, and
the good run stays fully usable."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from histo_core import launch
from histo_core.cli import main
from histo_core.runs import UNREADABLE, RunDir
from tests.conftest import ROOT
from tests.runfiles import write_run
from tests.test_security import as_shown

PAGES = ["0_Home.py", "3_Runs.py", "4_Compare.py", "5_Classify.py", "6_Review.py", "7_Feature_map.py"]

# run id -> (file, content written over it, what `runs list` must say of it)
BROKEN = {
    "b-status-shape": ("status.json", '["running", 5]', "status.json: holds a JSON list, not an object"),
    "b-status-json": ("status.json", "{not json", "status.json: not valid JSON"),
    "b-status-types": ("status.json", '{"state": "running", "pid": "abc"}', "status.json: pid is str, not an integer"),
    "b-status-state": ("status.json", '{"state": "exploded"}', "status.json: state 'exploded' is not one of"),
    "b-results-acc": (
        "results.json",
        json.dumps({"test": {"accuracy": "high", "n": 3}}),
        "results.json: test accuracy is str, not a number",
    ),
    "b-results-list": ("results.json", "[1, 2]", "results.json: holds a JSON list, not an object"),
    "b-config-empty": ("config.json", "", "config.json: empty"),
    "b-config-noarch": ("config.json", '{"dataset": "synthetic"}', "config.json: no arch"),
    "b-dataset": ("dataset.json", '"a string"', "dataset.json: holds a JSON str, not an object"),
}


@pytest.fixture
def faulty_runs() -> dict[str, RunDir]:
    runs = {"good": write_run("completed", seed=0, run_id="good")}
    for i, (run_id, (name, content, _)) in enumerate(BROKEN.items()):
        run = write_run("completed", seed=i + 1, run_id=run_id)
        (run.path / name).write_text(content)
        runs[run_id] = run
    truncated = write_run("completed", seed=99, run_id="t-predictions")
    data = truncated.predictions_path("test").read_bytes()
    truncated.predictions_path("test").write_bytes(data[: len(data) // 2])
    runs["t-predictions"] = truncated
    garbage = write_run("completed", seed=98, run_id="t-metrics")
    with open(garbage.metrics_path, "a") as fh:
        fh.write('[1, 2]\n"text"\n{"epoch": \n')
    runs["t-metrics"] = garbage
    return runs


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_runs_list_names_each_unreadable_file_and_the_reason(faulty_runs, capsys):
    code, out, err = cli(capsys, "runs", "list")
    assert code == 0, err
    lines = {ln.split()[0]: ln for ln in out.strip().splitlines()}
    assert set(lines) == set(faulty_runs)
    for run_id, (_, _, reason) in BROKEN.items():
        assert f"{run_id}  {UNREADABLE}" in lines[run_id] and reason in lines[run_id], lines[run_id]
    assert "completed" in lines["good"] and "test acc 0." in lines["good"]
    code, out, _ = cli(capsys, "runs", "list", "--json")
    rows = {r["id"]: r for r in json.loads(out)}
    assert rows["good"]["state"] == "completed" and isinstance(rows["good"]["test_accuracy"], float)
    assert all(rows[r]["state"] == UNREADABLE and BROKEN[r][2] in rows[r]["error"] for r in BROKEN)


@pytest.mark.parametrize("run_id", list(BROKEN) + ["t-predictions", "t-metrics", "good"])
def test_runs_show_resume_cancel_answer_in_one_line(faulty_runs, capsys, run_id):
    code, out, err = cli(capsys, "runs", "show", run_id)
    assert code == 0 and "Traceback" not in out + err
    code, out, err = cli(capsys, "runs", "show", run_id, "--json")
    assert code == 0 and json.loads(out)["summary"]["id"] == run_id
    for verb in ("resume", "cancel"):  # the Popen guard of conftest fails the test if a process is started
        code, out, err = cli(capsys, "runs", verb, run_id)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        if run_id in BROKEN:
            assert "unreadable" in err and BROKEN[run_id][0] in err and "runs delete" in err
    if run_id in BROKEN:
        name, content, _ = BROKEN[run_id]
        assert (faulty_runs[run_id].path / name).read_text() == content  # nothing rewritten
        code, _, err = cli(capsys, "runs", "delete", run_id, "--yes")
        assert code == 0 and not faulty_runs[run_id].path.exists()


def test_unreadable_runs_never_count_against_the_queue_limit(faulty_runs, monkeypatch):
    monkeypatch.setenv("HISTO_MAX_QUEUED", "1")
    assert launch.active_processes() == 0
    with launch.queue_room():
        pass  # one slot is free: nothing broken counts


@pytest.mark.parametrize("page", PAGES)
def test_every_page_opens_with_broken_runs_beside_a_good_one(faulty_runs, page):
    at = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]


@pytest.mark.parametrize("run_id", list(BROKEN) + ["t-predictions", "t-metrics"])
@pytest.mark.parametrize("page", ["3_Runs.py", "6_Review.py", "5_Classify.py", "4_Compare.py"])
def test_a_link_to_a_broken_run_opens_without_a_traceback(faulty_runs, page, run_id):
    at = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=120)
    at.query_params["run"] = [run_id, "good"] if page == "4_Compare.py" else run_id
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def test_the_runs_page_shows_an_unreadable_run_with_its_reason_and_offers_delete(faulty_runs):
    at = AppTest.from_file(str(ROOT / "pages" / "3_Runs.py"), default_timeout=120)
    at.query_params["run"] = "b-status-json"
    at.run()
    assert not at.exception
    assert any("status.json: not valid JSON" in as_shown(e.value) for e in at.error), [e.value for e in at.error]
    assert any(b.label.startswith("Delete run") for b in at.button)
    assert not any(b.label == "Resume" for b in at.button)


def test_the_good_run_stays_fully_usable(faulty_runs):
    at = AppTest.from_file(str(ROOT / "pages" / "6_Review.py"), default_timeout=120)
    at.query_params["run"] = "good"
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at = AppTest.from_file(str(ROOT / "pages" / "6_Review.py"), default_timeout=120)
    at.query_params["run"] = "t-predictions"
    at.run()
    assert not at.exception
    assert any("predictions_test.npz: unreadable predictions file" in as_shown(e.value) for e in at.error)
