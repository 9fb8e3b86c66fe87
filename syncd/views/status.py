"""`syncd status`: one row per task with its schedule, status, sync state, next fire, last run.

Pure: the CLI reads the stores and computes the dry-run plan, then hands the values here
to be turned into rows, a text table and JSON (`views.explain` and `views.history` build on
the same values). Nothing here talks to PostgreSQL or Redis,
reads the clock or prints; the sync state comes from the plan, never re-derived. Each
reason a task is not in sync carries a stable code (`sync_detail` in the JSON). A task
whose due fire has no run is LATE (`core.lateness`): marked in its status and explained
under the table; `late`, `expected_at` and `missed_fires` in the JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from syncd.core.firetimes import next_fire_times, timezone_of
from syncd.core.lateness import MISSED_CAP, NOT_LATE, Activity, Lateness, lateness
from syncd.core.logtext import line_head, visible_json
from syncd.core.model import Execution, TaskConfig
from syncd.core.plan import Reason, TaskPlan
from syncd.views.history import execution_json, outcome
from syncd.views.text import (
    EMPTY,
    clean,
    describe_config,
    format_duration,
    format_time,
    iso_utc,
    location,
    table,
)

SyncState = Literal["in sync", "changed in git", "drift", "frozen", "expired"]


class GitChange(StrEnum):
    """Why a task counts as "changed in git" in `sync_detail`."""

    CREATE = "git_create"
    UPDATE = "git_update"
    DELETE = "git_delete"
    REMOVED_KEPT = "git_removed_kept"


@dataclass(frozen=True)
class NextFire:
    """When a task fires next as far as syncd can tell; `at` is None when it cannot."""

    at: datetime | None
    exact: bool
    note: str = ""


@dataclass(frozen=True)
class StatusRow:
    """One line of `syncd status`."""

    name: str
    config_id: int | None
    config: TaskConfig  # the live configuration (the row's); git's for a task not synced yet
    location: str | None
    status: str | None  # the raw Redis status; None when the key is missing
    sync_state: SyncState
    sync_detail: tuple[Reason, ...]
    next_fire: NextFire
    last_run: Execution | None
    lateness: Lateness = NOT_LATE


# ---------------------------------------------------------------- derived values


def sync_state(task: TaskPlan) -> tuple[SyncState, tuple[Reason, ...]]:
    """The task's sync state, read off the very plan `syncd plan` prints, and why."""
    if task.state == "frozen":
        return "frozen", task.notes
    if task.action != "noop" or task.state == "kept":
        return "changed in git", (_git_change(task),)
    if task.is_drift_only:
        return "drift", task.drift
    if task.state == "expired":
        return "expired", task.notes
    return "in sync", ()


def _git_change(task: TaskPlan) -> Reason:
    if task.action == "update":
        fields = ", ".join(change.field for change in task.field_changes)
        return Reason(GitChange.UPDATE, f"update: {fields}")
    if task.action == "create":
        return Reason(GitChange.CREATE, "create: not synced yet")
    if task.action == "delete":
        return Reason(GitChange.DELETE, "delete: removed from git")
    return Reason(GitChange.REMOVED_KEPT, "removed from git; kept while pruning is suspended")


def live_config(task: TaskPlan) -> TaskConfig:
    """What the stores run now (the applied row), else what git declares."""
    config = task.before or task.after
    if config is None:  # a plan always carries one side; guard for mypy and odd inputs
        raise ValueError(f"task plan {task.name!r} has no configuration")
    return config


def next_fire(
    config: TaskConfig, status: str | None, last_run: Execution | None, now: datetime
) -> NextFire:
    """The next fire: exact for cron and at; for an interval, the last run + interval."""
    if config.scheduler_type == "manual":
        return NextFire(None, True, "manual")
    if not config.enabled:
        return NextFire(None, True, "disabled")
    if status != "active":
        return NextFire(None, True, status or "not registered")
    if config.scheduler_type == "interval":
        return _next_interval(config.schedule_config["interval"], last_run, now)
    times = next_fire_times(config, now, 1)
    if times:
        return NextFire(times[0], True)
    return NextFire(None, True, "'at' has passed" if config.has_passed(now) else "never")


def _next_interval(seconds: int, last_run: Execution | None, now: datetime) -> NextFire:
    # taskiq keeps an interval's last send in the scheduler's memory only; the last
    # recorded start is the best estimate syncd has.
    every = f"every {seconds}s"
    if last_run is None:
        return NextFire(None, False, every)
    estimate = last_run.started_at + timedelta(seconds=seconds)
    if estimate <= now:
        return NextFire(None, False, every)
    return NextFire(estimate, False, f"{every}, estimated from the last run")


