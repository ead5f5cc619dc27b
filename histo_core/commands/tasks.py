"""`python -m histo_core tasks list|cancel`: the background tasks (every process kind of histo_core.kinds but the
training run: LR finder, time estimate, label errors, evaluations, feature maps, slides, studies). `tasks run DIR`
is what such a task's process executes."""

from __future__ import annotations

import argparse
from pathlib import Path

from histo_core import task_folders, tasks
from histo_core.cli import emit


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tasks",
        help="list or cancel the background tasks started from pages",
        description="Background tasks started from pages (under <runs dir>/.tasks).",
    )
    sub = p.add_subparsers(dest="tasks_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", help="runs root (default: $HISTO_RUNS_DIR, else ./runs)")
    q = sub.add_parser("list", help="one line per task, newest first", parents=[common])
    q.add_argument("--json", action="store_true", help="print a JSON list")
    q.set_defaults(func=cmd_list)
    q = sub.add_parser("cancel", help="stop a queued or running task", parents=[common])
    q.add_argument("task", help="task id (as `tasks list` shows it)")
    q.set_defaults(func=cmd_cancel)
    q = sub.add_parser("run", help=argparse.SUPPRESS)
    q.add_argument("dir")
    q.set_defaults(func=cmd_run)


def cmd_list(args: argparse.Namespace) -> int:
    rows = [task_folders.task_summary(t) for t in task_folders.list_tasks(args.runs_dir)]
    lines = [
        f"{r['id']}  {r['kind']:<12} {r['state']:<9} {r['progress']:.0%}  {r['error'] or r['message'] or ''}"
        + (f"  by {r['started_by']}" if r["started_by"] else "")
        for r in rows
    ]
    emit(args, rows, "\n".join(lines) if lines else "no tasks")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    task = task_folders.task_by_id(args.task, args.runs_dir)
    task_folders.cancel_task(task)
    print(f"{task.id}: cancel requested")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return tasks.run_task(task_folders.TaskDir(Path(args.dir)))
