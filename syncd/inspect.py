"""Views of the live system for `syncd status`, `syncd explain` and `syncd history`.

Pure: `syncd.inspect_cli` reads the stores and computes the dry-run plan, then hands the
values here to be turned into rows, text tables and JSON. Nothing here talks to PostgreSQL
or Redis, reads the clock or prints; the sync state comes from the plan, never re-derived.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from syncd.firetimes import format_local, next_fire_times, timezone_of
from syncd.load import LoadResult
from syncd.plans import TaskPlan
from syncd.state import Row, ScheduleRecord, TaskConfig

if TYPE_CHECKING:
    # Type only: the views must not pull the PostgreSQL adapter (and its driver) in.
    from syncd.db_store import ExecutionRow

SyncState = Literal["in sync", "changed in git", "drift", "frozen", "expired"]

EXPLAIN_FIRE_COUNT = 5
_TIME = "%Y-%m-%d %H:%M:%S"
_CELL_MAX = 48
_ERROR_MAX = 80
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SINCE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


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
    sync_detail: tuple[str, ...]
    next_fire: NextFire
    last_run: ExecutionRow | None


# ---------------------------------------------------------------- derived values


def sync_state(task: TaskPlan) -> tuple[SyncState, tuple[str, ...]]:
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


def _git_change(task: TaskPlan) -> str:
    if task.action == "update":
        return "update: " + ", ".join(change.field for change in task.changes)
    if task.action == "create":
        return "create: not synced yet"
    if task.action == "delete":
        return "delete: removed from git"
    return "removed from git; kept while pruning is suspended"


def live_config(task: TaskPlan) -> TaskConfig:
    """What the stores run now (the applied row), else what git declares."""
    config = task.before or task.after
    if config is None:  # a plan always carries one side; guard for mypy and odd inputs
        raise ValueError(f"task plan {task.name!r} has no configuration")
    return config


def next_fire(
    config: TaskConfig, status: str | None, last_run: ExecutionRow | None, now: datetime
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
    return NextFire(None, True, "'at' has passed" if config.at_time() else "never")


def _next_interval(seconds: int, last_run: ExecutionRow | None, now: datetime) -> NextFire:
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
    last_runs: Mapping[int, ExecutionRow],
    now: datetime,
) -> list[StatusRow]:
    """One StatusRow per planned task, in the plan's (name) order."""
    rows = []
    for task in tasks:
        config = live_config(task)
        status = statuses.get(task.config_id) if task.config_id is not None else None
        last = last_runs.get(task.config_id) if task.config_id is not None else None
        state, detail = sync_state(task)
        rows.append(
            StatusRow(
                name=task.name,
                config_id=task.config_id,
                config=config,
                location=_location(task),
                status=status,
                sync_state=state,
                sync_detail=detail,
                next_fire=next_fire(config, status, last, now),
                last_run=last,
            )
        )
    return rows


def declared_at(loaded: LoadResult, name: str) -> str | None:
    """`path:line` of the taskdef declaring `name`, from the YAML just loaded."""
    for task in loaded.tasks:
        if task.spec.name == name:
            return f"{task.path}:{task.line}"
    return None


def parse_since(text: str, now: datetime) -> datetime:
    """`30m`, `1h`, `2d`, `1w`, `45s` before `now`, or an ISO timestamp (naive means UTC)."""
    if match := _SINCE.match(text):
        amount, unit = int(match.group(1)), match.group(2)
        return now - timedelta(**{_UNITS[unit]: amount})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 1h, 2d) nor an ISO timestamp"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


# ---------------------------------------------------------------- formatting helpers


