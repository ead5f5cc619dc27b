"""Background training jobs: one detached OS process per run, controlled through its run directory.

    run = submit(config)          # prepare the run dir, start `python -m histo_core train --run-dir DIR`
    refresh_status(run)           # notices a process that died without saying so (killed, OOM, crash)
    cancel(run); resume(run); delete(run)

The process is started in its own session, so it outlives the Streamlit server, a browser refresh or an
app restart; nothing here keeps state in memory. The concurrency limit per device is the trainer's own
slot lock (histo_core/slots.py): every submitted process starts at once and stays "queued" until a slot
frees.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from histo_core import paths, runtime
from histo_core.errors import HistoError
from histo_core.runs import FINAL_STATES, HEARTBEAT_STALE_S, RunDir, RunStatus, list_runs, resolve_run

ACTIVE_STATES = ("queued", "running")
STALE = "stale"  # shown for a run on another host whose heartbeat stopped; never written to disk


# -- starting processes ------------------------------------------------------------------------------


def submit(config, runs_root: str | os.PathLike | None = None, started_by: str | None = None) -> RunDir:
    """Validate `config`, create its run directory and start training it in a background process.
    `started_by`: the signed-in user, recorded in config.json."""
    from histo_core.training import prepare_run

    check_queue_room(runs_root)
    if started_by:
        config.started_by = str(started_by)
    run = prepare_run(config, runs_root=runs_root)
    _start_training_process(run, resume=False)
    return run


def active_runs(runs_root: str | os.PathLike | None = None) -> list[RunDir]:
    """Runs under the runs root whose process is queued or running (liveness refreshed)."""
    return [r for r in list_runs(runs_root) if refresh_status(r).state in ACTIVE_STATES]


def check_queue_room(runs_root: str | os.PathLike | None = None) -> None:
    """Refuse a new background process when HISTO_MAX_QUEUED (default 8) are already queued or running in
    this runs directory: each waiting process holds its memory (about 900 MB for a trainer)."""
    from histo_core.limits import max_queued
    from histo_core.slots import max_concurrent

    for name in sorted(k for k in os.environ if k.startswith("HISTO_MAX_RUNS_")):
        max_concurrent(name[len("HISTO_MAX_RUNS_") :])  # a bad value is refused here, before a process starts
    from histo_core.tasks import active_tasks

    limit = max_queued()
    active = len(active_runs(runs_root)) + len(active_tasks(runs_root))
    if active >= limit:
        raise HistoError(
            f"{active} runs and page tasks are already queued or running in {paths.runs_dir(runs_root)}, the limit "
            f"(HISTO_MAX_QUEUED={limit}): wait for one to finish or cancel one, then start again"
        )


def _train_command(run: RunDir, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "histo_core", "train", "--run-dir", str(run.path.resolve())]
    return cmd + ["--resume"] if resume else cmd


def _child_env() -> dict[str, str]:
    # The child must import this checkout's histo_core whatever the caller's cwd and sys.path were, and must
    # see the same HISTO_* locations (runs, data, weights, slot limits) as the caller.
    env = dict(os.environ)
    root = str(paths.PROJECT_ROOT)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in parts if p != root])
    env.setdefault("PYTHONUNBUFFERED", "1")  # log.txt shows progress lines as they happen
    # OpenMP spin-waiting made a 2-thread step 5x slower when the app or another run shares the cores
    # (benchmarks/RESULTS.md); passive waiting costs nothing on an idle machine. Threads: this process's cores
    # shared by the training slots (histo_core/runtime.py; the child's __main__ applies the same rule).
    return runtime.thread_env(env)


def _start_training_process(run: RunDir, resume: bool) -> int:
    """Start the trainer detached from us; record its pid at once so a crash before the trainer writes its
    first status is still noticed by refresh_status."""
    cmd = _train_command(run, resume)
    try:
        with open(run.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd[1:])}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=paths.PROJECT_ROOT,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except OSError as exc:
        run.update_status(state="failed", error=f"could not start the training process: {exc}")
        raise HistoError(f"{run.id}: could not start the training process ({exc})") from None
    # Reap the child when it exits so it never lingers as a zombie in a long-lived server process.
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    # The trainer needs a second or more to import torch before it writes status.json, so this write does
    # not race with it in practice; the trainer records its own pid too.
    run.update_status(
        pid=proc.pid,
        pid_start=proc_start_time(proc.pid),
        host=socket.gethostname(),
        state="queued",
        error=None,
        finished_at=None,
    )
    return proc.pid


# -- liveness ----------------------------------------------------------------------------------------


def _proc_file(pid: int, name: str) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return None


def pid_alive(pid: int | None) -> bool:
    """True while process `pid` exists and is not a zombie (a zombie has finished; it only awaits reaping)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    stat = _proc_file(pid, "stat")
    if stat is not None:
        # /proc/<pid>/stat: "pid (comm) S ..."; comm may contain spaces or parentheses, so split after the last ')'
        state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
        if state in (b"Z", b"X"):
            return False
    return True


