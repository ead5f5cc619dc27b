"""Studies: a grid of training runs (architectures x noise levels x methods x seeds) launched and managed as one.

    study = start_study(spec, base_config)       # a background task of kind "study": the driver process
    study_results(study)                         # every run's test metrics, the summary, the recommendation
    cancel_study(study); resume_study(study); delete_study(study)

A study is a task folder (histo_core.tasks, kind "study") whose params hold the grid (`StudySpec`) and the base
TrainConfig; its driver process submits the runs through `histo_core.jobs.submit`, never more than
`spec.parallel` of them queued or running at once, and records which run is which cell in runs.json. Resuming
starts the driver again on the same folder: finished runs are kept, cancelled or failed ones are resumed from
their last.pt, missing ones submitted. Every method sees the same flipped labels for a given seed and noise level,
because fixed noise depends only on the labels, the rate and the seed (histo_core.noise.fixed_noise).

The recommendation per noise level is the method (and architecture) with the best mean accuracy on the
validation split with labels made as noisy as the training labels (the same rate, the run's seed): a user has
nothing cleaner, and the test split is never used to choose. Its certainty is how often it stays best when the
seeds are resampled (a paired bootstrap).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from histo_core import jobs, liveness
from histo_core.config import MAX_NOISE, NOISE_METHODS, NOISE_MODES, TrainConfig, training_passes, with_method
from histo_core.errors import ConfigError, HistoError
from histo_core.fsutil import read_json, write_json_atomic
from histo_core.launch import restart_task, submit_task
from histo_core.runs import RunDir
from histo_core.study_tables import (
    AS_LABELLED,
    WITH_CORRECTIONS,
    detection_quality,
    detection_summary,
    per_class_summary,
)
from histo_core.study_tables import results_csv as results_csv
from histo_core.task_folders import TaskDir, cancel_task, list_tasks, refresh_task, task_by_id

KIND = "study"
RUNS_FILE = "runs.json"
SEARCHES_FILE = "searches.json"  # cell key -> the label-errors task folder of its run (--find-errors)
BOOTSTRAP = 2000


@dataclass
class StudySpec:
    archs: list[str]
    noises: list[float]
    methods: list[str] = field(default_factory=lambda: list(NOISE_METHODS))
    noise_mode: str = "fixed"
    seeds: int = 3
    parallel: int = 1  # runs of this study queued or running at once
    compare_corrections: bool = False  # every cell twice: as labelled, and with the base config's corrections
    find_errors: bool = False  # a label-error search on each noisy run of the first method (detection quality)

    def validate(self) -> StudySpec:
        from histo_core.models import ARCHITECTURES

        if not self.archs:
            raise ConfigError("--arch: give at least one architecture")
        for a in self.archs:
            if a not in ARCHITECTURES:
                raise ConfigError(f"--arch must be among {', '.join(ARCHITECTURES)}, got {a!r}")
        if not self.noises:
            raise ConfigError("--noise: give at least one noise level, e.g. 0,0.2,0.4")
        for n in self.noises:
            if not 0.0 <= n <= MAX_NOISE:
                raise ConfigError(f"--noise levels must be between 0 and {MAX_NOISE}, got {n}")
        if not self.methods:
            raise ConfigError(f"--methods: give at least one of {', '.join(NOISE_METHODS)}")
        for m in self.methods:
            if m not in NOISE_METHODS:
                raise ConfigError(f"--methods must be among {', '.join(NOISE_METHODS)}, got {m!r}")
        if self.noise_mode not in NOISE_MODES:
            raise ConfigError(f"--noise-mode must be one of {', '.join(NOISE_MODES)}, got {self.noise_mode!r}")
        if not 1 <= self.seeds <= 20:
            raise ConfigError(f"--seeds must be between 1 and 20, got {self.seeds}")
        if not 1 <= self.parallel <= 16:
            raise ConfigError(f"--parallel must be between 1 and 16, got {self.parallel}")
        return self

    def size(self) -> int:
        return (
            len(self.archs) * len(self.noises) * len(self.methods) * self.seeds * (2 if self.compare_corrections else 1)
        )

    def time_in_runs(self, base: TrainConfig) -> float:
        """The study's training time counted in runs of `base` (its time estimate times this is the study's): each
        method's runs weighted by their training passes over base's (config.training_passes: a `codivide` run
        counts about 2.2 against `ce`); architectures count alike; --find-errors' searches are not counted."""
        return sum(self.method_weights(base).values()) * self.size() / max(1, len(self.methods))

    def method_weights(self, base: TrainConfig) -> dict[str, float]:
        """Each method's run as a multiple of a run of `base` (the ratio of their training passes)."""
        return {m: training_passes(with_method(base, m)) / training_passes(base) for m in self.methods}

    def weights_note(self, base: TrainConfig) -> str:
        """The methods whose runs take longer or shorter than a run of `base`, in words (the Train page's study
        total and the command line's), e.g. "counting each method's passes over the training tiles: a codivide run
        as 2.2"; "" when every method's run takes as long."""
        weights = self.method_weights(base)
        listed = ", ".join(f"a {m} run as {w:.1f}" for m, w in weights.items() if abs(w - 1) >= 0.05)
        return f"counting each method's passes over the training tiles: {listed}" if listed else ""