def clean(text: str) -> str:
    """No control character (ESC, newline...) or bidi override reaches the terminal."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def format_time(when: datetime | None) -> str:
    return "—" if when is None else when.astimezone(UTC).strftime(_TIME)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.3f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def describe_schedule(config: TaskConfig) -> str:
    kind, conf = config.scheduler_type, config.schedule_config
    if kind == "cron":
        text = f"cron {conf['cron']} {timezone_of(config)}"
    elif kind == "interval":
        text = f"every {conf['interval']}s"
    elif kind == "date":
        text = f"at {format_time(config.at_time())} UTC"
    else:
        text = "manual"
    return text if config.enabled or kind == "manual" else f"{text} (disabled)"


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


def _location(task: TaskPlan) -> str | None:
    where = task.path or task.source
    if where is None:
        return None
    return where if task.line is None else f"{where}:{task.line}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; every cell cleaned and bounded."""
    cells = [[shorten(clean(c), _CELL_MAX) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = [[h.ljust(w) for h, w in zip(headers, widths, strict=True)]]
    lines += [[c.ljust(w) for c, w in zip(row, widths, strict=True)] for row in cells]
    return "\n".join("  ".join(line).rstrip() for line in lines)


# ---------------------------------------------------------------- status


def status_text(rows: Sequence[StatusRow]) -> str:
    """The `syncd status` table, then one line per reason a task is not in sync."""
    if not rows:
        return "No tasks.\n"
    headers = ("NAME", "SCHEDULE", "STATUS", "SYNC", "NEXT FIRE (UTC)", "LAST RUN")
    table = _table(headers, [_status_cells(row) for row in rows])
    details = [
        f"  {clean(row.name)}: {clean(reason)}" for row in rows for reason in row.sync_detail
    ]
    return table + "\n" + ("\n" + "\n".join(details) + "\n" if details else "")


def _status_cells(row: StatusRow) -> list[str]:
    return [
        row.name,
        describe_schedule(row.config),
        row.status or "missing",
        row.sync_state,
        _next_fire_cell(row.next_fire),
        _last_run_cell(row.last_run),
    ]


def _next_fire_cell(fire: NextFire) -> str:
    if fire.at is None:
        return f"— ({fire.note})" if fire.note and not fire.note.startswith("every") else fire.note
    return format_time(fire.at) if fire.exact else f"≈ {format_time(fire.at)}"


def _last_run_cell(run: ExecutionRow | None) -> str:
    if run is None:
        return "—"
    outcome = "ok" if run.is_success else "FAILED"
    return f"{outcome} {format_time(run.started_at)} ({format_duration(run.duration_seconds)})"


def status_json(rows: Sequence[StatusRow]) -> list[dict[str, Any]]:
    return [
        {
            "name": row.name,
            "config_id": row.config_id,
            "location": row.location,
            "schedule": schedule_fields(row.config),
            "status": row.status,
            "sync_state": row.sync_state,
            "sync_detail": list(row.sync_detail),
            "next_fire": _iso(row.next_fire.at),
            "next_fire_exact": row.next_fire.exact,
            "next_fire_note": row.next_fire.note or None,
            "last_run": None if row.last_run is None else execution_json(row.last_run),
        }
        for row in rows
    ]


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat()


# ---------------------------------------------------------------- history


def history_text(executions: Sequence[ExecutionRow]) -> str:
    if not executions:
        return "No executions.\n"
    headers = ("COMPLETED (UTC)", "TASK", "ATTEMPT", "RESULT", "DURATION", "ERROR")
    rows = [
        [
            format_time(e.completed_at),
            e.name or f"(deleted task {e.config_id or '?'})",
            str(e.attempt),
            "ok" if e.is_success else "FAILED",
            format_duration(e.duration_seconds),
            shorten(first_line(e.error_message), _ERROR_MAX),
        ]
        for e in executions
    ]
    return _table(headers, rows) + "\n"


def execution_json(execution: ExecutionRow) -> dict[str, Any]:
    return {
        "id": execution.id,
        "name": execution.name,
        "config_id": execution.config_id,
        "task_id": execution.task_id,
        "attempt": execution.attempt,
        "success": execution.is_success,
        "started_at": _iso(execution.started_at),
        "completed_at": _iso(execution.completed_at),
        "duration_seconds": execution.duration_seconds,
        "error_message": execution.error_message,
    }


# ---------------------------------------------------------------- explain


@dataclass(frozen=True)
class Explanation:
    """Everything `syncd explain NAME` shows, read from git, the plan and both stores."""

    task: TaskPlan
    declared: str | None  # path:line in the YAML just loaded; None when not declared there
    row: Row | None
    row_times: tuple[datetime, datetime | None] | None
    data_key: str | None
    record: ScheduleRecord | None
    status_key: str | None
    status: str | None
    executions: Sequence[ExecutionRow]
    now: datetime


def explain_text(view: Explanation) -> str:
    sections = [
        f"{clean(view.task.name)}",
        _section("taskdef", _explain_declared(view)),
        _section("task_configs", _explain_row(view)),
        _section("redis", _explain_redis(view)),
        _section("plan", _explain_plan(view.task)),
        _section("next fires", _explain_fires(view)),
        _section(f"last {len(view.executions)} execution(s)", _explain_runs(view.executions)),
    ]
    return "\n".join(sections) + "\n"


def _section(title: str, lines: Sequence[str]) -> str:
    return "\n".join([f"{title}:", *(f"  {clean(line)}" for line in lines or ["—"])])


def _explain_declared(view: Explanation) -> list[str]:
    if view.declared is not None:
        return [view.declared]
    if view.task.state == "frozen":
        where = _location(view.task) or "?"
        return [f"{where} (last applied; the file has errors now)"]
    return ["not declared in the taskdefs (removed from git?)"]


def _explain_row(view: Explanation) -> list[str]:
    row = view.row
    if row is None:
        return ["no row yet (sync creates it)"]
    created, updated = view.row_times or (None, None)
    source = row.source_file if row.source_line is None else f"{row.source_file}:{row.source_line}"
    config = row.config
    return [
        f"id {row.id}, content_hash {row.stored_hash[:12]}…",
        f"git_revision {row.git_revision or '—'}, source {source or '—'}",
        f"created_at {format_time(created)}, updated_at {format_time(updated)}",
        f"task_type {config.task_type}, schedule {describe_schedule(config)}",
        f"priority {config.priority}, max_retries {config.max_retries}, "
        f"timeout_seconds {config.timeout_seconds if config.timeout_seconds else '—'}",
        f"parameters {json.dumps(config.parameters, sort_keys=True)}",
    ]


def _explain_redis(view: Explanation) -> list[str]:
    if view.data_key is None:
        return ["nothing (the task has no row yet)"]
    record = view.record
    lines = [f"status key {view.status_key} = {view.status or '(missing)'}"]
    if record is None or record.payload is None:
        lines.append(f"data key {view.data_key}: (missing)")
    else:
        lines.append(f"data key {view.data_key}:")
        lines += [f"  {line}" for line in json.dumps(record.payload, indent=2).splitlines()]
    listed = ", ".join(record.lists) if record and record.lists else "(none)"
    lines.append(f"index list(s): {listed}")
    return lines


def _explain_plan(task: TaskPlan) -> list[str]:
    state, detail = sync_state(task)
    lines = [f"{state} (action {task.action}, state {task.state})"]
    lines += [f"change {c.field}: {_json(c.before)} → {_json(c.after)}" for c in task.changes]
    lines += [f"drift: {reason}" for reason in task.drift]
    lines += [f"note: {note}" for note in task.notes]
    lines += [f"why: {reason}" for reason in detail if state == "changed in git"]
    return lines


def _explain_fires(view: Explanation) -> list[str]:
    config = live_config(view.task)
    fire = next_fire(config, view.status, view.executions[0] if view.executions else None, view.now)
    if fire.at is None or not fire.exact:
        return [_next_fire_cell(fire) + (" (UTC)" if fire.at else "")]
    zone = timezone_of(config)
    lines = []
    for when in next_fire_times(config, view.now, EXPLAIN_FIRE_COUNT):
        local = f" = {format_local(when, zone)}" if zone != "UTC" else ""
        lines.append(f"{format_time(when)} UTC{local}")
    return lines


def _explain_runs(executions: Sequence[ExecutionRow]) -> list[str]:
    return [
        f"attempt {e.attempt}  {'ok    ' if e.is_success else 'FAILED'}  "
        f"started {format_time(e.started_at)}  {format_duration(e.duration_seconds)}"
        + (f"  {shorten(first_line(e.error_message), _ERROR_MAX)}" if e.error_message else "")
        for e in executions
    ]


def _json(value: Any) -> str:
    return shorten(json.dumps(value, sort_keys=True, default=str), 60)
