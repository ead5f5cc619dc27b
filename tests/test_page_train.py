"""Train page (AppTest): defaults per dataset/device, every option present, inline validation that starts
nothing, launching, the LR finder and the time estimate."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from histo_core import jobs, paths, task_folders
from histo_core.runs import list_runs
from histo_core.training import default_config
from pages.ui.train_form import FORM_FIELDS, OUTSIDE_FORM, all_config_fields, form_message
from tests.train_page import train_page


@pytest.fixture
def started(monkeypatch):
    """Replace the process start by a recorder: the real process is tested in test_jobs.py."""
    calls = []

    def fake_start(run, resume):
        calls.append((run, resume))
        run.update_status(pid=None)
        return 0

    monkeypatch.setattr(jobs, "_start_training_process", fake_start)
    return calls


def _app() -> AppTest:
    return train_page().run()


def _w(at: AppTest, field: str):
    """The widget of a TrainConfig field."""
    for getter in (at.selectbox, at.number_input, at.checkbox, at.text_input):
        try:
            return getter(key=f"train.{field}")
        except KeyError:
            continue
    raise KeyError(field)


def test_every_config_field_has_a_widget():
    """Every option of the one table (histo_core.train_options) is drawn with its label and help, and disabled
    exactly where the table says it does not apply."""
    from histo_core.train_options import OPTIONS

    assert set(FORM_FIELDS) | set(OUTSIDE_FORM) == all_config_fields()
    at = _app()
    assert not at.exception, at.exception
    values = {field: _w(at, field).value for field in FORM_FIELDS}  # raises KeyError when a widget is missing
    for field in FORM_FIELDS:
        opt, widget = OPTIONS[field], _w(at, field)
        assert widget.label == opt.label, field
        assert widget.help.startswith(form_message(opt.help_text())), field  # its --flags named as widgets
        assert widget.disabled == (not opt.is_active(values.get)), field


def test_defaults_come_from_default_config_and_follow_the_dataset(pathmnist_mini):
    at = _app()
    expected = default_config("synthetic", "auto")
    assert at.selectbox(key="train_ds_choice").value == "synthetic"
    for field in (
        "arch",
        "epochs",
        "batch_size",
        "optimizer",
        "lr",
        "schedule",
        "weight_decay",
        "tta",
        "augment.flip",
        "augment.brightness",
    ):
        value = expected
        for part in field.split("."):
            value = getattr(value, part)
        assert _w(at, field).value == value, field
    assert any("SYNTHETIC" in w.value for w in at.warning)
    assert any("train 1,200" in c.value for c in at.caption)  # split sizes shown

    # the user's edits stay while the dataset is unchanged ...
    _w(at, "epochs").set_value(3).run()
    assert _w(at, "epochs").value == 3
    # ... and a new dataset brings its own defaults and description
    at.selectbox(key="train_ds_choice").set_value("__path__").run()
    at.text_input(key="train_ds_path").set_value(str(pathmnist_mini)).run()
    assert not at.exception, at.exception
    assert _w(at, "epochs").value == default_config(str(pathmnist_mini)).epochs
    assert any("9 classes" in c.value and "train 160" in c.value for c in at.caption)


def test_invalid_value_shows_inline_error_and_starts_nothing(started):
    at = _app()
    _w(at, "lr").set_value(0.0).run()
    assert not at.exception
    assert any("'Learning rate' must be a positive finite number, got 0.0" in e.value for e in at.error), [
        e.value for e in at.error
    ]
    assert at.button[[b.label for b in at.button].index("Start training")].disabled
    _w(at, "lr").set_value(1e-3).run()
    _w(at, "noise").set_value(0.95).run()
    assert any("'Label-noise rate' must be between 0 and 0.9" in e.value for e in at.error)
    assert not any("--" in e.value for e in at.error)  # no CLI flags in the page
    assert list_runs() == [] and started == []


def test_bad_dataset_path_shows_error_without_creating_a_run(started, tmp_path):
    at = _app()
    at.selectbox(key="train_ds_choice").set_value("__path__").run()
    at.text_input(key="train_ds_path").set_value(str(tmp_path / "missing.npz")).run()
    assert not at.exception, at.exception
    assert any("missing.npz: not a registered dataset and no such file" in e.value for e in at.error)
    assert at.button[[b.label for b in at.button].index("Start training")].disabled
    assert list_runs() == [] and started == []


def test_start_training_creates_a_run_and_links_to_it(started):
    at = _app()
    _w(at, "name").set_value("page launch").run()
    _w(at, "arch").set_value("simplecnn").run()
    _w(at, "epochs").set_value(2).run()
    _w(at, "noise").set_value(0.2).run()
    _w(at, "noise_mode").set_value("fixed").run()
    _w(at, "augment.rotate").set_value(15.0).run()
    at.button[[b.label for b in at.button].index("Start training")].click().run()
    assert not at.exception, at.exception
    runs = list_runs()
    assert len(runs) == 1 and len(started) == 1 and started[0][1] is False
    cfg = runs[0].config()
    assert cfg["name"] == "page launch" and cfg["arch"] == "simplecnn" and cfg["epochs"] == 2
    assert cfg["noise"] == 0.2 and cfg["noise_mode"] == "fixed" and cfg["augment"]["rotate"] == 15.0
    assert runs[0].status().state == "queued" and runs[0].path.parent == paths.runs_dir()
    assert any(runs[0].id in s.value for s in at.success)


def test_estimate_and_lr_finder(monkeypatch):
    """Both run as background tasks (histo_core.tasks); here a task that completes at once stands in for the
    process (tests/test_tasks.py runs real ones)."""
    from tests.taskfiles import instant_submit

    est = {
        "total_s": 75.0,
        "epochs": 5,
        "per_epoch_s": 12.0,
        "train_tiles": 600,
        "train_images_per_s": 600.0,
        "warmup_batches": 3,
        "val_tiles": 90,
        "fixed_s": 15.0,
    }
    lrf = {"lrs": [1e-6, 1e-4, 1e-2, 1.0], "losses": [2.0, 1.5, 0.9, 5.0], "suggested_lr": 0.004}
    seen = instant_submit(monkeypatch, {"estimate": est, "lr-find": lrf})
    at = _app()
    _w(at, "max_train_samples").set_value(600).run()
    at.button[[b.label for b in at.button].index("Estimate the training time")].click().run()
    assert seen[0][1]["config"]["max_train_samples"] == 600
    assert any(
        "About 1 min 15 s for 5 epochs: 12 s per epoch of 600 tiles" in i.value and "15 s once" in i.value
        for i in at.info
    ), [i.value for i in at.info]

    at.button[[b.label for b in at.button].index("Run the LR finder")].click().run()
    assert not at.exception, at.exception
    fig = [c for c in at.get("plotly_chart")][0]
    assert '"type":"log"' in fig.proto.spec.replace(" ", "")
    use = [b for b in at.button if b.label.startswith("Use the suggested rate")][0]
    use.click().run()
    assert len(task_folders.list_tasks()) == 2
    assert _w(at, "lr").value == pytest.approx(0.004)


def test_start_clicked_twice_starts_one_run(started):
    """Bug: two quick clicks on Start training created two identical runs (the message named only one)."""
    at = _app()
    _w(at, "arch").set_value("simplecnn").run()

    def start():
        return at.button[[b.label for b in at.button].index("Start training")].click().run()

    start()
    start()
    assert not at.exception, at.exception
    runs = list_runs()
    assert len(runs) == 1 and len(started) == 1
    assert any(runs[0].id in i.value and "already started" in i.value for i in at.info)
    # other settings: a new run
    _w(at, "seed").set_value(7).run()
    start()
    assert len(list_runs()) == 2


def test_the_two_clicks_of_a_double_click_racing_start_one_thing():
    """Bug (seen in the browser walk): with Streamlit's fast reruns the second click runs the page again while the
    first click's run is still launching the process, so both runs saw nothing started and two runs were made.
    launch.start_once holds one OS file lock from the check to the start: two racing callers start once and agree on what."""
    import threading
    import time

    from histo_core.launch import start_once

    started: list[int] = []
    results: list[tuple[int, bool]] = []
    barrier = threading.Barrier(2)

    def start() -> int:
        time.sleep(0.3)  # launching a process takes a while; the other click arrives meanwhile
        started.append(len(started) + 1)
        return started[-1]

    def click() -> None:
        barrier.wait()
        results.append(start_once(lambda: started[-1] if started else None, start))

    threads = [threading.Thread(target=click) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert started == [1]
    assert sorted(results, key=lambda r: r[1]) == [(1, False), (1, True)]


def test_monitor_is_not_offered_without_a_validation_split():
    """Bug: "Monitor val_loss" was offered when the run trains on train+val (no validation split)."""
    at = _app()
    _w(at, "train_splits").set_value("train").run()
    assert not _w(at, "monitor").disabled
    _w(at, "train_splits").set_value("train+val").run()
    assert not at.exception and _w(at, "monitor").disabled


def test_closed_sections_draw_no_widgets_and_keep_their_values(started):
    """Issue 24: a new tab draws each widget after fetching its code, so the closed sections' 50-odd widgets cost
    the page's first view; they are built only while open, and what was set in a section stays set when it
    closes (and reaches the run)."""
    from pages.ui.train_form import SECTIONS, section_key

    at = train_page(sections=False).run()
    assert not at.exception, at.exception
    drawn = {w.key for kind in ("selectbox", "number_input", "checkbox", "text_input") for w in at.get(kind)}
    assert {"train.name", "train.arch", "train.epochs", "train.noise"} <= drawn
    assert "train.lr" not in drawn and "train.augment.rotate" not in drawn and "train.loss" not in drawn
    assert not [b for b in at.button if b.label == "Run the LR finder"] and not at.multiselect
    assert len(drawn) <= 8, drawn
    assert len(at.expander) == len(SECTIONS)

    at.session_state[section_key("Optimiser and schedule")] = True
    at.run()
    _w(at, "lr").set_value(0.0025).run()
    at.session_state[section_key("Optimiser and schedule")] = False
    at.run()
    with pytest.raises(KeyError):
        _w(at, "lr")  # closed again: not drawn
    _w(at, "epochs").set_value(2).run()  # another widget's rerun does not lose it either
    at.button[[b.label for b in at.button].index("Start training")].click().run()
    assert not at.exception, at.exception
    (run,) = list_runs()
    assert run.config()["lr"] == pytest.approx(0.0025) and run.config()["epochs"] == 2
    at.session_state[section_key("Optimiser and schedule")] = True
    at.run()
    assert _w(at, "lr").value == pytest.approx(0.0025)  # reopened: the value set before
