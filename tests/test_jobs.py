"""Background jobs: real training processes (slow) and liveness / control logic with stand-in processes (fast)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from histo_core import evaluation, jobs, liveness, procs, summaries
from histo_core.config import TrainConfig
from histo_core.errors import HistoError
from histo_core.runs import RunDir
from histo_core.slots import device_slot
from tests.runfiles import write_run


def tiny_config(**changes) -> TrainConfig:
    """A synthetic run that trains in seconds on one CPU thread."""
    base = dict(
        dataset="synthetic",
        arch="simplecnn",
        epochs=2,
        batch_size=32,
        max_train_samples=128,
        device="cpu",
        threads=1,
        tta=False,
        schedule="none",
    )
    base.update(changes)
    return TrainConfig(**base)


def slow_config(**changes) -> TrainConfig:
    """A run with many small batches (about a second per epoch) so a test can act while it trains."""
    return tiny_config(**{"epochs": 40, "batch_size": 8, "max_train_samples": 1200, **changes})


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _stop(run: RunDir) -> None:
    """Test cleanup: never leave a training process behind."""
    pid = run.status().pid
    if pid and procs.pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- real processes ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_submit_trains_to_completion_in_its_own_process():
    run = jobs.submit(tiny_config(name="bg"))
    try:
        first = run.status()
        assert first.pid and first.pid != os.getpid() and first.state in ("queued", "running")
        status = liveness.wait(run, 90)
        assert status.state == "completed", (status.error, liveness.log_tail(run))
        rows = run.metrics()
        assert [r["epoch"] for r in rows] == [1, 2]
        results = run.results()
        assert results["epochs_run"] == 2 and 0.0 <= results["test"]["accuracy"] <= 1.0
        assert results["test"]["n"] == 300  # the synthetic test split
        assert run.best_ckpt.exists() and run.last_ckpt.exists() and run.predictions_path("test").exists()
        assert f"--run-dir {run.path}" in run.log_path.read_text()
        wait_for(lambda: not procs.pid_alive(first.pid), 10, "the process to exit")
        summary = summaries.run_summary(run)
        assert summary["state"] == "completed" and summary["epoch"] == 2 and summary["synthetic"]
        assert summary["test_accuracy"] == results["test"]["accuracy"] and summary["duration_s"] > 0
    finally:
        _stop(run)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_killed_process_shows_as_failed_with_the_reason():
    run = jobs.submit(slow_config())
    try:
        # the epoch's metrics row is written just before its last.pt: wait for both (a loaded machine can take
        # a while between the two, and a kill in between rightly reports "no checkpoint yet")
        wait_for(lambda: run.status().state == "running" and run.metrics() and run.last_ckpt.exists(), 60, "epoch 1")
        pid = run.status().pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not procs.pid_alive(pid), 10, "the process to die")
        status = liveness.refresh_status(run)
        assert status.state == "failed"
        assert f"training process {pid} ended unexpectedly (killed or crashed)" in status.error
        assert "last checkpoint: epoch" in status.error and "resume to continue" in status.error
        assert RunDir(run.path).status().state == "failed"  # written to disk, not only returned
    finally:
        _stop(run)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_cancel_saves_last_checkpoint_and_resume_finishes_the_planned_epochs():
    run = jobs.submit(slow_config(epochs=4))
    try:
        wait_for(lambda: len(run.metrics()) >= 1, 60, "the first epoch")
        jobs.cancel(run)
        status = liveness.wait(run, 30)
        assert status.state == "cancelled", (status.error, liveness.log_tail(run))
        assert run.last_ckpt.exists()
        done = len(run.metrics())
        assert 1 <= done < 4
        with pytest.raises(HistoError, match="only a queued or running run can be cancelled"):
            jobs.cancel(run)

        note = jobs.resume(run)
        assert f"from epoch {done}" in note
        assert not run.cancel_path.exists()
        status = liveness.wait(run, 90)
        assert status.state == "completed", (status.error, liveness.log_tail(run))
        assert [r["epoch"] for r in run.metrics()] == [1, 2, 3, 4]
        assert run.results()["epochs_run"] == 4
        with pytest.raises(HistoError, match="has completed"):
            jobs.resume(run)
    finally:
        _stop(run)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_run_submitted_while_the_slot_is_held_waits_queued_and_starts_when_it_frees(monkeypatch):
    monkeypatch.setenv("HISTO_MAX_RUNS_CPU", "1")
    run = None
    try:
        with device_slot("cpu"):  # the one CPU slot, held here as a running trainer would hold it
            run = jobs.submit(tiny_config(name="second"))
            # The trainer is up and polling for the slot: it wrote a heartbeat, then another one while waiting.
            first = wait_for(lambda: run.status().heartbeat, 60, "the trainer's first heartbeat")
            wait_for(lambda: (run.status().heartbeat or 0) > first, 30, "a heartbeat while it waits")
            assert liveness.refresh_status(run).state == "queued"
            assert not run.metrics() and run.status().started_at is None
            freed_at = time.time()
        status = liveness.wait(run, 90)
        assert status.state == "completed", (status.error, liveness.log_tail(run))
        assert status.started_at >= freed_at  # it trained only once the slot was free
    finally:
        if run is not None:
            _stop(run)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_two_runs_at_once_do_not_disturb_each_other(monkeypatch):
    monkeypatch.setenv("HISTO_MAX_RUNS_CPU", "2")
    a = jobs.submit(tiny_config(name="a", epochs=2, seed=1, lr=1e-3))
    b = jobs.submit(tiny_config(name="b", epochs=3, seed=2, lr=3e-3, arch="cnn3"))
    try:
        sa, sb = liveness.wait(a, 90), liveness.wait(b, 90)
        assert sa.state == sb.state == "completed", (sa.error, sb.error)
        assert sa.pid != sb.pid
        assert [r["epoch"] for r in a.metrics()] == [1, 2]
        assert [r["epoch"] for r in b.metrics()] == [1, 2, 3]
        assert {r["lr"] for r in a.metrics()} == {1e-3} and {r["lr"] for r in b.metrics()} == {3e-3}
        assert a.results()["epochs_run"] == 2 and b.results()["epochs_run"] == 3
        assert a.id not in b.log_path.read_text() and b.id not in a.log_path.read_text()
        # they overlapped in time: each started before the other finished
        assert sa.started_at < sb.finished_at and sb.started_at < sa.finished_at
    finally:
        _stop(a)
        _stop(b)


# -- stand-in processes (fast) -------------------------------------------------------------------------


def _sleeper(*marks: str) -> subprocess.Popen:
    """A process that sleeps; its command line carries `marks` (e.g. a run id) for the liveness check."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *marks])