def proc_start_time(pid: int | None) -> int | None:
    """Start time of process `pid` in clock ticks since boot (/proc/<pid>/stat field 22); None without /proc.
    A pid reused by another process has another start time."""
    stat = _proc_file(int(pid), "stat") if pid else None
    if stat is None:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # fields 3.. (comm may hold spaces and parentheses)
    try:
        return int(fields[22 - 3])
    except (IndexError, ValueError):
        return None


def _is_run_process(pid: int, run: RunDir, status: RunStatus) -> bool:
    """Is live process `pid` really this run's trainer (and not a process that reused its pid)?
    The recorded start time must match; a run recorded before start times were kept falls back to the
    run id in the command line."""
    started = proc_start_time(pid)
    if status.pid_start is not None and started is not None:
        return int(status.pid_start) == started
    cmdline = _proc_file(pid, "cmdline")
    if cmdline is None:  # no /proc (not Linux): trust the pid
        return True
    return run.id.encode() in cmdline


def _heartbeat_stale(status: RunStatus, now: float | None = None) -> bool:
    beat = status.heartbeat or status.started_at or status.created_at
    return beat is None or (now or time.time()) - beat > HEARTBEAT_STALE_S


def process_alive(run: RunDir, status: RunStatus | None = None) -> bool:
    status = status or run.status()
    return pid_alive(status.pid) and _is_run_process(int(status.pid), run, status)


# -- status ------------------------------------------------------------------------------------------


def refresh_status(run: RunDir) -> RunStatus:
    """The run's status, with a queued/running run whose process is gone marked failed (written to disk).

    Cheap enough to call on every page refresh: a few small file reads. A run on another host cannot be
    checked by pid; when its heartbeat is older than HEARTBEAT_STALE_S it is reported as "stale" (not written).
    """
    status = run.status()
    if status.state not in ACTIVE_STATES:
        return status
    if status.host and status.host != socket.gethostname():
        if _heartbeat_stale(status):
            status.state = STALE
        return status
    if status.pid is None:
        # prepare_run wrote "queued" and submit is about to record the pid; give it a moment.
        if time.time() - (status.created_at or 0) > HEARTBEAT_STALE_S:
            return _mark_failed(run, status, "the training process was never started — resume to start it")
        return status
    if process_alive(run, status):
        return status
    fresh = run.status()  # the trainer may have written its final state just before it exited
    if fresh.state not in ACTIVE_STATES:
        return fresh
    if run.cancel_requested():  # asked to stop and stopped, just not cleanly: that is still a cancel
        fresh.state, fresh.finished_at, fresh.eta_s = "cancelled", time.time(), None
        fresh.error = f"cancelled; the process ended before it could save ({_checkpoint_note(run)})"
        _write_if_possible(run, fresh)
        return fresh
    return _mark_failed(run, fresh, _unexpected_end_message(run, fresh))


def _checkpoint_note(run: RunDir) -> str:
    if not run.last_ckpt.exists():
        return "no checkpoint yet"
    epochs = len(run.metrics())
    return f"last checkpoint: epoch {epochs}" if epochs else "last checkpoint: before the first epoch ended"