def cells(spec: StudySpec) -> list[dict[str, Any]]:
    """The grid, seed-major so that a half-finished study has every method at the first seeds."""
    out = []
    for seed in range(spec.seeds):
        for noise in spec.noises:
            for arch in spec.archs:
                for method in spec.methods:
                    for corrected in (False, True) if spec.compare_corrections else (False,):
                        key = f"{arch}|{noise:g}|{method}|{seed}" + ("|corrected" if corrected else "")
                        out.append(
                            {"key": key, "arch": arch, "noise": noise, "method": method, "seed": seed}
                            | ({"as_labelled": True} if spec.compare_corrections and not corrected else {})
                        )
    return out


def cell_config(base: TrainConfig, spec: StudySpec, cell: dict[str, Any]) -> TrainConfig:
    """The run of one cell: the base config with its architecture, noise, method and seed; validated on the
    training split with the val split held out (the recommendation is chosen there)."""
    cfg = with_method(base, cell["method"]).replace(
        arch=cell["arch"],
        noise=float(cell["noise"]),
        noise_mode=spec.noise_mode,
        seed=int(cell["seed"]),
        train_splits="train",
        early_stopping=False,
        name=f"study-{cell['method']}-n{cell['noise']:g}-s{cell['seed']}",
    )
    if cell.get("as_labelled"):
        cfg = cfg.replace(corrections="")
    return cfg.validate()


# -- starting and managing ------------------------------------------------------------------------------------


def start_study(
    spec: StudySpec,
    base: TrainConfig,
    runs_root: str | os.PathLike | None = None,
    started_by: str | None = None,
) -> Any:
    """Validate, then start the driver process. Returns its TaskDir."""
    spec.validate()
    if spec.compare_corrections and not base.corrections:
        raise ConfigError("--compare-corrections runs every cell as labelled and with --corrections FILE: give one")
    for cell in cells(spec)[: len(spec.archs) * len(spec.methods)]:
        cell_config(base, spec, cell)  # every architecture and method checked before anything starts
    params = {"spec": asdict(spec), "base": base.to_dict()}
    return submit_task(KIND, params, runs_root, device=base.device, started_by=started_by)


def list_studies(runs_root: str | os.PathLike | None = None) -> list[Any]:
    return list_tasks(runs_root, KIND)


def study_by_id(study_id: str, runs_root: str | os.PathLike | None = None) -> Any:
    task = task_by_id(study_id, runs_root)
    if task.task().get("kind") != KIND:
        raise HistoError(f"{study_id}: not a study (see `python -m histo_core tasks list`)")
    return task


def study_runs(task: Any) -> dict[str, RunDir]:
    """Cell key -> run directory, for the runs the driver has submitted so far."""
    return {k: RunDir(v) for k, v in (read_json(task.path / RUNS_FILE, {}) or {}).items()}