@pytest.mark.slow
def test_pid_alive_sees_zombies_and_missing_processes():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: open(f"/proc/{proc.pid}/stat").read().split(")")[-1].split()[0] == "Z", 10, "a zombie")
    assert not procs.pid_alive(proc.pid)  # exited, not yet reaped
    proc.wait()
    assert not procs.pid_alive(proc.pid) and not procs.pid_alive(None) and not procs.pid_alive(0)
    assert procs.pid_alive(os.getpid())


@pytest.mark.slow
def test_live_process_keeps_its_run_running_and_blocks_delete():
    run = write_run("running")
    proc = _sleeper(run.id)
    try:
        run.update_status(pid=proc.pid)
        assert liveness.refresh_status(run).state == "running"
        with pytest.raises(HistoError, match="running; cancel it before deleting"):
            jobs.delete(run)
        with pytest.raises(HistoError, match="cancel it before resuming"):
            jobs.resume(run)
        assert run.path.exists()
        jobs.cancel(run)  # SIGTERM ends the sleeper (no handler); the cancel file tells a trainer to stop
        assert run.cancel_path.exists()
        assert proc.wait(timeout=10) == -signal.SIGTERM
        status = liveness.refresh_status(run)
        # it never wrote "cancelled" itself, but it was asked to stop and did: cancelled, with a note
        assert status.state == "cancelled" and "ended before it could save (last checkpoint: epoch 1)" in status.error
        jobs.delete(run)
        assert not run.path.exists()
    finally:
        proc.kill()