def _unexpected_end_message(run: RunDir, status: RunStatus) -> str:
    where = _checkpoint_note(run)
    advice = "resume to continue" if run.last_ckpt.exists() else "resume to start again from scratch"
    msg = f"training process {status.pid} ended unexpectedly (killed or crashed); {where} — {advice}"
    last = last_log_line(run)
    return f"{msg}. Log: {last}" if last else msg


def _mark_failed(run: RunDir, status: RunStatus, error: str) -> RunStatus:
    status.state = "failed"
    status.error = error
    status.finished_at = time.time()
    status.eta_s = None
    _write_if_possible(run, status)
    return status


def _write_if_possible(run: RunDir, status: RunStatus) -> None:
    """Record a status found by a reader; on a read-only runs directory it is shown, not written."""
    try:
        run.write_status(status)
    except OSError:
        pass


def log_tail(run: RunDir, lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last `lines` lines of log.txt (reads at most `max_bytes` from its end)."""
    try:
        with open(run.log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    return "\n".join(text.splitlines()[-lines:])


def last_log_line(run: RunDir) -> str:
    """The last non-empty log line that is not our own start banner, trimmed for a one-line message."""
    for line in reversed(log_tail(run, 20).splitlines()):
        line = line.strip()
        if line and not line.startswith("==="):
            return line[:200]
    return ""


# -- control -----------------------------------------------------------------------------------------


def cancel(run: RunDir) -> RunStatus:
    """Ask a queued or running run to stop. A running trainer stops at a safe point, saves last.pt and writes
    "cancelled" itself; a queued run is marked cancelled at once."""
    status = refresh_status(run)
    if status.state not in ACTIVE_STATES:
        raise HistoError(f"{run.id}: the run is {status.state}; only a queued or running run can be cancelled")
    try:
        run.cancel_path.touch()
    except OSError as exc:
        raise HistoError(f"{run.id}: cannot write to the run directory ({exc.strerror or exc})") from None
    if status.pid and process_alive(run, status):
        try:
            os.kill(int(status.pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
    if status.state == "queued":
        status = run.status()
        if status.state == "queued":
            status.state = "cancelled"
            status.finished_at = time.time()
            status.eta_s = None
            run.write_status(status)
    return status


def resume(run: RunDir) -> str:
    """Restart a cancelled or failed run in a new background process, from last.pt when there is one.
    Returns a sentence saying what will happen."""
    status = refresh_status(run)
    if status.state in ACTIVE_STATES:
        raise HistoError(f"{run.id}: the run is {status.state}; cancel it before resuming")
    if status.state == STALE:
        raise HistoError(f"{run.id}: the run is still marked running on {status.host}; resume it there")
    if status.state == "completed":
        raise HistoError(f"{run.id}: the run has completed; start a new run to train longer")
    check_queue_room(run.path.parent)
    run.cancel_path.unlink(missing_ok=True)
    from_checkpoint = run.last_ckpt.exists()
    if from_checkpoint:
        note = f"resuming {run.id} from epoch {len(run.metrics())} of {status.epochs or '?'}"
    else:  # the trainer refuses --resume without last.pt; a fresh start also clears the partial metrics
        note = f"{run.id} has no checkpoint (last.pt): restarting it from scratch"
    run.update_status(state="queued", error=None, finished_at=None, eta_s=None, phase="")
    _start_training_process(run, resume=from_checkpoint)
    return note


def delete(run: RunDir) -> None:
    """Remove a run directory; refused while its process is alive."""
    status = refresh_status(run)
    if status.state in ACTIVE_STATES or status.state == STALE:
        raise HistoError(f"{run.id}: the run is {status.state}; cancel it before deleting it")
    if status.pid and process_alive(run, status):
        raise HistoError(f"{run.id}: its training process {status.pid} is still exiting; try again in a moment")
    try:
        shutil.rmtree(run.path)
    except OSError as exc:
        raise HistoError(f"{run.path}: could not delete the run ({exc.strerror or exc})") from None


def wait(run: RunDir, timeout_s: float, states: tuple[str, ...] = FINAL_STATES, poll_s: float = 0.25) -> RunStatus:
    """Poll until the run reaches one of `states` (refreshing liveness); raises TimeoutError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = refresh_status(run)
        if status.state in states:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run.id}: still {status.state} after {timeout_s:.0f} s")
        time.sleep(poll_s)


