"""The read-only operator commands: `syncd status`, `syncd explain NAME`, `syncd history`.

Each reads the stores (status and explain also compute the dry-run plan with
`reconcile_once`, so they never disagree with `syncd plan`) and hands plain values to
`syncd.views.status` to format. Reads of executions are one query each, whatever the
number of tasks. They write nothing anywhere.
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
from syncd.core.plan import TaskPlan
from syncd.inspection import explanation, planned_task
from syncd.reconcile import Outcome, Stores, open_stores, reconcile_once
from syncd.views.explain import explain_text
from syncd.views.history import execution_json, history_text, parse_since
from syncd.views.status import status_json, status_rows, status_text


def cmd_status(args: argparse.Namespace) -> int:
    name, root = _name_and_dir(args)
    now = datetime.now(UTC)
    settings = settings_from(args)
    with open_stores(settings) as stores:
        outcome = _dry_run(root, stores, now)
        tasks = _selected(outcome, name, root)
        statuses = stores.redis.read_statuses()
        ids = [t.config_id for t in tasks if t.config_id is not None]
        last_runs = stores.db.executions.last_of(ids)
        activity = stores.db.executions.activity(ids)
    _warn_problems(outcome)
    rows = status_rows(
        tasks,
        statuses,
        last_runs,
        now,
        activity=activity,
        grace_seconds=settings.late_grace_seconds,
    )
    if args.format == "json":
        print_json(status_json(rows))
    else:
        print(status_text(rows), end="")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    now = datetime.now(UTC)
    settings = settings_from(args)
    with open_stores(settings) as stores:
        outcome = _dry_run(root, stores, now)
        task = planned_task(outcome, args.name, str(root))
        view = explanation(stores, outcome, task, now, settings.late_grace_seconds)
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


def _selected(outcome: Outcome, name: str | None, root: Path) -> list[TaskPlan]:
    """Every planned task, or the one named; NotFound when git and PostgreSQL both lack it."""
    if name is None:
        return list(outcome.plan.tasks)
    return [planned_task(outcome, name, str(root))]


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