def cancel_study(task: Any) -> None:
    """Stop the driver and every queued or running run of the study."""
    if refresh_task(task).state in liveness.ACTIVE_STATES:
        cancel_task(task)
    for run in study_runs(task).values():
        if run.exists() and liveness.refresh_status(run).state in liveness.ACTIVE_STATES:
            try:
                jobs.cancel(run)
            except HistoError:
                pass  # ended meanwhile


def resume_study(task: Any) -> None:
    """Start the driver again on the same study: finished runs kept, the others resumed or submitted."""
    restart_task(task)


def delete_study(task: Any) -> None:
    """Delete the study folder and all its runs; refused while the driver or any of its runs is active."""
    if refresh_task(task).state in liveness.ACTIVE_STATES:
        raise HistoError(f"{task.id}: the study is running; cancel it before deleting it")
    runs = [r for r in study_runs(task).values() if r.exists()]
    busy = [r.id for r in runs if liveness.refresh_status(r).state in liveness.ACTIVE_STATES]
    if busy:
        raise HistoError(
            f"{task.id}: {len(busy)} of its runs are still active ({busy[0]}, ...); cancel the study first"
        )
    for run in runs:
        jobs.delete(run)
    for search in (read_json(task.path / SEARCHES_FILE, {}) or {}).values():  # --find-errors: their task folders
        shutil.rmtree(search, ignore_errors=True)
    try:
        shutil.rmtree(task.path)
    except OSError as exc:
        raise HistoError(f"{task.path}: could not delete the study ({exc.strerror or exc})") from None


# -- the driver process -----------------------------------------------------------------------------------------
def task_main(params: dict[str, Any], progress: Callable[[float, str], None]) -> dict[str, Any]:
    """The `study` process kind (histo_core.kinds): the driver, on its own task folder."""
    return drive(params["_task_path"], params, progress)


def drive(
    task_path: os.PathLike | str,
    params: dict[str, Any],
    progress: Callable[[float, str], None],
    poll_s: float = 1.0,
) -> dict[str, Any]:
    """Body of the study task: submit runs as the study's slots free until every cell has ended. `progress`
    raises (TaskCancelled) when the study is cancelled; its active runs are cancelled then."""
    task = TaskDir(task_path)
    spec = StudySpec(**params["spec"]).validate()
    base = TrainConfig.from_dict(params["base"])
    runs_root = task.path.parent.parent
    grid = cells(spec)
    mapping: dict[str, str] = dict(read_json(task.path / RUNS_FILE, {}) or {})
    searches = _kept_searches(dict(read_json(task.path / SEARCHES_FILE, {}) or {}))
    resumed: set[str] = set()  # cells resumed by this driver: a run that fails again is left failed
    try:
        while True:
            states = {}
            for key, path in mapping.items():
                run = RunDir(path)
                states[key] = liveness.refresh_status(run).state if run.exists() else "missing"
            active = sum(s in liveness.ACTIVE_STATES for s in states.values()) + _active_searches(searches)
            done = sum(s == "completed" for s in states.values())
            due = [c["key"] for c in grid if wants_search(spec, c) and states.get(c["key"]) == "completed"]
            due = [k for k in due if k not in searches]
            startable = [
                c
                for c in grid
                if states.get(c["key"], "missing") == "missing"
                or (states[c["key"]] in ("cancelled", "failed") and c["key"] not in resumed)
            ]
            progress(done / len(grid), f"{done} of {len(grid)} runs completed, {active} queued or running")
            if not startable and not due and active == 0:
                break
            for key in due[: max(0, spec.parallel - active)]:
                try:
                    searches[key] = str(_start_search(RunDir(mapping[key]), runs_root, base.device).path)
                except HistoError as exc:  # the queue is full: try again at the next poll
                    progress(done / len(grid), f"waiting to search the label errors of {key}: {exc}"[:200])
                    break
                write_json_atomic(task.path / SEARCHES_FILE, searches)
                active += 1
            for cell in startable[: max(0, spec.parallel - active)]:
                key = cell["key"]
                try:
                    if states.get(key, "missing") == "missing":
                        run = jobs.submit(cell_config(base, spec, cell), runs_root)
                        mapping[key] = str(run.path.resolve())
                        write_json_atomic(task.path / RUNS_FILE, mapping)
                    else:
                        resumed.add(key)
                        jobs.resume(RunDir(mapping[key]))
                except HistoError as exc:  # e.g. the queue is full: try again at the next poll
                    progress(done / len(grid), f"waiting to start {key}: {exc}"[:200])
                    break
            time.sleep(poll_s)
    except BaseException:
        for path in searches.values():
            if refresh_task(TaskDir(path)).state in liveness.ACTIVE_STATES:
                cancel_task(TaskDir(path))
        for path in mapping.values():
            run = RunDir(path)
            try:
                if run.exists() and liveness.refresh_status(run).state in liveness.ACTIVE_STATES:
                    jobs.cancel(run)
            except HistoError:
                pass
        raise
    return study_results(task)