# -- summaries ---------------------------------------------------------------------------------------


def best_val(run: RunDir, rows: list[dict[str, Any]] | None = None) -> tuple[str, float | None, int | None]:
    """(monitored metric, its best value, epoch) over the finished epochs."""
    monitor = run.config().get("monitor", "val_loss")
    rows = run.metrics() if rows is None else rows
    scored = [(r[monitor], r.get("epoch")) for r in rows if isinstance(r.get(monitor), (int, float))]
    if not scored:
        return monitor, None, None
    pick = min if monitor == "val_loss" else max
    value, epoch = pick(scored, key=lambda t: t[0])
    return monitor, float(value), epoch


def run_summary(run: RunDir, status: RunStatus | None = None) -> dict[str, Any]:
    """One flat row describing a run, for tables and `runs list`."""
    status = status or refresh_status(run)
    config, dataset = run.config(), run.dataset()
    rows = run.metrics()
    monitor, best, best_epoch = best_val(run, rows)
    test = (run.results() or {}).get("test") or {}
    end = status.finished_at or (time.time() if status.state in ACTIVE_STATES else status.heartbeat)
    duration = (end - status.started_at) if (status.started_at and end) else None
    noise = float(config.get("noise") or 0.0)
    return {
        "id": run.id,
        "name": config.get("name") or "",
        "started_by": config.get("started_by") or "",
        "dataset": dataset.get("title") or dataset.get("name") or config.get("dataset", ""),
        "dataset_spec": config.get("dataset", ""),
        "synthetic": bool(dataset.get("synthetic")),
        "arch": config.get("arch", ""),
        "noise": noise,
        "noise_mode": config.get("noise_mode", "") if noise else "",
        "state": status.state,
        "progress": status.progress,
        "epoch": status.epoch or len(rows),
        "epochs": status.epochs or config.get("epochs") or 0,
        "monitor": monitor,
        "best_val": best,
        "best_epoch": best_epoch,
        "test_accuracy": test.get("accuracy"),
        "test_auc": test.get("auc"),
        "test_ece": test.get("ece"),
        "duration_s": duration,
        "created_at": status.created_at,
        "error": status.error,
        "path": str(run.path),
    }


def augmentation_label(augment: dict[str, Any]) -> str:
    """ "flip+rot90+rotate 15°+jitter b0.1" style short description of a config's augmentation."""
    parts = [k for k in ("flip", "rot90") if augment.get(k)]
    if augment.get("rotate"):
        parts.append(f"rotate {augment['rotate']:g}°")
    if augment.get("resized_crop"):
        parts.append(f"crop {augment.get('crop_scale', 0):g}")
    jitter = " ".join(
        f"{k[0]}{augment[k]:g}" for k in ("brightness", "contrast", "saturation", "hue") if augment.get(k)
    )
    if jitter:
        parts.append(f"jitter {jitter}")
    return "+".join(parts) or "none"


def comparison_row(run: RunDir, status: RunStatus | None = None) -> dict[str, Any]:
    """The settings and final metrics of a run: one row of a course-project style hyper-parameter table."""
    s = run_summary(run, status)
    c = run.config()
    results = run.results() or {}
    schedule = c.get("schedule", "")
    if schedule == "step":
        schedule = f"step {c.get('step_size')}x{c.get('gamma')}"
    loss = c.get("loss", "")
    if loss == "smooth":
        loss = f"smooth {c.get('label_smoothing')}"
    elif loss == "sce":
        loss = f"sce a{c.get('sce_alpha')} b{c.get('sce_beta')}"
    return {
        "run": s["name"] or s["id"],
        "dataset": s["dataset"] + (" (SYNTHETIC)" if s["synthetic"] and "SYNTHETIC" not in s["dataset"] else ""),
        "arch": s["arch"],
        "mode": c.get("mode", "") + (" +ImageNet" if c.get("pretrained") else ""),
        "optimizer": c.get("optimizer"),
        "lr": c.get("lr"),
        "weight decay": c.get("weight_decay"),
        "batch": c.get("batch_size"),
        "epochs": f"{results.get('epochs_run', s['epoch'])}/{c.get('epochs')}",
        "schedule": schedule,
        "noise": f"{s['noise']:g} {s['noise_mode']}" if s["noise"] else "0",
        "augmentation": augmentation_label(c.get("augment") or {}),
        "loss": loss,
        "early stop": f"{c.get('monitor')} p{c.get('patience')}" if c.get("early_stopping") else "no",
        "state": s["state"],
        "best epoch": results.get("best_epoch", s["best_epoch"]),
        "test acc": s["test_accuracy"],
        "test AUC": s["test_auc"],
        "test ECE": s["test_ece"],
        "time (s)": round(s["duration_s"], 1) if s["duration_s"] is not None else None,
        "run id": s["id"],
    }