@pytest.mark.slow
def test_reused_pid_is_not_mistaken_for_the_trainer():
    run = write_run("running")
    proc = _sleeper("unrelated-program")  # alive, but its command line names neither the run nor histo_core
    try:
        run.update_status(pid=proc.pid)
        status = liveness.refresh_status(run)
        assert status.state == "failed" and f"training process {proc.pid} ended unexpectedly" in status.error
        assert proc.poll() is None  # and it was not killed
    finally:
        proc.kill()


def test_failure_message_names_checkpoint_and_log_line():
    run = write_run("running", epochs=5, epochs_done=2, pid=2**22 + 777)
    run.log_path.write_text("=== start\nepoch 2/5 ...\nMemoryError: cannot allocate 4 GiB\n")
    status = liveness.refresh_status(run)
    assert status.error.startswith(
        f"training process {2**22 + 777} ended unexpectedly (killed or crashed); "
        "last checkpoint: epoch 2 — resume to continue"
    )
    assert status.error.endswith("Log: MemoryError: cannot allocate 4 GiB")

    fresh = write_run("running", epochs_done=0, pid=2**22 + 778)
    fresh.last_ckpt.unlink(missing_ok=True)
    assert "no checkpoint yet — resume to start again from scratch" in liveness.refresh_status(fresh).error


@pytest.mark.slow
def test_queued_run_is_cancelled_at_once():
    run = write_run("queued", epochs_done=0)
    proc = _sleeper(run.id)
    try:
        run.update_status(pid=proc.pid)
        status = jobs.cancel(run)
        assert status.state == "cancelled" and run.status().state == "cancelled"
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        proc.kill()


def test_run_on_another_host_with_stale_heartbeat_shows_stale_without_rewriting():
    run = write_run("running", pid=1)
    run.update_status(host="other-" + socket.gethostname(), heartbeat=time.time() - 3600)
    assert liveness.refresh_status(run).state == liveness.STALE
    assert run.status().state == "running"
    with pytest.raises(HistoError, match="cancel it before deleting"):
        jobs.delete(run)
    run.update_status(heartbeat=time.time())
    assert liveness.refresh_status(run).state == "running"


def test_resume_without_checkpoint_restarts_from_scratch(monkeypatch):
    started = []
    monkeypatch.setattr(jobs, "_start_training_process", lambda run, resume: started.append(resume) or 1)
    run = write_run("failed", epochs_done=0, error="boom")
    run.last_ckpt.unlink(missing_ok=True)
    note = jobs.resume(run)
    assert "no checkpoint (last.pt): restarting it from scratch" in note and started == [False]
    assert run.status().state == "queued" and run.status().error is None

    with_ckpt = write_run("cancelled", epochs=5, epochs_done=2)
    with_ckpt.cancel_path.touch()
    assert "from epoch 2 of 5" in jobs.resume(with_ckpt) and started == [False, True]
    assert not with_ckpt.cancel_path.exists()


