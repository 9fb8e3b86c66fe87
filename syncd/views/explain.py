"""`syncd explain NAME`: one task followed from its taskdef line through its row, its Redis
schedule and status, the plan, to its next fires and last executions, with how its runs
are going: the failure streak and the revision it began on, and whether it is late, and
the operator actions taken on it (`audit_log`). Pure."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from syncd.core.firetimes import next_fire_times, timezone_of
from syncd.core.lateness import FailingSince, Lateness
from syncd.core.logtext import line_head
from syncd.core.model import AuditEntry, Execution, Row, ScheduleRecord
from syncd.core.plan import TaskPlan
from syncd.views.history import ERROR_MAX, outcome, short_revision
from syncd.views.status import late_text, live_config, next_fire, next_fire_cell, sync_state
from syncd.views.text import (
    EMPTY,
    describe_config,
    first_line,
    format_duration,
    format_local,
    format_time,
    location,
    shorten,
)

EXPLAIN_FIRE_COUNT = 5


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
    executions: Sequence[Execution]
    now: datetime
    failing: FailingSince | None = None  # over more runs than `executions` shows
    lateness: Lateness | None = None  # None: not known (the task has no row)
    audit: Sequence[AuditEntry] = ()  # operator actions on the task, newest first


def explain_text(view: Explanation) -> str:
    sections = [
        line_head(view.task.name),
        _section("taskdef", _explain_declared(view)),
        _section("task_configs", _explain_row(view)),
        _section("redis", _explain_redis(view)),
        _section("plan", _explain_plan(view.task)),
        _section("next fires", _explain_fires(view)),
        _section("runs", _explain_health(view)),
        _section(f"last {len(view.executions)} execution(s)", _explain_runs(view.executions)),
        _section("audit (operator actions, newest first)", _explain_audit(view.audit)),
    ]
    return "\n".join(sections) + "\n"


def _section(title: str, lines: Sequence[str]) -> str:
    # Indented lines still count as beginning with their text (CI trims the blanks).
    return "\n".join([f"{title}:", *(f"  {line_head(line)}" for line in lines or ["—"])])


def _explain_declared(view: Explanation) -> list[str]:
    if view.declared is not None:
        return [view.declared]
    if view.task.state == "frozen":
        where = location(view.task) or "?"
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
        f"git_revision {row.git_revision or EMPTY}, source {source or EMPTY}",
        f"created_at {format_time(created)}, updated_at {format_time(updated)}",
        f"task_type {config.task_type}, schedule {describe_config(config)}",
        f"priority {config.priority}, max_retries {config.max_retries}, "
        f"timeout_seconds {config.timeout_seconds if config.timeout_seconds else EMPTY}",
        f"retry_backoff_seconds {config.retry_backoff_seconds:g}, "
        f"retry_backoff_max_seconds {config.retry_backoff_max_seconds:g}",
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
    lines += [f"change {c.field}: {_json(c.before)} → {_json(c.after)}" for c in task.field_changes]
    lines += [f"drift: {reason.message}" for reason in task.drift]
    lines += [f"note: {note.message}" for note in task.notes]
    lines += [f"why: {reason.message}" for reason in detail if state == "changed in git"]
    return lines


def _explain_fires(view: Explanation) -> list[str]:
    config = live_config(view.task)
    fire = next_fire(config, view.status, view.executions[0] if view.executions else None, view.now)
    if fire.at is None or not fire.exact:
        return [next_fire_cell(fire) + (" (UTC)" if fire.at else "")]
    zone = timezone_of(config)
    lines = []
    for when in next_fire_times(config, view.now, EXPLAIN_FIRE_COUNT):
        local = f" = {format_local(when, zone)}" if zone != "UTC" else ""
        lines.append(f"{format_time(when)} UTC{local}")
    return lines


def _explain_health(view: Explanation) -> list[str]:
    lines = [failing_text(view.failing) if view.failing else _not_failing(view.executions)]
    late = view.lateness
    if late is not None and late.late:
        lines.append(late_text(late))
    elif late is not None and late.expected_at is not None:
        lines.append(f"on time: the fire due at {format_time(late.expected_at)} UTC has a run")
    return lines


def _not_failing(executions: Sequence[Execution]) -> str:
    return "the newest run succeeded" if executions else "no runs recorded"


def failing_text(failing: FailingSince) -> str:
    """`failing since revision abc1234 (3 of the last 3 runs)`, and what the run before
    the streak says about the cause."""
    revision = short_revision(failing.revision)
    start = f"revision {revision}" if revision else f"{format_time(failing.since)} UTC"
    text = f"failing since {start} ({failing.failures} of the last {failing.runs} runs)"
    if not failing.succeeded_before:
        return text
    previous = short_revision(failing.previous_revision)
    if failing.attributed:
        return f"{text}; the run before succeeded on {previous}: the change is the likely cause"
    if previous and previous == revision:
        return f"{text}; the run before succeeded on the same revision"
    return f"{text}; the run before succeeded"


def _explain_runs(executions: Sequence[Execution]) -> list[str]:
    return [
        f"attempt {e.attempt}  {outcome(e):<7} "
        f"started {format_time(e.started_at)}  {format_duration(e.duration_seconds)}"
        + (f"  rev {short_revision(e.git_revision)}" if e.git_revision else "")
        + (f"  {shorten(first_line(e.error_message), ERROR_MAX)}" if e.error_message else "")
        for e in executions
    ]


def _explain_audit(entries: Sequence[AuditEntry]) -> list[str]:
    return [
        f"{format_time(e.at)}  {e.action} {e.result} by {e.actor} ({e.origin}"
        + (f" from {e.address})" if e.address else ")")
        + (f"  {shorten(first_line(e.detail), ERROR_MAX)}" if e.detail else "")
        for e in entries
    ]


def _json(value: Any) -> str:
    return shorten(json.dumps(value, sort_keys=True, default=str), 60)
