"""`python -m histo_core runs list|show|cancel|resume|delete|export`: manage training runs headlessly."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from histo_core import jobs, liveness, summaries
from histo_core.cli import emit
from histo_core.errors import HistoError
from histo_core.runs import UNREADABLE, read_only_note, run_by_id


def register(subparsers: argparse._SubParsersAction) -> None:
    runs = subparsers.add_parser(
        "runs",
        help="list, inspect, cancel, resume, delete and export training runs",
        description="Manage training runs (directories under $HISTO_RUNS_DIR or ./runs).",
    )
    sub = runs.add_subparsers(dest="runs_command", required=True)  # parser class inherited: one-line errors

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", help="runs root (default: $HISTO_RUNS_DIR, else ./runs)")

    p = sub.add_parser("list", help="one line per run, newest first", parents=[common])
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="status, progress, metrics and test results of one run", parents=[common])
    p.add_argument("run", help="run id (as `runs list` shows it)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("cancel", help="stop a queued or running run (it saves last.pt)", parents=[common])
    p.add_argument("run", help="run id (as `runs list` shows it)")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser(
        "resume", help="continue a cancelled or failed run in the background from last.pt", parents=[common]
    )
    p.add_argument("run", help="run id (as `runs list` shows it)")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("delete", help="remove a run directory (not while it runs)", parents=[common])
    p.add_argument("run", help="run id (as `runs list` shows it)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser(
        "export", help="save a completed run's best model to weights/<NAME>.pt with a model card", parents=[common]
    )
    p.add_argument("run", help="run id (as `runs list` shows it)")
    p.add_argument("--name", required=True, help="export name: letters, digits, '-', '_', '.'")
    p.add_argument("--weights-dir", help="destination (default: $HISTO_WEIGHTS_DIR, else ./weights)")
    p.add_argument("--overwrite", action="store_true", help="replace an export with the same name")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_export)


def _fmt(value: Any, spec: str = ".3f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def summary_line(s: dict[str, Any]) -> str:
    if s["state"] == UNREADABLE:  # its files do not say what it is: the file and the reason instead
        return f"{s['id']}  {UNREADABLE}  {s['error']}"
    noise = f"noise {s['noise']:.2f} {s['noise_mode']}" if s["noise"] else "clean"
    dataset = s["dataset"] + (" [SYNTHETIC]" if s["synthetic"] and "SYNTHETIC" not in s["dataset"] else "")
    return (
        f"{s['id']}  {s['state']:<9} {s['epoch']}/{s['epochs']} ep  {s['arch']:<11} {dataset}  {noise}  "
        f"best {s['monitor']} {_fmt(s['best_val'])}  test acc {_fmt(s['test_accuracy'])} "
        f"auc {_fmt(s['test_auc'])}  {_duration(s['duration_s'])}"
    )


def cmd_list(args: argparse.Namespace) -> int:
    from histo_core import paths

    note = read_only_note(args.runs_dir)
    if note:
        print(f"note: {note}", file=sys.stderr)
    rows = summaries.summaries(args.runs_dir)

    text = "\n".join(summary_line(r) for r in rows) if rows else f"no runs in {paths.runs_dir(args.runs_dir)}"
    emit(args, rows, text)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    run = run_by_id(args.run, args.runs_dir)
    status = liveness.refresh_status(run)
    summary = summaries.run_summary(run, status)
    results = run.results() or {}
    payload = {
        "summary": summary,
        "status": status.to_dict(),
        "config": run.config(),
        "dataset": run.dataset(),
        "metrics": run.metrics(),
        "results": results,
    }
    lines = [summary_line(summary), f"directory: {run.path}"]
    if status.state in liveness.ACTIVE_STATES:
        lines.append(
            f"progress: {status.progress:.0%}  phase {status.phase or '-'}  "
            f"{_fmt(status.images_per_s, '.0f')} img/s  ETA {_duration(status.eta_s)}"
        )
    if status.state == "queued":
        lines.append("waiting for a free device slot (see HISTO_MAX_RUNS_<DEVICE>)")
    if status.error:
        lines.append(f"error: {status.error}")
    for row in run.metrics():
        lines.append(
            f"  epoch {row.get('epoch')}: train loss {_fmt(row.get('train_loss'))} acc "
            f"{_fmt(row.get('train_acc'))} | val loss {_fmt(row.get('val_loss'))} acc "
            f"{_fmt(row.get('val_acc'))} auc {_fmt(row.get('val_auc'))}"
        )
    test = results.get("test")
    if test:
        lines.append(
            f"test: n {test.get('n')}  accuracy {_fmt(test.get('accuracy'))}  AUC {_fmt(test.get('auc'))}  "
            f"ECE {_fmt(test.get('ece'))}  (best epoch {results.get('best_epoch')})"
        )
        for pc in test.get("per_class") or []:
            lines.append(
                f"  {pc.get('class')}: precision {_fmt(pc.get('precision'))} recall "
                f"{_fmt(pc.get('recall'))} f1 {_fmt(pc.get('f1'))} support {pc.get('support')}"
            )
    emit(args, payload, "\n".join(lines))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    run = run_by_id(args.run, args.runs_dir)
    status = jobs.cancel(run)
    if status.state == "cancelled":
        print(f"{run.id}: cancelled")
    else:
        print(f"{run.id}: cancel requested; the trainer stops after the current batch and saves last.pt")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    run = run_by_id(args.run, args.runs_dir)
    print(jobs.resume(run))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    run = run_by_id(args.run, args.runs_dir)
    if not args.yes:
        if not sys.stdin.isatty():
            raise HistoError(f"{run.id}: refusing to delete without confirmation; add --yes")
        answer = input(f"delete {run.path}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("not deleted")
            return 1
    jobs.delete(run)
    print(f"deleted {run.path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from histo_core.export import export_run

    run = run_by_id(args.run, args.runs_dir)
    started = time.time()
    path = export_run(run, args.name, args.weights_dir, overwrite=args.overwrite)
    emit(
        args,
        {"path": str(path), "card": str(path.with_suffix(".json")), "run_id": run.id},
        f"exported {run.id} to {path} (model card {path.with_suffix('.json').name}, {time.time() - started:.1f} s)",
    )
    return 0