def status_rows(
    tasks: Sequence[TaskPlan],
    statuses: Mapping[int, str],
    last_runs: Mapping[int, Execution],
    now: datetime,
    *,
    activity: Mapping[int, Activity] | None = None,
    grace_seconds: float | None = None,
) -> list[StatusRow]:
    """One StatusRow per planned task, in the plan's (name) order; `activity` (by config
    id) tells which are late, `grace_seconds` overrides the default grace."""
    rows = []
    for task in tasks:
        config = live_config(task)
        status = statuses.get(task.config_id) if task.config_id is not None else None
        last = last_runs.get(task.config_id) if task.config_id is not None else None
        runs = (activity or {}).get(task.config_id) if task.config_id is not None else None
        state, detail = sync_state(task)
        rows.append(
            StatusRow(
                name=task.name,
                config_id=task.config_id,
                config=config,
                location=location(task),
                status=status,
                sync_state=state,
                sync_detail=detail,
                next_fire=next_fire(config, status, last, now),
                last_run=last,
                lateness=lateness(config, status, runs, now, grace_seconds),
            )
        )
    return rows


# ---------------------------------------------------------------- formatting helpers


def schedule_fields(config: TaskConfig) -> dict[str, Any]:
    """The schedule as JSON: kind, and its expression / interval / at, and timezone."""
    conf = config.schedule_config
    fields: dict[str, Any] = {"kind": config.scheduler_type, "enabled": config.enabled}
    if config.scheduler_type == "cron":
        fields.update(expression=conf["cron"], timezone=timezone_of(config))
    elif config.scheduler_type == "interval":
        fields["interval_seconds"] = conf["interval"]
    elif config.scheduler_type == "date":
        fields["at"] = conf["at"]
    return fields


# ---------------------------------------------------------------- status


def status_text(rows: Sequence[StatusRow]) -> str:
    """The `syncd status` table, then one line per reason a task is not in sync."""
    if not rows:
        return "No tasks.\n"
    headers = ("NAME", "SCHEDULE", "STATUS", "SYNC", "NEXT FIRE (UTC)", "LAST RUN")
    text = table(headers, [_status_cells(row) for row in rows])
    details = [
        f"  {line_head(row.name)}: {clean(message)}"  # indented, still a line start
        for row in rows
        for message in _details(row)
    ]
    return text + "\n" + ("\n" + "\n".join(details) + "\n" if details else "")


def _details(row: StatusRow) -> list[str]:
    late = [late_text(row.lateness)] if row.lateness.late else []
    return late + [reason.message for reason in row.sync_detail]


def late_text(late: Lateness) -> str:
    """`late: no run since the fire due at 2026-01-02 03:04:00 UTC (3 missed)`."""
    missed = f"{late.missed}{'+' if late.missed >= MISSED_CAP else ''} missed"
    return f"late: no run since the fire due at {format_time(late.expected_at)} UTC ({missed})"


def _status_cells(row: StatusRow) -> list[str]:
    status = row.status or "missing"
    return [
        row.name,
        describe_config(row.config),
        f"{status} LATE" if row.lateness.late else status,
        row.sync_state,
        next_fire_cell(row.next_fire),
        _last_run_cell(row.last_run),
    ]


def next_fire_cell(fire: NextFire) -> str:
    if fire.at is None:
        return (
            f"{EMPTY} ({fire.note})"
            if fire.note and not fire.note.startswith("every")
            else fire.note
        )
    return format_time(fire.at) if fire.exact else f"≈ {format_time(fire.at)}"


def _last_run_cell(run: Execution | None) -> str:
    if run is None:
        return EMPTY
    return f"{outcome(run)} {format_time(run.started_at)} ({format_duration(run.duration_seconds)})"


def status_json(rows: Sequence[StatusRow]) -> list[dict[str, Any]]:
    """The rows as JSON; every string visible (names, locations and statuses come from
    taskdefs, rows and Redis)."""
    shown: list[dict[str, Any]] = visible_json([_row_json(row) for row in rows])
    return shown


def _row_json(row: StatusRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "config_id": row.config_id,
        "location": row.location,
        "schedule": schedule_fields(row.config),
        "status": row.status,
        "sync_state": row.sync_state,
        "sync_detail": [reason.to_json() for reason in row.sync_detail],
        "next_fire": iso_utc(row.next_fire.at),
        "next_fire_exact": row.next_fire.exact,
        "next_fire_note": row.next_fire.note or None,
        "last_run": None if row.last_run is None else execution_json(row.last_run),
        "late": row.lateness.late,
        "expected_at": iso_utc(row.lateness.expected_at),
        "missed_fires": row.lateness.missed,
    }
