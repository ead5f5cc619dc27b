"""Background jobs besides training runs, each one detached `python -m histo_core ...` process
(histo_core.procs) whose state lives in files, never in memory:

- inspection jobs (`embed`, `explain-quality`) for the Feature map page: a small JSON status file the child
  updates (write_job_status) and the page polls (job_status);
- evaluation jobs (`evaluate ... --json`) for the Runs and Classify pages: <run>/evaluations/<name>.job.json
  (or <data dir>/evaluations/<model name>/ for a weights model) (command, pid,
  start), <name>.out.json (stdout) and <name>.log (stderr) beside the saved evaluation.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from histo_core.classnames import format_class_map
from histo_core.errors import HistoError
from histo_core.fsutil import read_json, write_json_atomic
from histo_core.launch import queue_room
from histo_core.procs import histo_command, log_banner, one_start, pid_alive, proc_file, spawn_detached
from histo_core.runs import RunDir

INSPECTION_KINDS = ("embed", "explain-quality")


def start_inspection_job(kind: str, args: list[str], status_path: str | os.PathLike) -> int:
    """Start `python -m histo_core <kind> *args --job-status status_path` detached; returns its pid. Refused
    while the same job (same status file) is still running."""
    if kind not in INSPECTION_KINDS:
        raise HistoError(f"unknown background job {kind!r}; one of {', '.join(INSPECTION_KINDS)}")
    status_path = Path(status_path)
    try:
        status_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HistoError(f"could not start the {kind} process: {exc.strerror or exc}") from None
    with one_start(status_path.with_suffix(".lock")):  # a double click starts one job; the second is refused
        current = job_status(status_path)
        if current and current.get("state") == "running":
            raise HistoError(f"{kind} is already running (process {current.get('pid')}); wait for it to finish")
        cmd = histo_command(kind, *args, "--job-status", str(status_path.resolve()))
        log_path = status_path.with_suffix(".log")
        try:
            with _queue_room(), open(log_path, "ab") as log:
                log_banner(log, cmd)
                pid = spawn_detached(cmd, log)
        except OSError as exc:
            raise HistoError(f"could not start the {kind} process: {exc.strerror or exc}") from None
        write_job_status(
            status_path,
            kind=kind,
            state="running",
            pid=pid,
            host=socket.gethostname(),
            started_at=time.time(),
            finished_at=None,
            progress=0.0,
            message="starting",
            error=None,
            log=str(log_path),
        )
    return pid


def _queue_room(runs_root: str | os.PathLike | None = None):
    return queue_room(runs_root)


def write_job_status(status_path: str | os.PathLike, **changes: Any) -> dict[str, Any]:
    """Merge `changes` into the job's status file (atomically) and return the result."""
    doc = read_json(Path(status_path), {}) or {}
    doc.update(changes)
    write_json_atomic(Path(status_path), doc)
    return doc


def job_status(status_path: str | os.PathLike) -> dict[str, Any] | None:
    """The job's status, with a "running" job whose process is gone marked failed (written to disk)."""
    doc = read_json(Path(status_path))
    if not doc or doc.get("state") != "running":
        return doc
    if doc.get("host") and doc["host"] != socket.gethostname():
        return doc
    pid = doc.get("pid")
    cmdline = proc_file(int(pid), "cmdline") if pid else None
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


# -- evaluation jobs ------------------------------------------------------------------------------------


def _evaluations_dir(model: RunDir | str) -> Path:
    from histo_core.evaluation import evaluations_folder

    return evaluations_folder(model)


def evaluation_command(
    model: str, dataset: str, split: str, class_map: dict[str, str], name: str, save_to: str | Path | None = None
) -> list[str]:

    cmd = histo_command("evaluate", model, "--dataset", dataset, "--split", split, "--name", name, "--json")
    if save_to is not None:
        cmd += ["--save-to", str(save_to)]
    return cmd + ["--class-map", format_class_map(class_map)] if class_map else cmd


def start_evaluation(
    model: RunDir | str,
    dataset: str,
    split: str = "test",
    class_map: dict[str, str] | None = None,
    name: str | None = None,
) -> str:
    """Start evaluating a run's model (or a weights file / export name) on `dataset` in a background process;
    returns the evaluation's name. It is saved in evaluations_folder(model); its progress is read back with
    evaluation_jobs(model)."""
    from histo_core.evaluation import evaluation_name

    if not str(dataset or "").strip():
        raise HistoError("no dataset given: type a registered name or the path of an npz, a CSV or a folder")
    name = evaluation_name(name, dataset, split)
    folder = _evaluations_dir(model)
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / f"{name}.job.json"
    with one_start(folder / f"{name}.job.lock"):  # a double click starts one evaluation; the second is refused
        previous = _read_job(job)
        if previous and pid_alive(previous.get("pid")):
            raise HistoError(f"evaluation {name!r} is already running; wait for it or choose another name")
        ref = str(model.path.resolve()) if isinstance(model, RunDir) else str(model)
        cmd = evaluation_command(
            ref, str(dataset).strip(), split, dict(class_map or {}), name, save_to=folder.resolve()
        )
        runs_root = model.path.parent if isinstance(model, RunDir) else None
        try:
            with (
                _queue_room(runs_root),
                open(folder / f"{name}.out.json", "wb") as out,
                open(folder / f"{name}.log", "wb") as err,
            ):
                pid = spawn_detached(cmd, out, err, runs_root=runs_root)
        except OSError as exc:
            raise HistoError(f"could not start the evaluation process ({exc})") from None
        write_json_atomic(
            job,
            {
                "name": name,
                "pid": pid,
                "started_at": time.time(),
                "dataset": str(dataset),
                "split": split,
                "class_map": dict(class_map or {}),
                "command": cmd[1:],
            },
        )
    return name


def _read_job(path: Path) -> dict[str, Any] | None:
    job = read_json(path)
    return job if isinstance(job, dict) else None


def evaluation_jobs(model: RunDir | str) -> list[dict[str, Any]]:
    """The evaluation jobs of a run (or a weights model), newest first: name, dataset, split, state ("running", "completed" or
    "failed") and, for a failed one, the error line the command printed."""
    folder = _evaluations_dir(model)
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
