"""Which trained models there are: completed runs, exports in weights/, and the models shipped with the project,
each described from its files without loading its weights (the Classify and Feature map pickers), and the
checkpoint file a model's name stands for (`resolve_model_path`: a run directory, a run id, a .pt file or an
export name; `model_cache.load_model` loads it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from histo_core import paths
from histo_core.errors import HistoError, ModelFileError
from histo_core.runs import RunDir, list_runs, resolve_run


@dataclass
class ModelEntry:
    """One model a user can pick: a completed run or an export, described without loading its weights."""

    kind: str  # "run" | "export" | "shipped" (comes with the project, weights/)
    ref: str  # what load_model() takes
    name: str  # run id or export name
    arch: str
    dataset: str  # dataset title
    synthetic: bool
    classes: list[str]
    input_size: int | None
    test_accuracy: float | None
    test_auc: float | None
    cv_accuracy: float | None = None

    @property
    def accuracy_text(self) -> str:
        """How good it is, in words: test accuracy, else cross-validated accuracy (ready-made models)."""
        if self.test_accuracy is not None:
            return f"test accuracy {self.test_accuracy:.1%}"
        if self.cv_accuracy is not None:
            return f"cross-validated accuracy {self.cv_accuracy:.1%}"
        return "no test metrics"

    @property
    def label(self) -> str:
        acc = self.accuracy_text
        if self.kind == "shipped":
            return (
                f"{self.name} · ready-made model shipped in weights/ · {self.arch} · {self.dataset} · "
                f"{len(self.classes)} classes · {acc}"
            )
        tag = "SYNTHETIC · " if self.synthetic else ""
        size = f"{self.input_size} px" if self.input_size else "? px"
        return f"{tag}{self.name} · {self.kind} · {self.arch} · {self.dataset} · {size} · {len(self.classes)} classes · {acc}"


def list_models(notes: list[str] | None = None) -> list[ModelEntry]:
    """Completed runs with a checkpoint (newest first), then exports in weights/ (by name), then the models
    shipped with the project (weights/ in the repository, when exports are kept elsewhere)."""
    from histo_core.export import list_exports

    entries = []
    try:
        runs = list_runs()
    except HistoError as exc:  # a runs directory that cannot be read: the exports are still offered
        runs = []
        if notes is not None:
            notes.append(str(exc))
    for run in runs:
        if run.status().state != "completed" or not (run.best_ckpt.is_file() or run.last_ckpt.is_file()):
            continue
        cfg, ds = run.config(), run.dataset()
        test = (run.results() or {}).get("test") or {}
        entries.append(
            ModelEntry(
                kind="run",
                ref=str(run.path),
                name=run.id,
                arch=str(cfg.get("arch", "?")),
                dataset=str(ds.get("title") or ds.get("name") or cfg.get("dataset", "?")),
                synthetic=bool(ds.get("synthetic")),
                classes=[str(c) for c in ds.get("classes", [])],
                input_size=cfg.get("size") or ds.get("size"),
                test_accuracy=test.get("accuracy"),
                test_auc=test.get("auc"),
            )
        )
    cards = list_exports(notes=notes)
    if paths.shipped_weights_dir().resolve() != paths.weights_dir().resolve():
        cards += list_exports(paths.shipped_weights_dir(), notes=notes)
    for card in cards:
        ds = card.get("dataset") or {}
        metrics = card.get("metrics") or {}
        entries.append(
            ModelEntry(
                kind="shipped" if card.get("shipped") else "export",
                ref=str(card["path"]),
                name=str(card.get("name", Path(card["path"]).stem)),
                arch=str(card["arch"]),
                dataset=str(ds.get("title") or ds.get("name") or "?"),
                synthetic=bool(ds.get("synthetic")),
                classes=[str(c) for c in card["classes"]],
                input_size=card.get("input_size"),
                test_accuracy=metrics.get("test_accuracy"),
                test_auc=metrics.get("test_auc"),
                cv_accuracy=metrics.get("cv_accuracy"),
            )
        )
    return entries


def resolve_model_path(spec: str | os.PathLike) -> tuple[Path, str, dict]:
    """(checkpoint file, display label, dataset dict) for a run directory, a run id, a .pt file or an export name."""

    text = str(spec).strip()
    if not text:
        raise ModelFileError("no model given: name a run directory, a run id, a weights .pt file or an export name")
    p = Path(text).expanduser()
    if p.is_file():
        run = RunDir(p.parent)
        return p, (run.id if run.exists() else p.stem), (run.dataset() if run.exists() else {})
    found: RunDir | None
    try:
        found = resolve_run(text)
    except HistoError:
        found = None
    if found is not None:
        for ckpt in (found.best_ckpt, found.last_ckpt):
            if ckpt.is_file():
                return ckpt, found.id, found.dataset()
        raise ModelFileError(
            f"{text}: the run has no best.pt or last.pt yet (state: {found.status().state}); "
            "wait until it has finished an epoch"
        )
    if p.suffix == "" and "/" not in text:
        # shipped models first: their names are reserved (an export cannot take one, nor shadow an older one)
        for folder in (paths.shipped_weights_dir(), paths.weights_dir()):
            exported = folder / f"{text}.pt"
            if exported.is_file():
                return exported, text, {}
    if p.suffix == ".pt":
        raise ModelFileError(f"{text}: no such model file")
    raise ModelFileError(
        f"{text}: not a run directory, run id, model file or export name (runs live in {paths.runs_dir()}, "
        f"exports in {paths.weights_dir()})"
    )
