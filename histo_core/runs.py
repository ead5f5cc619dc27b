"""The run directory: the contract between a training process and everything that reads it.

    runs/<run_id>/
      config.json          TrainConfig.to_dict()
      dataset.json         DatasetInfo.to_dict() of the dataset trained on (classes, size, channels...)
      status.json          RunStatus: state, pid, heartbeat, progress, error   (rewritten atomically)
      metrics.jsonl        one JSON object per finished epoch                   (append-only; a reader
                           ignores a partial last line)
      last.pt / best.pt    checkpoints (see histo_core.checkpoint)             (written atomically)
      results.json         final test evaluation (accuracy, auc, loss, ece, per_class, confusion, roc)
      predictions_<split>.npz   probs (N,K) float32, labels (N,), indices (N,) for the Review page
      noise.npz            for --noise-mode fixed: noisy_labels and flipped (bool) of the train split
      val_latest.json      the last epoch's validation report (live on the Runs page)
      ranks/               under torchrun: each rank's training state and liveness beacon
      log.txt              the process's stdout/stderr
      cancel               present when a cancel was requested (the trainer stops at a safe point)
      embeddings/          feature map of the run's tiles (histo_core.embeddings)
      evaluations/         the model on other labelled datasets (histo_core.evaluation)
      label_errors.npz     cross-validated label-error search (histo_core.label_errors)
      faithfulness.json    ROAD scores of the Grad-CAM methods (histo_core.faithfulness)

Every name is a property of RunDir below: no other module spells a file of a run.

Every file except metrics.jsonl and log.txt is written with temp file + rename, so the UI never reads half
a file. The UI holds no training state: it reads these files on every refresh.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from histo_core import paths
from histo_core.errors import HistoError
from histo_core.fsutil import write_json_atomic, write_text_atomic

STATES = ("queued", "running", "completed", "failed", "cancelled")
UNREADABLE = "unreadable"  # a run whose files cannot be read: listed with the file and the reason, never written
FINAL_STATES = ("completed", "failed", "cancelled")
HEARTBEAT_STALE_S = 60.0  # a running run whose heartbeat is older than this and whose pid is gone is dead


@dataclass
class RunStatus:
    state: str = "queued"
    pid: int | None = None
    pid_start: int | None = None  # the process's start time (/proc/<pid>/stat field 22): a reused pid differs
    started_by: str | None = None  # who started the run when the app requires sign-in
    host: str = field(default_factory=socket.gethostname)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    heartbeat: float | None = None
    finished_at: float | None = None
    epoch: int = 0  # epochs finished
    epochs: int = 0  # epochs planned
    step: int = 0  # batches done in the current epoch
    steps_per_epoch: int = 0
    images_per_s: float | None = None
    eta_s: float | None = None
    phase: str = ""  # "train", "validate", "test", "lr-find" ...
    error: str | None = None
    device: str = ""

    @property
    def progress(self) -> float:
        if self.state == "completed":
            return 1.0
        if not self.epochs:
            return 0.0
        frac = self.step / self.steps_per_epoch if self.steps_per_epoch else 0.0
        return min(1.0, (self.epoch + frac) / self.epochs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunStatus:
        """A status from status.json's object; ValueError naming the field when a value has the wrong type."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if known.get("state", "queued") not in STATES:
            raise ValueError(f"state {str(known.get('state'))[:40]!r} is not one of {', '.join(STATES)}")
        for name, value in known.items():
            if name == "state" or value is None:
                continue
            kind = _STATUS_TYPES.get(name, str)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"{name} is {type(value).__name__}, not {_TYPE_WORDS[kind]}")
        return cls(**known)


_STATUS_TYPES: dict[str, Any] = {
    "pid": int,
    "pid_start": int,
    "epoch": int,
    "epochs": int,
    "step": int,
    "steps_per_epoch": int,
    **{k: (int, float) for k in ("created_at", "started_at", "heartbeat", "finished_at", "images_per_s", "eta_s")},
}
_TYPE_WORDS: dict[Any, str] = {int: "an integer", (int, float): "a number", str: "text"}
_NUMBER_FIELDS = ("accuracy", "auc", "loss", "ece", "n")


