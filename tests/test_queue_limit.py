"""HISTO_MAX_QUEUED counts every background process of every kind (training runs, evaluations, feature maps,
page tasks), and the count and the start happen under one lock: simultaneous starts never pass the limit."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from histo_core import evaluation, jobs, launch, procs
from histo_core.errors import HistoError
from histo_core.runs import list_runs
from tests.runfiles import write_run


def test_six_simultaneous_submits_with_a_limit_of_two_start_two(monkeypatch):
    import histo_core.training as training
    from histo_core.training import default_config

    monkeypatch.setenv("HISTO_MAX_QUEUED", "2")
    monkeypatch.setattr(jobs, "_start_training_process", lambda run, resume: 1)
    real_prepare = training.prepare_run

    def slow_prepare(*args, **kwargs):  # creating a run takes a moment: every check would pass before it
        time.sleep(0.3)
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(training, "prepare_run", slow_prepare)
    barrier, refused = threading.Barrier(6), []

    def submit() -> None:
        barrier.wait()
        try:
            jobs.submit(default_config("synthetic", device="cpu"))
        except HistoError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(list_runs()) == 2 and len(refused) == 4
    assert all("HISTO_MAX_QUEUED=2" in r for r in refused)


@pytest.fixture
def sleeping_commands(monkeypatch):
    """Background commands replaced by `sleep`: real detached processes that the limit must count."""
    monkeypatch.setattr(launch, "histo_command", lambda *args: ["sh", "-c", "sleep 60", "sh"])  # extra args ignored
    started: list[int] = []
    real_spawn = procs.spawn_detached

    def spawn(*args, **kwargs):
        pid = real_spawn(*args, **kwargs)
        started.append(pid)
        return pid

    monkeypatch.setattr(launch, "spawn_detached", spawn)
    yield started
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_evaluations_and_inspection_tasks_count_against_the_limit(sleeping_commands, monkeypatch):
    from histo_core.training import default_config

    monkeypatch.setenv("HISTO_MAX_QUEUED", "3")
    run = write_run("completed")
    evaluation.start_evaluation(run, "synthetic", name="one")
    evaluation.start_evaluation(run, "synthetic", name="two")
    launch.submit_task("embed", {"model": str(run.path)})
    assert launch.active_processes() == 3
    with pytest.raises(HistoError, match=r"3 background processes .*HISTO_MAX_QUEUED=3"):
        evaluation.start_evaluation(run, "synthetic", name="three")
    monkeypatch.setattr(jobs, "_start_training_process", lambda run, resume: 1)
    with pytest.raises(HistoError, match="HISTO_MAX_QUEUED=3"):
        jobs.submit(default_config("synthetic", device="cpu"))
    os.kill(sleeping_commands[0], signal.SIGKILL)  # one ends: its place is free again
    deadline = time.monotonic() + 30
    while procs.pid_alive(sleeping_commands[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert launch.active_processes() == 2
    evaluation.start_evaluation(run, "synthetic", name="four")