def summaries(runs_root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """run_summary of every run under the runs root, newest first."""
    return [run_summary(r) for r in list_runs(runs_root)]


# -- inspection jobs: `python -m histo_core embed|explain-quality ...` in the background -------------------------
# One process per job, detached like a training run; its state lives in a small JSON file (`status_path`) that
# the child updates (write_job_status) and the pages poll (job_status). Nothing is kept in memory here.
INSPECTION_KINDS = ("embed", "explain-quality")


def start_inspection_job(kind: str, args: list[str], status_path: str | os.PathLike) -> int:
    """Start `python -m histo_core <kind> *args --job-status status_path` detached; returns its pid. Refused
    while the same job (same status file) is still running."""
    if kind not in INSPECTION_KINDS:
        raise HistoError(f"unknown background job {kind!r}; one of {', '.join(INSPECTION_KINDS)}")
    status_path = Path(status_path)
    current = job_status(status_path)
    if current and current.get("state") == "running":
        raise HistoError(f"{kind} is already running (process {current.get('pid')}); wait for it to finish")
    cmd = [sys.executable, "-m", "histo_core", kind, *args, "--job-status", str(status_path.resolve())]
    log_path = status_path.with_suffix(".log")
    try:
        status_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd[1:])}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=paths.PROJECT_ROOT,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except OSError as exc:
        raise HistoError(f"could not start the {kind} process: {exc.strerror or exc}") from None
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    write_job_status(
        status_path,
        kind=kind,
        state="running",
        pid=proc.pid,
        host=socket.gethostname(),
        started_at=time.time(),
        finished_at=None,
        progress=0.0,
        message="starting",
        error=None,
        log=str(log_path),
    )
    return proc.pid


def write_job_status(status_path: str | os.PathLike, **changes: Any) -> dict[str, Any]:
    """Merge `changes` into the job's status file (atomically) and return the result."""
    from histo_core.fsutil import read_json, write_json_atomic

    doc = read_json(Path(status_path), {}) or {}
    doc.update(changes)
    write_json_atomic(Path(status_path), doc)
    return doc


def job_status(status_path: str | os.PathLike) -> dict[str, Any] | None:
    """The job's status, with a "running" job whose process is gone marked failed (written to disk)."""
    from histo_core.fsutil import read_json

    doc = read_json(Path(status_path))
    if not doc or doc.get("state") != "running":
        return doc
    if doc.get("host") and doc["host"] != socket.gethostname():
        return doc
    pid = doc.get("pid")
    cmdline = _proc_file(int(pid), "cmdline") if pid else None
    if pid_alive(pid) and (cmdline is None or str(Path(status_path).resolve()).encode() in cmdline):
        return doc
    fresh = read_json(Path(status_path)) or doc  # it may have finished just now
    if fresh.get("state") != "running":
        return fresh
    last = ""
    try:
        lines = [ln.strip() for ln in Path(doc.get("log", "")).read_text(errors="replace").splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if not ln.startswith("===")), "")[:200]
    except OSError:
        pass
    return write_job_status(
        status_path,
        state="failed",
        finished_at=time.time(),
        error=f"the {doc.get('kind', 'background')} process {pid} ended unexpectedly"
        + (f". Log: {last}" if last else ""),
    )