def _json_object(path: Path, required: bool) -> tuple[dict[str, Any] | None, str | None]:
    """(object, None) for a readable JSON object; (None, reason) otherwise; (None, None) for an optional file
    that is absent."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, ("missing" if required else None)
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    if not text.strip():
        return None, "empty"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON (line {exc.lineno}: {exc.msg})"
    if not isinstance(value, dict):
        return None, f"holds a JSON {type(value).__name__}, not an object"
    return value, None


def _report_problem(report: Any, where: str) -> str | None:
    """Why an evaluation report (results.json's test/val) cannot be shown, or None."""
    if not isinstance(report, dict):
        return f"{where} is not an object"
    for key in _NUMBER_FIELDS:
        value = report.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{where} {key} is {type(value).__name__}, not a number"
    confusion = report.get("confusion")
    if confusion is not None and not (
        isinstance(confusion, list)
        and all(isinstance(row, list) and all(isinstance(v, (int, float)) for v in row) for row in confusion)
    ):
        return f"{where} confusion is not a table of counts"
    if report.get("classes") is not None and not isinstance(report["classes"], list):
        return f"{where} classes is not a list"
    per_class = report.get("per_class")
    if per_class is not None and not (isinstance(per_class, list) and all(isinstance(c, dict) for c in per_class)):
        return f"{where} per_class is not a list of objects"
    return None


def _results_problem(results: dict[str, Any]) -> str | None:
    for split in ("test", "val"):
        if results.get(split) is not None:
            problem = _report_problem(results[split], split)
            if problem:
                return problem
    return None


def _config_problem(config: dict[str, Any]) -> str | None:
    for key in ("dataset", "arch"):
        if not isinstance(config.get(key), str) or not config[key].strip():
            return f"no {key} (the settings the run was trained with are lost)"
    for key, kind in (("epochs", int), ("batch_size", int), ("lr", (int, float)), ("noise", (int, float))):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            return f"{key} is {type(value).__name__}, not {_TYPE_WORDS[kind]}"
    for key in ("name", "started_by", "noise_mode", "optimizer"):
        if config.get(key) is not None and not isinstance(config[key], str):
            return f"{key} is {type(config[key]).__name__}, not text"
    return None


def _is_epoch_row(row: Any) -> bool:
    """A metrics.jsonl line as the trainer writes it: an object of numbers with an integer epoch."""
    return (
        isinstance(row, dict)
        and isinstance(row.get("epoch"), int)
        and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in row.values())
    )


