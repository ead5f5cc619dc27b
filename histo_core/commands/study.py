"""`python -m histo_core study`: a grid of runs (architectures x noise levels x methods x seeds) as one study.

    python -m histo_core study --dataset SPEC [--arch A,...] --noise 0,0.2,0.4 --noise-mode fixed \\
        --methods ce,gce,... --seeds 3 [--runs-dir D] [--detach] [--json]
    python -m histo_core study --dataset SPEC ... --corrections FILE --compare-corrections --find-errors
    python -m histo_core study --show ID | --cancel ID | --resume ID | --delete ID  [--runs-dir D] [--json]
    python -m histo_core study --list

Starting a study starts its driver (a background task, histo_core.study) and, unless --detach, waits for it and
prints the results; Ctrl-C stops waiting, not the study. Every other training option (--epochs, --lr, ...) applies
to every run of the study.
"""

from __future__ import annotations

import argparse
import sys
import time

from histo_core import liveness
from histo_core import study as S
from histo_core.cli import emit
from histo_core.commands.train import add_config_options, config_from_args
from histo_core.config import NOISE_METHODS
from histo_core.errors import ConfigError

GRID_FIELDS = ("arch", "noise", "noise_mode", "seed", "loss", "mixup", "train_splits", "name", "early_stopping")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="a grid of runs over noise levels, methods, architectures and seeds, started and managed as one",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "--arch", dest="grid_arch", help="architectures, comma-separated (default: the dataset's default architecture)"
    )
    p.add_argument(
        "--noise", dest="grid_noise", default="0,0.2,0.4", help="noise levels, comma-separated (default 0,0.2,0.4)"
    )
    p.add_argument("--noise-mode", dest="grid_noise_mode", default="fixed", help="fixed (default), pair or batch")
    p.add_argument(
        "--methods", default=",".join(NOISE_METHODS), help=f"comma-separated (default all: {','.join(NOISE_METHODS)})"
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for every cell (default 3)")
    p.add_argument("--parallel", type=int, default=1, help="runs of the study queued or running at once (default 1)")
    p.add_argument(
        "--compare-corrections",
        action="store_true",
        help="with --corrections FILE: run every cell twice, as labelled and with the corrections (the view "
        "compares them)",
    )
    p.add_argument(
        "--find-errors",
        action="store_true",
        help="search the label errors of each noisy run of the first method and measure how well the search finds "
        "the injected flips (precision, recall, average precision)",
    )
    p.add_argument("--runs-dir", help="runs root (default: $HISTO_RUNS_DIR, else ./runs)")
    p.add_argument("--detach", action="store_true", help="start the driver and return at once")
    p.add_argument("--json", action="store_true", help="print the results as one JSON document")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--show", metavar="ID", help="the results so far of a study")
    g.add_argument("--cancel", metavar="ID", help="stop a study: its driver and its queued or running runs")
    g.add_argument("--resume", metavar="ID", help="start a cancelled or failed study's driver again")
    g.add_argument("--delete", metavar="ID", help="delete a study and all its runs")
    g.add_argument("--list", action="store_true", help="the studies of the runs root, newest first")
    add_config_options(p, exclude=GRID_FIELDS)
    p.set_defaults(func=cmd_study)


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes numbers separated by commas, e.g. 0,0.2,0.4; got {text!r}") from None


def _names(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def cmd_study(args: argparse.Namespace) -> int:
    from histo_core.task_folders import task_summary

    if args.list:
        rows = [task_summary(t) for t in S.list_studies(args.runs_dir)]
        text = "\n".join(f"{r['id']}  {r['state']:<9} {r['progress']:.0%}  {r['error'] or r['message']}" for r in rows)
        emit(args, rows, text or "no studies")
        return 0
    for action in ("show", "cancel", "resume", "delete"):
        sid = getattr(args, action)
        if sid:
            task = S.study_by_id(sid, args.runs_dir)
            if action == "show":
                return _print(args, S.study_results(task))
            {"cancel": S.cancel_study, "resume": S.resume_study, "delete": S.delete_study}[action](task)
            print(f"{task.id}: {action} " + ("requested" if action == "cancel" else "done"))
            return 0
    base = config_from_args(args, note_ignored=False)  # a method of the grid may use what the base loss does not
    spec = S.StudySpec(
        archs=_names(args.grid_arch) or [base.arch],
        noises=_floats(args.grid_noise, "--noise"),
        methods=_names(args.methods),
        noise_mode=args.grid_noise_mode,
        seeds=args.seeds,
        parallel=args.parallel,
        compare_corrections=args.compare_corrections,
        find_errors=args.find_errors,
    )
    task = S.start_study(spec, base, args.runs_dir)
    note = spec.weights_note(base)
    print(
        f"{task.id}: study of {spec.size()} runs started"
        + (
            f", about the training time of {spec.time_in_runs(base):.3g} runs of these settings ({note})"
            if note
            else ""
        ),
        file=sys.stderr,
    )
    if args.detach:
        emit(args, {"study": task.id, "runs": spec.size()}, task.id)
        return 0
    from histo_core.task_folders import refresh_task

    last = ""
    while (status := refresh_task(task)).state in liveness.ACTIVE_STATES:
        if status.phase and status.phase != last:
            print(f"{task.id}: {status.phase}", file=sys.stderr)
            last = status.phase
        time.sleep(1.0)
    results = S.study_results(task)
    _print(args, results)
    return 0 if status.state == "completed" else 1


def _print(args: argparse.Namespace, results: dict) -> int:
    lines = [f"study {results['study']}: {results['state']}"]
    for r in results["summary"]:
        sd = r["accuracy_sd"]
        lines.append(
            f"  {r['arch']:<10} {r['method']:<10} noise {r['noise']:<4g} {r['labels']:<16} test acc {r['accuracy_mean']:.4f}"
            + (f" ± {sd:.4f}" if sd is not None else "")
            + f" ({r['seeds']} seeds)"
        )
    for d in results["detection"]:
        lines.append(
            f"  label-error search, {d['method']} at noise {d['noise']:g} ({d['labels']}): precision "
            f"{_fmt(d['precision'])}, recall {_fmt(d['recall'])}, average precision {_fmt(d['average_precision'])}"
        )
    for noise, rec in results["recommended"].items():
        lines.append(
            f"  recommended at noise {noise}: "
            + (
                "none (no finished run with a validation split)"
                if rec is None
                else f"{rec['method']} ({rec['arch']}), noisy-val acc {rec['val_noisy_acc']:.4f}, certainty {rec['certainty']:.0%}"
            )
        )
    emit(args, results, "\n".join(lines))
    return 0


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
