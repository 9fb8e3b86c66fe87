"""The read-only operator commands: `syncd status`, `syncd explain NAME`, `syncd history`.

Each reads the stores (status and explain also compute the dry-run plan with
`reconcile_once`, so they never disagree with `syncd plan`) and hands plain values to
`syncd.views.status` to format. They write nothing anywhere.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from schemas.text import visible
from syncd.adapters.postgres import DbStore
from syncd.cli import DEFAULT_DIR
from syncd.cli.common import catalog, print_json
from syncd.cli.options import settings_from
from syncd.core.errors import NotFound, UsageError
from syncd.core.guards import SyncOptions
from syncd.core.keys import schedule_id
from syncd.core.plan import Plan, TaskPlan
from syncd.reconcile import Outcome, Stores, open_stores, reconcile_once
from syncd.views.explain import Explanation, explain_text
from syncd.views.history import execution_json, history_text, parse_since
from syncd.views.status import status_json, status_rows, status_text

EXPLAIN_EXECUTIONS = 10


def cmd_status(args: argparse.Namespace) -> int:
    name, root = _name_and_dir(args)
    now = datetime.now(UTC)
    with open_stores(settings_from(args)) as stores:
        outcome = _dry_run(root, stores, now)
        tasks = _selected(outcome.plan, name, root)
        statuses = stores.redis.read_statuses()
        last_runs = stores.db.executions.last_of(
            [t.config_id for t in tasks if t.config_id is not None]
        )
    _warn_problems(outcome)
    rows = status_rows(tasks, statuses, last_runs, now)
    if args.format == "json":
        print_json(status_json(rows))
    else:
        print(status_text(rows), end="")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
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
    since = _since(args.since) if args.since is not None else None
    db = DbStore.from_url(settings_from(args).database_url)  # PostgreSQL only: no Redis needed
    try:
        db.check_schema()
        executions = db.executions.recent(args.name, args.failed, since, args.limit)
        if not executions and args.name and db.get_row(args.name) is None:
            raise NotFound(f"no task named {args.name!r} in task_configs")
    finally:
        db.close()
    if args.format == "json":
        print_json([execution_json(e) for e in executions])
    else:
        print(history_text(executions), end="")
    return 0


def _dry_run(root: Path, stores: Stores, now: datetime) -> Outcome:
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
        declared=outcome.loaded.declared_at(task.name),
        row=row,
        row_times=stores.db.row_times(row.id) if row else None,
        data_key=stores.layout.data_key(sid) if sid else None,
        # One bulk read, as the plan does: it also finds the id in every index list.
        record=stores.redis.read_schedules().get(sid) if sid else None,
        status_key=stores.layout.status_key(row.id) if row else None,
        status=stores.redis.get_status(row.id) if row else None,
        executions=stores.db.executions.recent(task.name, False, None, EXPLAIN_EXECUTIONS),
        now=now,
    )


def _warn_problems(outcome: Outcome) -> None:
    errors = len(outcome.loaded.errors)
    if errors:
        print(f"warning: {errors} taskdef error(s); `syncd validate` lists them", file=sys.stderr)
    for error in outcome.plan.errors:
        print(f"warning: {visible(error.message)}", file=sys.stderr)


def _name_and_dir(args: argparse.Namespace) -> tuple[str | None, Path]:
    """`status [NAME] [DIR]`: one argument with a '/' is the directory (no name has one)."""
    name, directory = args.name, args.dir
    if directory is None and name is not None and "/" in name:
        name, directory = None, name
    return name, Path(directory or DEFAULT_DIR)


def _since(text: str) -> datetime:
    try:
        return parse_since(text, datetime.now(UTC))
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from exc