def wants_search(spec: StudySpec, cell: dict[str, Any]) -> bool:
    """--find-errors: the label-error search runs on the noisy runs of the first method (fixed or pair noise,
    whose flips are known), so detection quality is measured once per noise level, seed and labels."""
    return spec.find_errors and cell["noise"] > 0 and spec.noise_mode != "batch" and cell["method"] == spec.methods[0]


def _start_search(run: RunDir, runs_root: Any, device: str) -> Any:
    from histo_core.label_errors import DEFAULT_EPOCHS, DEFAULT_FOLDS

    params = {"run": run.id, "folds": DEFAULT_FOLDS, "epochs": DEFAULT_EPOCHS, "runs_root": str(runs_root)}
    return submit_task("label-errors", params, runs_root, device=device)


def _kept_searches(searches: dict[str, str]) -> dict[str, str]:
    """The searches a resumed driver keeps: those not cancelled or failed (the others are started again)."""
    return {k: p for k, p in searches.items() if refresh_task(TaskDir(p)).state not in ("cancelled", "failed")}


def _active_searches(searches: dict[str, str]) -> int:
    return sum(refresh_task(TaskDir(p)).state in liveness.ACTIVE_STATES for p in searches.values())


# -- results ----------------------------------------------------------------------------------------------------


def _macro_f1(report: dict[str, Any] | None) -> float | None:
    if not report or not report.get("per_class"):
        return None
    return float(np.mean([c["f1"] for c in report["per_class"]]))


def noisy_val_accuracy(run: RunDir, noise: float, noise_mode: str, seed: int) -> float | None:
    """Accuracy of a run's saved validation predictions against validation labels made noisy the way its training
    labels were (the same rate and seed; batch noise counts as symmetric). None without a val split."""
    from histo_core.noise import fixed_noise

    path = run.predictions_path("val")
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        probs, labels = z["probs"], z["labels"].astype(np.int64)
    if noise > 0:
        labels, _ = fixed_noise(labels, noise, probs.shape[1], seed + 7919, "pair" if noise_mode == "pair" else "fixed")
    return float((probs.argmax(1) == labels).mean())