class RunDir:
    """Paths and readers/writers of one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # paths
    @property
    def id(self) -> str:
        return self.path.name

    config_path = property(lambda self: self.path / "config.json")
    dataset_path = property(lambda self: self.path / "dataset.json")
    status_path = property(lambda self: self.path / "status.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    results_path = property(lambda self: self.path / "results.json")
    last_ckpt = property(lambda self: self.path / "last.pt")
    best_ckpt = property(lambda self: self.path / "best.pt")
    log_path = property(lambda self: self.path / "log.txt")
    cancel_path = property(lambda self: self.path / "cancel")
    noise_path = property(lambda self: self.path / "noise.npz")
    val_latest_path = property(lambda self: self.path / "val_latest.json")
    ranks_dir = property(lambda self: self.path / "ranks")  # under torchrun: each rank's state and beacon
    embeddings_dir = property(lambda self: self.path / "embeddings")
    evaluations_dir = property(lambda self: self.path / "evaluations")
    label_errors_path = property(lambda self: self.path / "label_errors.npz")
    faithfulness_path = property(lambda self: self.path / "faithfulness.json")

    # how liveness.py speaks of this folder's process when it died; a task folder (task_folders.py) says it its way
    noun = "run"

    def never_started_message(self) -> str:
        return "the training process was never started — resume to start it"

    def checkpoint_note(self) -> str:
        if not self.last_ckpt.exists():
            return "no checkpoint yet"
        epochs = len(self.metrics())
        return f"last checkpoint: epoch {epochs}" if epochs else "last checkpoint: before the first epoch ended"

    def cancelled_error(self) -> str | None:
        """The error recorded when a cancelled process ended before it stopped cleanly."""
        return f"cancelled; the process ended before it could save ({self.checkpoint_note()})"

    def ended_message(self, status: RunStatus, last_log_line: str) -> str:
        """The error recorded when the process ended without saying so (killed, OOM, crash)."""
        advice = "resume to continue" if self.last_ckpt.exists() else "resume to start again from scratch"
        msg = (
            f"training process {status.pid} ended unexpectedly (killed or crashed); {self.checkpoint_note()} — {advice}"
        )
        return f"{msg}. Log: {last_log_line}" if last_log_line else msg

    def predictions_path(self, split: str) -> Path:
        return self.path / f"predictions_{split}.npz"

    def exists(self) -> bool:
        return self.config_path.exists()

    # readers: every file through its schema; a file that does not fit reads as absent, and status() says why
    def schema(self) -> list[tuple[Path, bool, Callable[[dict[str, Any]], str | None] | None]]:
        """The folder's JSON files: (path, required, check of its object). A folder type lists its own."""
        return [
            (self.config_path, True, _config_problem),
            (self.status_path, False, status_problem),
            (self.dataset_path, False, None),
            (self.results_path, False, _results_problem),
        ]

    def problem(self) -> str | None:
        """'<file>: <reason>' for the first of the folder's files that cannot be read as its schema says, else
        None."""
        for path, required, check in self.schema():
            value, problem = _json_object(path, required)
            if problem is None and value is not None and check is not None:
                problem = check(value)
            if problem:
                return f"{path.name}: {problem}"
        return None

    def config(self) -> dict[str, Any]:
        value, problem = _json_object(self.config_path, True)
        return value if value is not None and not _config_problem(value) else {}

    def dataset(self) -> dict[str, Any]:
        return _json_object(self.dataset_path, False)[0] or {}

    def status(self) -> RunStatus:
        """The run's status; state UNREADABLE, with the file and the reason as its error, when any of the run's
        files does not read (such a run is listed and can be deleted; it is never resumed, cancelled or counted
        against a limit). No status.json yet: queued (the run is being created)."""
        problem = self.problem()
        if problem:
            return RunStatus(state=UNREADABLE, error=problem, host="", created_at=_mtime(self.path))
        value, _ = _json_object(self.status_path, False)
        return RunStatus.from_dict(value) if value else RunStatus(state="queued")

    def results(self) -> dict[str, Any] | None:
        value, problem = _json_object(self.results_path, False)
        return value if value is not None and not _results_problem(value) else None

    def metrics(self) -> list[dict[str, Any]]:
        """Per-epoch metric rows; a partial last line (being written) is skipped."""
        try:
            text = self.metrics_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        rows = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if _is_epoch_row(row):  # a line of another shape is not an epoch
                rows.append(row)
        return rows

    # writers
    def write_status(self, status: RunStatus) -> None:
        write_json_atomic(self.status_path, status.to_dict())

    def update_status(self, **changes: Any) -> RunStatus:
        st = self.status()
        if st.state == UNREADABLE:  # never rewrite a run whose files do not read: it would invent the rest
            raise HistoError(f"{self.id}: unreadable ({st.error}); restore the file or delete the run")
        for k, v in changes.items():
            setattr(st, k, v)
        self.write_status(st)
        return st

    def append_metrics(self, row: dict[str, Any]) -> None:
        line = json.dumps(row) + "\n"
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def truncate_metrics(self, epochs: int) -> None:
        """Keep the rows of the first `epochs` epochs (resume after a crash rewrites what follows)."""
        rows = [r for r in self.metrics() if int(r.get("epoch", 0)) <= epochs]

        write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def cancel_requested(self) -> bool:
        return self.cancel_path.exists()