__all__ = [
    "submit",
    "cancel",
    "resume",
    "delete",
    "refresh_status",
    "run_summary",
    "summaries",
    "wait",
    "log_tail",
    "last_log_line",
    "start_inspection_job",
    "job_status",
    "write_job_status",
    "comparison_row",
    "augmentation_label",
    "pid_alive",
    "process_alive",
    "best_val",
    "resolve_run",
    "ACTIVE_STATES",
    "STALE",
]


# -- evaluation jobs: `python -m histo_core evaluate ... --json` in the background -----------------------------
# One detached process per evaluation; its record, output and log sit next to the saved evaluation in
# <run>/evaluations/: <name>.job.json (command, pid, start), <name>.out.json (stdout), <name>.log (stderr).


def _evaluations_dir(run: RunDir) -> Path:
    from histo_core.evaluation import EVALUATIONS_DIR

    return run.file(EVALUATIONS_DIR)


def evaluation_command(model: str, dataset: str, split: str, class_map: dict[str, str], name: str) -> list[str]:
    from histo_core.classnames import format_class_map

    cmd = [
        sys.executable,
        "-m",
        "histo_core",
        "evaluate",
        model,
        "--dataset",
        dataset,
        "--split",
        split,
        "--name",
        name,
        "--json",
    ]
    return cmd + ["--class-map", format_class_map(class_map)] if class_map else cmd


def start_evaluation(
    run: RunDir, dataset: str, split: str = "test", class_map: dict[str, str] | None = None, name: str | None = None
) -> str:
    """Start evaluating `run`'s model on `dataset` in a background process; returns the evaluation's name.
    Its progress is read back with evaluation_jobs(run)."""
    from histo_core.evaluation import evaluation_name

    if not str(dataset or "").strip():
        raise HistoError("no dataset given: type a registered name or the path of an npz, a CSV or a folder")
    name = evaluation_name(name, dataset, split)
    folder = _evaluations_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / f"{name}.job.json"
    previous = _read_job(job)
    if previous and pid_alive(previous.get("pid")):
        raise HistoError(f"evaluation {name!r} is already running; wait for it or choose another name")
    cmd = evaluation_command(str(run.path.resolve()), str(dataset).strip(), split, dict(class_map or {}), name)
    try:
        with open(folder / f"{name}.out.json", "wb") as out, open(folder / f"{name}.log", "wb") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=paths.PROJECT_ROOT,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
    except OSError as exc:
        raise HistoError(f"could not start the evaluation process ({exc})") from None
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    from histo_core.fsutil import write_json_atomic

    write_json_atomic(
        job,
        {
            "name": name,
            "pid": proc.pid,
            "started_at": time.time(),
            "dataset": str(dataset),
            "split": split,
            "class_map": dict(class_map or {}),
            "command": cmd[1:],
        },
    )
    return name


def _read_job(path: Path) -> dict[str, Any] | None:
    from histo_core.fsutil import read_json

    job = read_json(path)
    return job if isinstance(job, dict) else None


def evaluation_jobs(run: RunDir) -> list[dict[str, Any]]:
    """The run's evaluation jobs, newest first: name, dataset, split, state ("running", "completed" or
    "failed") and, for a failed one, the error line the command printed."""
    folder = _evaluations_dir(run)
    out = []
    for path in folder.glob("*.job.json") if folder.is_dir() else []:
        job = _read_job(path)
        if not job:
            continue
        name = str(job.get("name") or path.name.removesuffix(".job.json"))
        if pid_alive(job.get("pid")):
            state, error = "running", None
        else:
            result = folder / f"{name}.json"
            done = result.exists() and result.stat().st_mtime >= float(job.get("started_at", 0)) - 1
            state = "completed" if done else "failed"
            error = None
            if not done:
                try:
                    lines = (folder / f"{name}.log").read_text(errors="replace").strip().splitlines()
                except OSError:
                    lines = []
                error = lines[-1] if lines else "the evaluation process ended without a result"
        out.append({**job, "name": name, "state": state, "error": error})
    return sorted(out, key=lambda j: -float(j.get("started_at", 0)))
