"""`train`, `evaluate` and `lr-find` commands.

    python -m histo_core train --dataset pathmnist --arch resnet18 --epochs 5 [--json]
    python -m histo_core train --run-dir runs/<id> [--resume]      # how the app starts background runs
    torchrun --nproc_per_node=2 -m histo_core train --dataset ...   # DistributedDataParallel
    python -m histo_core evaluate runs/<id> --dataset other.npz [--split test] [--json]
    python -m histo_core evaluate MODEL --dataset FOLDER --split all --class-map 01_TUMOR=TUM,02_STROMA=STR
    python -m histo_core lr-find --dataset pathmnist --arch cnn3 [--json]

The option flags are made from the one table of training options (`histo_core.train_options`: flag, type,
help, choices from the registries), the table the Train page's form is made from too, so the CLI, the page and
the config cannot drift apart. Values left out come from
`training.default_config(dataset, device)`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any

from histo_core.classnames import parse_class_map
from histo_core.config import ELSEWHERE, Augment, TrainConfig, canonical_mode
from histo_core.errors import ConfigError, HistoError
from histo_core.runs import RunDir
from histo_core.slots import max_concurrent
from histo_core.train_options import TABLE, ignored

_AUG_FIELDS = [f.name for f in fields(Augment)]
_CONFIG_FIELDS = [f for f in fields(TrainConfig) if f.name != "augment"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_options(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One flag per option of the table (histo_core.train_options), under its group; booleans get --x/--no-x,
    choice options show their registry's names. Unset flags stay absent. `exclude`: fields the command sets
    itself (a study's grid)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in TABLE:
        if opt.name in exclude:
            continue
        if opt.group not in groups:
            section = "dataset and run" if opt.group == ELSEWHERE else (opt.group or "model and labels").lower()
            first = "values left out: the defaults for the dataset and device" if not groups else None
            groups[opt.group] = parser.add_argument_group(f"training options: {section}", first)
        group, help_text = groups[opt.group], opt.help_text()
        if opt.kind is bool:
            group.add_argument(
                opt.flag,
                dest=opt.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            group.add_argument(
                opt.flag,
                dest=opt.name,
                type=opt.kind,
                default=argparse.SUPPRESS,
                metavar="{" + ",".join(opt.choices()) + "}" if opt.choices else opt.name.upper(),
                help=help_text,
            )


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in _CONFIG_FIELDS} | set(_AUG_FIELDS)
    return {k: v for k, v in vars(args).items() if k in names}


def config_from_args(args: argparse.Namespace, note_ignored: bool = True) -> TrainConfig:
    """default_config(dataset, device) with every given flag applied, validated; with `note_ignored`, a note on
    stderr for each given flag that another option makes irrelevant (`--sce-alpha` with `--loss ce`)."""
    from histo_core.training import default_config

    opts = given_options(args)
    if "dataset" not in opts:
        raise ConfigError("give --dataset (a registered name such as 'synthetic' or 'pathmnist', or a path)")
    cfg = default_config(opts["dataset"], opts.get("device", "auto"))
    if "mode" in opts:
        opts["mode"] = canonical_mode(opts["mode"])  # the old names finetune / fine_tune still work
    if opts.get("corrections"):  # the run's process starts elsewhere: the file by its absolute path
        import os

        opts["corrections"] = os.path.abspath(os.path.expanduser(opts["corrections"]))
    for k, v in opts.items():
        setattr(cfg.augment if k in _AUG_FIELDS else cfg, k, v)
    cfg.validate()
    for opt in ignored(opts, cfg) if note_ignored else ():  # the page greys such an option out
        print(f"note: {opt.flag} has no effect with these settings ({opt.label}): ignored", file=sys.stderr)
    return cfg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (foreground, or execute a prepared run with --run-dir)",
        description="Train a tile classifier. Progress goes to stderr; --json prints the result.",
    )
    add_config_options(p)
    p.add_argument("--run-dir", help="execute this already-prepared run directory (options come from its config.json)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --run-dir: continue from its last.pt (with a new --batch-size after running out of GPU memory)",
    )
    p.add_argument("--runs-dir", help="where new run directories go (default $HISTO_RUNS_DIR or ./runs)")
    p.add_argument("--json", action="store_true", help="print one JSON document with the results on stdout")
    p.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="evaluate a model on a labelled dataset (saved with the run)",
        description="Evaluate a model (run id or directory, weights .pt file, export name) on a "
        "labelled dataset. Classes are matched by name, by NCT abbreviation (ADI..TUM = "
        "PathMNIST's names) or by --class-map; classes with no counterpart are reported "
        "apart. A run's evaluation is saved in <run>/evaluations/<name>.json.",
    )
    e.add_argument("run", metavar="MODEL", help="run directory or id, weights .pt file, or export name in weights/")
    e.add_argument(
        "--dataset",
        help="dataset to evaluate on: registered name, npz, CSV manifest or folder of class "
        "folders (default: the run's own)",
    )
    e.add_argument(
        "--split",
        default="test",
        help="split to evaluate: train, val, test or all (every tile; for a "
        "folder without split folders) (default test)",
    )
    e.add_argument(
        "--class-map",
        default="",
        help="DATASET_CLASS=MODEL_CLASS pairs, comma-separated, e.g. "
        "01_TUMOR=TUM,02_STROMA=STR (model classes by name, abbreviation "
        "or index; CLASS=- : no counterpart)",
    )
    e.add_argument("--name", help="name of the saved evaluation (default <dataset>-<split>)")
    e.add_argument("--no-save", action="store_true", help="do not save the evaluation with the run")
    e.add_argument(
        "--save-to",
        metavar="DIR",
        help="folder to save the evaluation in (default: the run's evaluations/; a weights model's is not saved)",
    )
    e.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip/rotation test-time augmentation (default: as the run was configured; off for files)",
    )
    e.add_argument("--runs-dir", help="where run ids are looked up")
    e.add_argument("--json", action="store_true", help="print the full report as JSON")
    e.set_defaults(func=cmd_evaluate)

    lf = sub.add_parser("lr-find", help="learning-rate range test", description="Learning-rate range test.")
    add_config_options(lf)
    lf.add_argument("--min-lr", type=float, default=1e-6, help="first learning rate (default 1e-6)")
    lf.add_argument("--max-lr", type=float, default=1.0, help="last learning rate (default 1)")
    lf.add_argument("--steps", type=int, default=100, help="number of batches (default 100)")
    lf.add_argument("--json", action="store_true", help="print lrs, losses and the suggestion as JSON")
    lf.set_defaults(func=cmd_lr_find)


# -- train ------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from histo_core import training as T
    from histo_core.cli import emit

    rank, world, _ = T.dist_env()
    if args.run_dir:
        given = given_options(args)
        resize = given.pop("batch_size", None) if args.resume else None  # a smaller batch after running out of memory
        extra = sorted(given)
        if extra:
            raise ConfigError(
                f"--run-dir executes a prepared run with its own config.json; drop {', '.join(_flag(x) for x in extra)}"
                + (" (with --resume only --batch-size may change)" if args.resume else "")
            )
        run = RunDir(args.run_dir)
        if not run.exists():
            raise HistoError(
                f"{args.run_dir}: not a run directory (no config.json); prepare one with the Train page "
                "or run `train` with options"
            )
        if resize is not None:  # every rank writes the same config.json (atomically), before any reads it
            from histo_core.training.run import change_batch_size

            change_batch_size(run, resize)
        if world > 1:
            T.init_distributed(run.config().get("device", "auto"))
    else:
        if args.resume:
            raise ConfigError("--resume needs --run-dir DIR (the run to continue)")
        config = config_from_args(args)
        if world > 1:
            run = _prepare_distributed(config, args.runs_dir)
        else:
            from histo_core.runtime import resolve_device

            max_concurrent(
                resolve_device(config.device)
            )  # a bad HISTO_MAX_RUNS_<DEVICE> is refused before a run exists
            run = T.prepare_run(config, args.runs_dir)
            print(f"run {run.path}", file=sys.stderr, flush=True)
    result = T.run_training(run, resume=args.resume)
    if world > 1:
        T.shutdown_distributed()
    if rank == 0:
        payload = {
            "run_dir": str(run.path),
            "state": result["state"],
            "error": result.get("error"),
            "test": result.get("test"),
            "val": result.get("val"),
            "best_epoch": result.get("best_epoch"),
            "epochs_run": result.get("epochs_run"),
            "train_seconds": result.get("train_seconds"),
        }
        test = result.get("test") or {}
        text = f"{result['state']}: {run.path}"
        if test:
            text += f"\ntest accuracy {test['accuracy']:.4f}  auc {_fmt(test['auc'])}  loss {test['loss']:.4f}  n {test['n']}"
        if result["state"] == "failed":
            text += f"\nerror: {result.get('error')}"
        emit(args, payload, text)
    return {"completed": 0, "cancelled": 130}.get(result["state"], 1)


def _prepare_distributed(config: TrainConfig, runs_dir: str | None):
    """Rank 0 checks the config and creates the run; every rank learns its path (or the error)."""
    from histo_core import training as T

    rank, world = T.init_distributed(config.device)
    msg: dict[str, Any] = {}
    if rank == 0:
        try:
            run = T.prepare_run(config, runs_dir)
            msg = {"path": str(run.path)}
            print(f"run {run.path} ({world} processes)", file=sys.stderr, flush=True)
        except HistoError as exc:
            msg = {"error": str(exc)}
    msg = T.broadcast(msg, world)
    if "error" in msg:
        raise HistoError(msg["error"])
    return RunDir(msg["path"])


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


# -- evaluate ----------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from histo_core.cli import emit
    from histo_core.evaluation import evaluate, format_matching

    model = args.run
    if args.runs_dir and RunDir(Path(args.runs_dir) / model).exists():
        model = str(Path(args.runs_dir) / model)
    report = evaluate(
        model,
        args.dataset,
        args.split,
        class_map=parse_class_map(args.class_map),
        tta=args.tta,
        name=args.name,
        save=not args.no_save,
        save_to=args.save_to,
    )
    text = format_report(report)
    if report.get("class_matching"):
        text += "\n\nclasses (dataset -> model)\n" + "\n".join(format_matching(report))
    text += (
        f"\n\nsaved as evaluation {report['name']!r}: {report['saved_to']}"
        if report.get("saved_to")
        else "\n\nnot saved (" + ("--no-save" if args.no_save else "the model is not a run; use --save-to DIR") + ")"
    )
    emit(args, report, text)
    return 0


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"{r.get('dataset', '')} [{r.get('split', '')}]  n {r['n']}  accuracy {_fmt(r['accuracy'])}  "
        f"auc {_fmt(r['auc'])} ({r['auc_kind']})  loss {_fmt(r['loss'])}  ece {_fmt(r['ece'])}",
        "",
    ]
    width = max(len(c["class"]) for c in r["per_class"])
    lines.append(f"{'class':<{width}}  precision  recall     f1  support    auc")
    for c in r["per_class"]:
        lines.append(
            f"{c['class']:<{width}}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:5.3f}  "
            f"{c['support']:7d}  {'-' if c['auc'] is None else format(c['auc'], '.3f'):>5}"
        )
    lines += ["", "confusion (rows: true, columns: predicted)"]
    k = len(r["confusion"])
    lines.append(" " * (width + 2) + " ".join(f"{i:>5}" for i in range(k)))
    for i, row in enumerate(r["confusion"]):
        lines.append(f"{r['per_class'][i]['class']:<{width}}  " + " ".join(f"{v:>5}" for v in row))
    return "\n".join(lines)


# -- lr-find -----------------------------------------------------------------------------------------
def cmd_lr_find(args: argparse.Namespace) -> int:
    from histo_core.cli import emit
    from histo_core.lr_find import lr_find

    config = config_from_args(args)
    res = lr_find(config, min_lr=args.min_lr, max_lr=args.max_lr, num_steps=args.steps)
    lines = [
        f"{lr:10.2e}  {loss:.4f}"
        for lr, loss in zip(
            res["lrs"][:: max(1, len(res["lrs"]) // 20)], res["losses"][:: max(1, len(res["lrs"]) // 20)]
        )
    ]
    text = "lr          smoothed loss\n" + "\n".join(lines) + f"\nsuggested lr: {_fmt_lr(res['suggested_lr'])}"
    emit(args, res, text)
    return 0


def _fmt_lr(v) -> str:
    return "-" if v is None else f"{v:.2e}"