def status_problem(value: dict[str, Any]) -> str | None:
    try:
        RunStatus.from_dict(value)
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def new_run_id(config_name: str = "", arch: str = "", dataset: str = "") -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # the architecture and dataset are added unless the run's name already says them (no "cnn3-...-cnn3")
    parts: list[str] = []
    for part in (config_name or "", arch, Path(dataset).stem if dataset else ""):
        words = set(re.split(r"[^a-z0-9]+", "-".join(parts).lower()))
        if part and part.lower() not in words:
            parts.append(part)
    label = "-".join(parts)
    label = "".join(c if c.isalnum() or c in "-_" else "-" for c in label)[:40].strip("-")
    return f"{stamp}-{label}-{secrets.token_hex(2)}" if label else f"{stamp}-{secrets.token_hex(2)}"


def create_run_dir(root: str | os.PathLike | None = None, run_id: str | None = None) -> RunDir:
    root = paths.runs_dir(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        run = RunDir(root / (run_id or new_run_id()))
        run.path.mkdir(parents=False, exist_ok=False)
    except OSError as exc:
        raise HistoError(f"cannot create a run directory in {root}: {exc.strerror or exc}") from None
    return run


def read_only_note(root: str | os.PathLike | None = None) -> str | None:
    """A sentence when the runs directory exists but cannot be written (runs can still be listed and read)."""
    root = paths.runs_dir(root)
    if root.is_dir() and not os.access(root, os.W_OK):
        return (
            f"{root} is read-only: runs can be listed and inspected, but starting, cancelling, resuming or "
            "deleting one needs write access to it"
        )
    return None


def list_runs(root: str | os.PathLike | None = None) -> list[RunDir]:
    """Run directories under `root`, newest first."""
    root = paths.runs_dir(root)
    if root.exists() and not root.is_dir():
        raise HistoError(
            f"{root}: the runs directory is a file, not a folder; point HISTO_RUNS_DIR (or --runs-dir) at a folder"
        )
    if not root.is_dir():
        return []
    try:
        runs = [RunDir(p) for p in root.iterdir() if p.is_dir() and (p / "config.json").exists()]
    except OSError as exc:
        raise HistoError(
            f"{root}: cannot read the runs directory ({exc.strerror or exc}); check its "
            "permissions or set HISTO_RUNS_DIR"
        ) from None
    return sorted(runs, key=lambda r: r.id, reverse=True)


def check_run_id(run_id: str) -> str:
    """A run id is a folder name under the runs root, never a path: refuse separators, '.', '..' and NUL."""
    text = str(run_id)
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if not text.strip() or text in (".", "..") or any(c in text for c in seps) or "\0" in text:
        raise HistoError(f"{text!r}: not a run id; give the name of a run as `runs list` shows it (no '/' or '..')")
    return text


def run_by_id(run_id: str, root: str | os.PathLike | None = None) -> RunDir:
    """The run named `run_id` under the runs root (what the `runs` verbs and the pages take)."""
    run = RunDir(paths.runs_dir(root) / check_run_id(run_id))
    if not run.config_path.exists():
        raise HistoError(f"{run_id}: no such run in {paths.runs_dir(root)} (see `python -m histo_core runs list`)")
    return run


def resolve_run(spec: str | os.PathLike, root: str | os.PathLike | None = None) -> RunDir:
    """A run by directory path or by id under the runs root."""
    p = Path(spec).expanduser()
    if (p / "config.json").exists():
        return RunDir(p)
    q = paths.runs_dir(root) / str(spec)
    if (q / "config.json").exists():
        return RunDir(q)
    raise HistoError(f"{spec}: no such run (give a run directory or an id under {paths.runs_dir(root)})")