def test_run_summary_and_comparison_row():
    run = write_run("completed", name="baseline", epochs=3, lr=2e-3, noise=0.2)
    s = summaries.run_summary(run)
    assert s["name"] == "baseline" and s["arch"] == "simplecnn" and s["state"] == "completed"
    assert s["noise"] == 0.2 and s["noise_mode"] == "batch" and s["progress"] == 1.0
    assert s["monitor"] == "val_loss" and s["best_val"] == pytest.approx(1.6 / 3) and s["best_epoch"] == 3
    assert s["test_accuracy"] == run.results()["test"]["accuracy"]
    row = summaries.comparison_row(run)
    assert row["lr"] == 2e-3 and row["epochs"] == "3/3" and row["noise"] == "0.2 batch"
    assert row["augmentation"] == "flip+rot90" and row["test AUC"] == run.results()["test"]["auc"]
    # Compare omitted the train splits, seed and TTA from its table and CSV
    other = write_run("completed", seed=7)
    cfg = json.loads((other.path / "config.json").read_text())
    (other.path / "config.json").write_text(json.dumps({**cfg, "tta": True, "train_splits": "train+val"}))
    tuned = summaries.comparison_row(other)
    assert tuned["seed"] == 7 and tuned["TTA"] == "yes" and tuned["train splits"] == "train+val"


@pytest.mark.slow
def test_an_evaluation_runs_in_the_background_as_a_task():
    from histo_core.evaluation import list_evaluations
    from tests.runfiles import write_run

    run = write_run("completed", seed=2)
    name = evaluation.start_evaluation(run, "synthetic", "val", name="own val")
    assert name == "own-val"
    deadline = time.time() + 240
    while time.time() < deadline and evaluation.evaluation_jobs(run)[0]["state"] == "running":
        time.sleep(0.5)
    job = evaluation.evaluation_jobs(run)[0]
    assert job["state"] == "completed", job
    saved = list_evaluations(run)
    assert [e["name"] for e in saved] == ["own-val"] and saved[0]["n"] == 300  # listed once (not its job's output)
    bad = evaluation.start_evaluation(run, "synthetic", "val", class_map={"nope": "adipose"}, name="bad map")
    while time.time() < deadline and evaluation.evaluation_jobs(run)[0]["state"] == "running":
        time.sleep(0.5)
    failed = next(j for j in evaluation.evaluation_jobs(run) if j["name"] == bad)
    assert failed["state"] == "failed" and "'nope' is not a class of the dataset" in failed["error"]
    with pytest.raises(HistoError, match="no dataset given"):
        evaluation.start_evaluation(run, " ")


@pytest.mark.parametrize("starter", ["resume", "inspection task", "evaluation", "task restart"])
def test_two_starts_at_once_start_one_process(starter, monkeypatch, tmp_path):
    """A double click runs two starts side by side (Streamlit's fast reruns). Each start checks "already
    running?", launches a process (which takes a while) and then records it; without one lock around the three
    both checks passed and two processes were started: two trainers on one run folder, or the same task twice.
    Every kind starts through launch.start_process inside launch.queue_room, whose lock covers the check."""
    import threading

    from histo_core import launch
    from tests.taskfiles import make_task

    spawned: list[list[str]] = []

    def slow_spawn(cmd, *streams, **where):
        time.sleep(0.3)  # importing torch in the child: the other click arrives meanwhile
        spawned.append(cmd)
        return os.getpid()  # a live process, as the real child would be

    monkeypatch.setattr(launch, "spawn_detached", slow_spawn)
    run = write_run("cancelled", epochs=5, epochs_done=2)
    failed_task = make_task("estimate", {"config": {}}, state="failed")
    start, refusal = {
        "resume": (lambda: jobs.resume(run), "the run is queued; cancel it before resuming"),
        "inspection task": (
            lambda: launch.submit_task("embed", {"model": str(run.path)}),
            "this feature map is already queued",
        ),
        "evaluation": (lambda: evaluation.start_evaluation(run, "synthetic", "val"), "this evaluation is already"),
        "task restart": (lambda: launch.restart_task(failed_task), "the task is queued; cancel it before resuming"),
    }[starter]
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def click() -> None:
        barrier.wait()
        try:
            start()
            outcomes.append("started")
        except HistoError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=click) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(spawned) == 1, spawned
    assert outcomes.count("started") == 1 and refusal in next(o for o in outcomes if o != "started"), outcomes
