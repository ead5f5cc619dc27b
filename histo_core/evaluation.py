"""Evaluate a model (a run, a weights .pt file or an export name) on a labelled dataset, matching class names.

    report = evaluate("runs/<id>", "../shared/data/tiles/kather2016", split="all",
                      class_map={"01_TUMOR": "TUM", "02_STROMA": "STR"}, name="kather2016")
    report["accuracy"], report["per_class"], report["confusion"], report["unmatched"]
    list_evaluations(run)                    # the named evaluations saved with a run (evaluations/<name>.json)
    list_evaluations("weights/x.pt")         # those of a weights model, saved in <data dir>/evaluations/x/
    start_evaluation(run, "kather2016", "all"); evaluation_jobs(run)   # in a background process (kind "evaluate")

The dataset's classes are matched to the model's by name, by NCT abbreviation (ADI..TUM = PathMNIST's long
names) or by `class_map` (classnames.match_classes). Tiles of a dataset class with no counterpart are not scored:
they are reported apart ("unmatched": what the model called them). `split="all"` evaluates every tile (a folder
without split folders is otherwise divided into train/val/test at random). A run's evaluation is saved in its
directory under `name` and listed by the Runs and Compare pages; a weights model's is saved with `save_to`
(evaluations_folder: `<data dir>/evaluations/<model name>/`, never in weights/) and listed by the Classify page.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from histo_core import paths
from histo_core.classnames import match_classes, short_name
from histo_core.errors import DatasetError, HistoError
from histo_core.fsutil import read_json, write_json_atomic
from histo_core.launch import submit_task
from histo_core.liveness import ACTIVE_STATES
from histo_core.runs import RunDir
from histo_core.task_folders import list_tasks, refresh_task

EVALUATIONS_DIR = "evaluations"  # under the data dir, for a model that is not a run
SPLIT_ORDER = ("train", "val", "test")
_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


def model_run(model_ref: str) -> RunDir | None:
    """The run a model reference belongs to (a run id or directory, or a .pt file inside one), else None."""
    from histo_core.model_catalog import resolve_model_path

    path, _, _ = resolve_model_path(model_ref)
    run = RunDir(path.parent)
    return run if run.config_path.exists() else None


def evaluations_folder(model: RunDir | str) -> Path:
    """Where a model's named evaluations are saved: a run's evaluations/ folder, else (a weights file or an export
    name) `<data dir>/evaluations/<model name>/`."""
    run = model if isinstance(model, RunDir) else model_run(model)
    if run is not None:
        return run.evaluations_dir
    stem = _NAME_RE.sub("-", Path(str(model).rstrip("/")).stem).strip("-.") or "model"
    return paths.data_dir() / EVALUATIONS_DIR / stem


def evaluation_name(name: str | None, dataset_spec: str, split: str) -> str:
    """A file-safe name: the one given, else `<dataset folder or file stem>-<split>`."""
    base = name or f"{Path(str(dataset_spec).rstrip('/')).stem or dataset_spec}-{split}"
    safe = _NAME_RE.sub("-", base).strip("-.")
    if not safe:
        raise HistoError(f"evaluation name {name!r}: use letters, digits, '-', '_' or '.'")
    return safe[:80]


def _tiles_and_labels(ds, split: str):
    from histo_core.datasets.concat import ConcatSplit

    if split == "all":
        parts = [ds.split(s) for s in SPLIT_ORDER if s in ds.splits and len(ds.splits[s])]
        if not parts:
            raise DatasetError(f"{ds.info.name}: has no tiles")
        return parts[0] if len(parts) == 1 else ConcatSplit("all", parts)
    if split not in ds.splits:
        have = [s for s in SPLIT_ORDER if s in ds.splits and len(ds.splits[s])]
        raise DatasetError(
            f"split {split!r}: the dataset has {', '.join(have) or 'no splits'}; "
            "use one of those, or all for every tile"
        )
    if not len(ds.splits[split]):
        raise DatasetError(f"split {split!r} of this dataset is empty; use all to evaluate every tile")
    return ds.split(split)


def evaluate(
    model_ref: str,
    dataset_spec: str | None = None,
    split: str = "test",
    class_map: Mapping[str, str] | None = None,
    tta: bool | None = None,
    name: str | None = None,
    save: bool = True,
    save_to: str | Path | None = None,
) -> dict[str, Any]:
    """The classification report of `model_ref` on `dataset_spec` (default: the run's own dataset), with
    "class_matching", "unmatched", "model", "name" and, when saved (in `save_to`, else with a run), "saved_to"."""
    import torch

    from histo_core import pipeline, runtime
    from histo_core.datasets import open_dataset
    from histo_core.metrics import classification_report
    from histo_core.model_cache import load_model
    from histo_core.predict import InputSpec, predict_tiles

    loaded = load_model(model_ref)
    meta = loaded.meta
    run = model_run(model_ref)
    config = run.config() if run else {}
    spec = dataset_spec or config.get("dataset")
    if not spec:
        raise HistoError(f"{model_ref}: not a run, so it has no dataset of its own; name one with --dataset")
    own = not dataset_spec or dataset_spec == config.get("dataset")
    # another dataset is decoded straight at the model's input size: the one image path, as for uploads
    ds = open_dataset(
        spec,
        size=config.get("size") if own else meta.input_size,
        as_rgb=meta.in_channels == 3,
        data_dir=config.get("data_dir"),
        seed=int(config.get("seed", 0)),
    )
    if ds.info.channels != meta.in_channels:
        raise DatasetError(f"{spec}: tiles have {ds.info.channels} channel(s), the model takes {meta.in_channels}")
    split_data = _tiles_and_labels(ds, split)
    dataset_classes = [str(c) for c in ds.info.classes]
    if _generic_classes(dataset_classes) and len(dataset_classes) <= len(meta.classes) and not class_map:
        matching: list[int | None] = list(range(len(dataset_classes)))  # an npz without class names: by index
    else:
        matching = match_classes(dataset_classes, meta.classes, class_map)
    if all(m is None for m in matching):
        raise HistoError(
            f"{spec}: none of its classes ({', '.join(dataset_classes)}) matches a class of the model "
            f"({', '.join(short_name(c) for c in meta.classes)}); give a class map, e.g. "
            f"{dataset_classes[0]}={short_name(meta.classes[0])}"
        )
    source = pipeline.TileSource(split_data, "cpu")
    use_tta = bool(config.get("tta", meta.tta)) if tta is None else bool(tta)
    torch.set_num_threads(int(config.get("threads") or 0) or runtime.default_threads())
    started = time.time()
    probs = predict_tiles(loaded.model, source, InputSpec.of(meta), tta=use_tta, num_classes=meta.num_classes)
    labels = source.labels.numpy().astype(np.int64)
    lookup = np.array([-1 if m is None else m for m in matching], dtype=np.int64)
    mapped = lookup[labels]
    scored = mapped >= 0
    report = classification_report(probs[scored], mapped[scored], list(meta.classes))
    unmatched = []
    for i, m in enumerate(matching):
        rows = labels == i
        if m is None and rows.any():
            called = np.bincount(probs[rows].argmax(axis=1), minlength=len(meta.classes))
            unmatched.append(
                {
                    "class": dataset_classes[i],
                    "tiles": int(rows.sum()),
                    "predicted_as": {meta.classes[j]: int(n) for j, n in enumerate(called) if n},
                }
            )
    report.update(
        name=evaluation_name(name, spec, split),
        dataset=str(spec),
        dataset_title=ds.info.title,
        split=split,
        model=loaded.label or str(model_ref),
        checkpoint=Path(loaded.source).name,
        tta=use_tta,
        class_map=dict(class_map or {}),
        class_matching={c: (None if m is None else meta.classes[m]) for c, m in zip(dataset_classes, matching)},
        unmatched=unmatched,
        tiles_total=int(len(labels)),
        seconds=round(time.time() - started, 2),
        evaluated_at=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    folder = Path(save_to) if save_to else run.evaluations_dir if run is not None else None
    if save and folder is not None:
        path = folder / f"{report['name']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        report["saved_to"] = str(path)
        write_json_atomic(path, report)
    return report


def list_evaluations(model: RunDir | str) -> list[dict[str, Any]]:
    """The evaluations saved with a run or a weights model (evaluations_folder), newest first (unreadable files
    are skipped)."""
    folder = evaluations_folder(model)
    if not folder.is_dir():
        return []
    # <name>.job.json and <name>.out.json: the job records of evaluations started before they were tasks
    files = [p for p in folder.glob("*.json") if not p.name.endswith((".job.json", ".out.json"))]
    found = [r for r in (read_json(p) for p in files) if isinstance(r, dict) and "accuracy" in r]
    return sorted(found, key=lambda r: r.get("evaluated_at", ""), reverse=True)


def format_matching(report: Mapping[str, Any]) -> list[str]:
    """Lines saying how the dataset's classes were matched and what happened to those without a counterpart."""
    lines = [
        f"{src} -> {short_name(dst) if dst else '(no counterpart: not scored)'}"
        for src, dst in (report.get("class_matching") or {}).items()
    ]
    for u in report.get("unmatched") or []:
        called = ", ".join(f"{short_name(c)} {n}" for c, n in sorted(u["predicted_as"].items(), key=lambda kv: -kv[1]))
        lines.append(f"{u['class']}: {u['tiles']} tile(s) not scored; the model called them {called}")
    return lines


def _generic_classes(classes) -> bool:
    return all(str(c) == f"class {i}" for i, c in enumerate(classes))


def evaluate_run(
    run: RunDir, dataset_spec: str | None = None, split: str = "test", tta: bool | None = None
) -> dict[str, Any]:
    """A run's best.pt (else last.pt) on a split of its own or another dataset, not saved (the trainer's and
    older callers' entry point)."""
    return evaluate(str(run.path), dataset_spec, split, tta=tta, save=False)


# -- in the background -----------------------------------------------------------------------------------------
def start_evaluation(
    model: RunDir | str,
    dataset: str,
    split: str = "test",
    class_map: Mapping[str, str] | None = None,
    name: str | None = None,
) -> str:
    """Start evaluating a run's model (or a weights file / export name) on `dataset` in a background process (the
    `evaluate` process kind); returns the evaluation's name. It is saved in evaluations_folder(model); its
    progress is read back with evaluation_jobs(model). Refused while an evaluation of that name runs."""
    if not str(dataset or "").strip():
        raise HistoError("no dataset given: type a registered name or the path of an npz, a CSV or a folder")
    name = evaluation_name(name, dataset, split)
    folder = evaluations_folder(model)
    params = {
        "model": str(model.path.resolve()) if isinstance(model, RunDir) else str(model),
        "dataset": str(dataset).strip(),
        "split": split,
        "class_map": dict(class_map or {}),
        "name": name,
        "save_to": str(folder.resolve()),
    }
    submit_task("evaluate", params, model.path.parent if isinstance(model, RunDir) else None)
    return name


def evaluation_jobs(model: RunDir | str) -> list[dict[str, Any]]:
    """The background evaluations of a run (or a weights model), newest first: name, dataset, split, class_map,
    started_at, state ("running" while queued or running, else "completed", "failed" or "cancelled") and error."""
    folder = str(evaluations_folder(model).resolve())
    out = []
    for task in list_tasks(model.path.parent if isinstance(model, RunDir) else None, "evaluate"):
        spec = task.task()
        params = spec.get("params") or {}
        if params.get("save_to") != folder:
            continue
        status = refresh_task(task)
        state = "running" if status.state in ACTIVE_STATES else status.state
        job = {k: params.get(k) for k in ("name", "dataset", "split", "class_map")}
        out.append(
            {**job, "task": task.id, "started_at": spec.get("created_at"), "state": state, "error": status.error}
        )
    return out


def task_main(params: dict[str, Any], progress) -> dict[str, Any]:
    """The `evaluate` process kind (histo_core.kinds): params model, dataset, split, class_map, name, save_to."""
    progress(0.0, f"evaluating on {params['dataset']} ({params['split']})")
    return evaluate(
        params["model"],
        params["dataset"],
        params["split"],
        class_map=params.get("class_map") or None,
        name=params["name"],
        save_to=params.get("save_to"),
    )