def bootstrap_ci(values: list[float], seed: int = 0) -> tuple[float, float] | None:
    """95% percentile interval of the mean of `values` (resampled with replacement); None for fewer than 2."""
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    v = np.asarray(values, dtype=float)
    means = v[rng.integers(0, len(v), (BOOTSTRAP, len(v)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def study_results(task: Any) -> dict[str, Any]:
    """Every run (folder, method, noise, seed, state, test metrics, noisy-validation accuracy), the summary per
    architecture x method x noise (mean, sd, bootstrap CI over seeds) and the recommendation per noise level."""
    params = task.task().get("params") or {}
    spec = StudySpec(**params["spec"])
    base_corrections = (params.get("base") or {}).get("corrections")
    mapping = study_runs(task)
    rows = []
    for cell in cells(spec):
        run = mapping.get(cell["key"])
        row: dict[str, Any] = {**{k: cell[k] for k in ("arch", "method", "noise", "seed")}}
        row.update(
            noise_mode=spec.noise_mode,
            labels=AS_LABELLED if cell.get("as_labelled") or not base_corrections else WITH_CORRECTIONS,
            run=None,
            run_dir=None,
            state="not started",
            test=None,
            val_noisy_acc=None,
            per_class=None,
            detection=None,
        )
        if run is not None and run.exists():
            row.update(run=run.id, run_dir=str(run.path), state=liveness.refresh_status(run).state)
            res = run.results() if row["state"] == "completed" else None
            if res and res.get("test"):
                t = res["test"]
                row["test"] = {"accuracy": t["accuracy"], "auc": t["auc"], "macro_f1": _macro_f1(t)}
                row["per_class"] = {c["class"]: c["recall"] for c in t.get("per_class") or []}
            row["detection"] = detection_quality(run)
            if row["state"] == "completed":
                row["val_noisy_acc"] = noisy_val_accuracy(run, cell["noise"], spec.noise_mode, cell["seed"])
        rows.append(row)
    status = refresh_task(task)
    return {
        "study": task.id,
        "state": status.state,
        "spec": asdict(spec),
        "runs": rows,
        "summary": summarise(rows),
        "per_class": per_class_summary(rows),
        "detection": detection_summary(rows),
        "recommended": recommend(rows),
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per architecture x method x noise level over the completed seeds."""
    groups: dict[tuple[str, str, float, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["test"] is not None:
            groups.setdefault((r["arch"], r["method"], r["noise"], r.get("labels", AS_LABELLED)), []).append(r)
    out = []
    for (arch, method, noise, labels), rs in groups.items():
        d: dict[str, Any] = {"arch": arch, "method": method, "noise": noise, "labels": labels, "seeds": len(rs)}
        for metric in ("accuracy", "auc", "macro_f1"):
            vals = [r["test"][metric] for r in rs if r["test"].get(metric) is not None]
            d[f"{metric}_mean"] = float(np.mean(vals)) if vals else None
            d[f"{metric}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        ci = bootstrap_ci([r["test"]["accuracy"] for r in rs])
        d["accuracy_ci_low"], d["accuracy_ci_high"] = ci if ci else (None, None)
        vals = [r["val_noisy_acc"] for r in rs if r["val_noisy_acc"] is not None]
        d["val_noisy_acc_mean"] = float(np.mean(vals)) if vals else None
        out.append(d)
    return sorted(out, key=lambda d: (d["arch"], d["method"], d["labels"], d["noise"]))


def recommend(rows: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Per noise level ("0.2"): the architecture + method with the best mean noisy-validation accuracy, the
    runner-up, and `certainty`: the fraction of paired bootstrap resamples of the seeds in which it stays best."""
    out: dict[str, Any] = {}
    for noise in sorted({r["noise"] for r in rows}):
        table: dict[tuple[str, str, str], dict[int, float]] = {}
        for r in rows:
            if r["noise"] == noise and r["val_noisy_acc"] is not None:
                table.setdefault((r["arch"], r["method"], r.get("labels", AS_LABELLED)), {})[r["seed"]] = r[
                    "val_noisy_acc"
                ]
        if not table:
            out[f"{noise:g}"] = None
            continue
        seeds = sorted(set.intersection(*(set(v) for v in table.values())))
        names = sorted(table)
        if not seeds:
            out[f"{noise:g}"] = None
            continue
        m = np.array([[table[n][s] for s in seeds] for n in names])  # (candidates, seeds)
        means = m.mean(axis=1)
        order = np.argsort(-means, kind="stable")
        best = int(order[0])
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, len(seeds), (BOOTSTRAP, len(seeds)))
        wins = (m[:, picks].mean(axis=2).argmax(axis=0) == best).mean()
        runner = names[int(order[1])] if len(names) > 1 else None
        out[f"{noise:g}"] = {
            "arch": names[best][0],
            "method": names[best][1],
            "labels": names[best][2],
            "val_noisy_acc": float(means[best]),
            "seeds": len(seeds),
            "runner_up": None
            if runner is None
            else {"arch": runner[0], "method": runner[1], "labels": runner[2], "val_noisy_acc": float(means[order[1]])},
            "certainty": float(wins) if len(names) > 1 else 1.0,
            "chosen_on": "validation split with labels as noisy as the training labels (never the test split)",
        }
    return out
