"""The read-only operator commands: `syncd status`, `syncd explain NAME`, `syncd history`.

`syncd.cli.build_parser` registers them through `add_inspect_commands`. Each command reads
the stores (status and explain also compute the dry-run plan with `reconcile_once`, so they
never disagree with `syncd plan`) and hands plain values to `syncd.inspect` to format.
They write nothing anywhere.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from syncd.db_store import DbStore
from syncd.errors import NotFound
from syncd.inspect import (
    Explanation,
    declared_at,
    execution_json,
    explain_text,
    history_text,
    parse_since,
    status_json,
    status_rows,
    status_text,
)
from syncd.keys import schedule_id
from syncd.plans import Plan, TaskPlan
from syncd.reconcile import Outcome, Stores, SyncOptions, open_stores, reconcile_once

# Helpers of syncd.cli are imported inside the functions: syncd.cli imports this module
# from build_parser, so a top-level import would be a cycle (as in syncd.watch).

EXPLAIN_EXECUTIONS = 10
DEFAULT_HISTORY_LIMIT = 50


def cmd_status(args: argparse.Namespace) -> int:
    from syncd.cli import _print_json, settings_from

    name, root = _name_and_dir(args)
    now = datetime.now(UTC)
    with open_stores(settings_from(args)) as stores:
        outcome = _dry_run(root, stores, now)
        tasks = _selected(outcome.plan, name, root)
        statuses = stores.redis.read_statuses()
        last_runs = stores.db.last_executions(
            [t.config_id for t in tasks if t.config_id is not None]
        )
    _warn_problems(outcome)
    rows = status_rows(tasks, statuses, last_runs, now)
    if args.format == "json":
        _print_json(status_json(rows))
    else:
        print(status_text(rows), end="")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from syncd.cli import settings_from

    root = Path(args.dir)
    now = datetime.now(UTC)
    with open_stores(settings_from(args)) as stores:
        outcome = _dry_run(root, stores, now)
        (task,) = _selected(outcome.plan, args.name, root)
        view = _explanation(stores, outcome, task, now)
    _warn_problems(outcome)
    print(explain_text(view), end="")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from syncd.cli import _print_json, settings_from

    db = DbStore.from_url(settings_from(args).database_url)  # PostgreSQL only: no Redis needed
    try:
        db.check_schema()
        executions = db.read_executions(args.name, args.failed, args.since, args.limit)
        if not executions and args.name and db.get_row(args.name) is None:
            raise NotFound(f"no task named {args.name!r} in task_configs")
    finally:
        db.close()
    if args.format == "json":
        _print_json([execution_json(e) for e in executions])
    else:
        print(history_text(executions), end="")
    return 0


def _dry_run(root: Path, stores: Stores, now: datetime) -> Outcome:
    from syncd.cli import catalog

    return reconcile_once(root, stores, catalog(), now, options=SyncOptions(dry_run=True))


def _selected(plan: Plan, name: str | None, root: Path) -> list[TaskPlan]:
    """Every planned task, or the one named; NotFound when git and PostgreSQL both lack it."""
    if name is None:
        return list(plan.tasks)
    found = [t for t in plan.tasks if t.name == name]
    if not found:
        raise NotFound(f"no task named {name!r} in {root} or among the rows syncd manages")
    return found


def _explanation(stores: Stores, outcome: Outcome, task: TaskPlan, now: datetime) -> Explanation:
    row = stores.db.get_row(task.name)
    sid = schedule_id(row.id) if row else None
    return Explanation(
        task=task,
        declared=declared_at(outcome.loaded, task.name),
        row=row,
        row_times=stores.db.row_times(row.id) if row else None,
        data_key=stores.layout.data_key(sid) if sid else None,
        # One bulk read, as the plan does: it also finds the id in every index list.
        record=stores.redis.read_schedules().get(sid) if sid else None,
        status_key=stores.layout.status_key(row.id) if row else None,
        status=stores.redis.get_status(row.id) if row else None,
        executions=stores.db.read_executions(task.name, False, None, EXPLAIN_EXECUTIONS),
        now=now,
    )


def _warn_problems(outcome: Outcome) -> None:
    errors = len(outcome.loaded.errors)
    if errors:
        print(f"warning: {errors} taskdef error(s); `syncd validate` lists them", file=sys.stderr)
    for error in outcome.plan.errors:
        print(f"warning: {error}", file=sys.stderr)


def _name_and_dir(args: argparse.Namespace) -> tuple[str | None, Path]:
    """`status [NAME] [DIR]`: one argument with a '/' is the directory (no name has one)."""
    from syncd.cli import DEFAULT_DIR

    name, directory = args.name, args.dir
    if directory is None and name is not None and "/" in name:
        name, directory = None, name
    return name, Path(directory or DEFAULT_DIR)


def _since(text: str) -> datetime:
    try:
        return parse_since(text, datetime.now(UTC))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_inspect_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `status`, `explain` and `history` on the CLI's subcommands."""
    from syncd.cli import DEFAULT_DIR, _store_flags

    status = commands.add_parser(
        "status", help="each task's schedule, status, sync state, next fire and last run"
    )
    status.add_argument("name", nargs="?", help="one task (default: all)")
    status.add_argument(
        "dir", nargs="?", help=f"taskdefs directory (default {DEFAULT_DIR}); alone, give it a '/'"
    )
    status.add_argument("--format", choices=("text", "json"), default="text")
    _store_flags(status)
    status.set_defaults(func=cmd_status)

    explain = commands.add_parser(
        "explain", help="one task: taskdef, row, Redis schedule, plan and last executions"
    )
    explain.add_argument("name")
    explain.add_argument("dir", nargs="?", default=DEFAULT_DIR)
    _store_flags(explain)
    explain.set_defaults(func=cmd_explain)

    history = commands.add_parser("history", help="recent executions, newest first")
    history.add_argument("name", nargs="?", help="one task (default: all)")
    history.add_argument("--failed", action="store_true", help="failed attempts only")
    history.add_argument(
        "--since", type=_since, metavar="WHEN", help="30m, 1h, 2d, 1w or an ISO timestamp"
    )
    history.add_argument(
        "--limit", type=_positive, default=DEFAULT_HISTORY_LIMIT, metavar="N",
        help=f"at most N executions (default {DEFAULT_HISTORY_LIMIT})",
    )  # fmt: skip
    history.add_argument("--format", choices=("text", "json"), default="text")
    _store_flags(history)
    history.set_defaults(func=cmd_history)
