"""The explain view as JSON, the plan, and the task list's filters.

`explain_json` turns the `views.explain.Explanation` that `syncd explain` prints
(`syncd.inspection.explanation` reads it, for both) into JSON with the views' own
helpers: the sync state, the plan item as `plan --format json` writes it, the next fires
as `explain` computes them. Strings go through `visible_json`, as every JSON view's.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from syncd.core.firetimes import next_fire_times, timezone_of
from syncd.core.lateness import FailingSince
from syncd.core.logtext import visible_json
from syncd.core.model import AuditEntry
from syncd.reconcile import Outcome
from syncd.views.explain import EXPLAIN_FIRE_COUNT, Explanation
from syncd.views.history import execution_json
from syncd.views.plan_json import plan_task_json, render_json
from syncd.views.status import live_config, next_fire, schedule_fields, sync_state
from syncd.views.text import format_local, iso_utc, location

# -------------------------------------------------------------------- the task list


@dataclass(frozen=True)
class TaskQuery:
    """Filters of `GET /api/v1/tasks` and the task list page; empty means all."""

    states: tuple[str, ...] = ()  # Redis status or sync state, e.g. paused, drift, in_sync
    queue: str | None = None
    task_type: str | None = None
    text: str | None = None  # in name, description or task type, ignoring case

    def matches(self, row: dict[str, Any]) -> bool:
        if self.states and not {_word(row["status"] or "missing"), _word(row["sync_state"])} & {
            _word(s) for s in self.states
        }:
            return False
        if self.queue and row["queue"] != self.queue:
            return False
        if self.task_type and row["task_type"] != self.task_type:
            return False
        if self.text:
            needle = self.text.casefold()
            haystack = (row["name"], row["description"], row["task_type"])
            return any(needle in field.casefold() for field in haystack)
        return True


def _word(state: str) -> str:
    return state.strip().casefold().replace(" ", "_")


def filtered(rows: Sequence[dict[str, Any]], query: TaskQuery) -> list[dict[str, Any]]:
    return [row for row in rows if query.matches(row)]


# -------------------------------------------------------------------- explain


def explain_json(view: Explanation) -> dict[str, Any]:
    """`view` as JSON: taskdef, row, Redis, plan item, schedule and fires, runs, audit."""
    task = view.task
    config = live_config(task)
    state, detail = sync_state(task)
    last = view.executions[0] if view.executions else None
    fire = next_fire(config, view.status, last, view.now)
    report = {
        "name": task.name,
        "taskdef": {"declared": view.declared, "location": location(task), "state": task.state},
        "row": _row_json(view),
        "redis": _redis_json(view),
        "sync_state": state,
        "sync_detail": [reason.to_json() for reason in detail],
        "plan": plan_task_json(task),
        "schedule": schedule_fields(config),
        "timezone": timezone_of(config),
        "next_fire": iso_utc(fire.at),
        "next_fire_exact": fire.exact,
        "next_fire_note": fire.note or None,
        "next_fires": _fires_json(view) if fire.at is not None and fire.exact else [],
        "late": view.lateness.late if view.lateness else False,
        "expected_at": iso_utc(view.lateness.expected_at) if view.lateness else None,
        "missed_fires": view.lateness.missed if view.lateness else 0,
        "failing_since": _failing_json(view.failing),
        "executions": [execution_json(e) for e in view.executions],
        "audit": [audit_json(entry) for entry in view.audit],
        "generated_at": iso_utc(view.now),
    }
    shown: dict[str, Any] = visible_json(report)
    return shown


def _row_json(view: Explanation) -> dict[str, Any] | None:
    row = view.row
    if row is None:
        return None
    created, updated = view.row_times or (None, None)
    config = dataclasses.asdict(row.config)
    return {
        "id": row.id,
        "content_hash": row.stored_hash,
        "git_revision": row.git_revision,
        "source_file": row.source_file,
        "source_line": row.source_line,
        "created_at": iso_utc(created),
        "updated_at": iso_utc(updated),
        # JSON-safe: a config holds JSON values only; a non-finite float becomes a string.
        "config": json.loads(json.dumps(config, default=str)),
    }


def _redis_json(view: Explanation) -> dict[str, Any] | None:
    if view.data_key is None:
        return None
    record = view.record
    return {
        "status_key": view.status_key,
        "status": view.status,
        "data_key": view.data_key,
        "payload": None if record is None else record.payload,
        "index_lists": [] if record is None else list(record.lists),
    }


def _fires_json(view: Explanation) -> list[dict[str, str | None]]:
    config = live_config(view.task)
    zone = timezone_of(config)
    return [
        {"utc": iso_utc(when), "local": format_local(when, zone), "timezone": zone}
        for when in next_fire_times(config, view.now, EXPLAIN_FIRE_COUNT)
    ]


def _failing_json(failing: FailingSince | None) -> dict[str, Any] | None:
    if failing is None:
        return None
    return {
        "failures": failing.failures,
        "runs": failing.runs,
        "revision": failing.revision,
        "since": iso_utc(failing.since),
        "succeeded_before": failing.succeeded_before,
        "previous_revision": failing.previous_revision,
        "attributed": failing.attributed,
    }


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": iso_utc(entry.at),
        "actor": entry.actor,
        "origin": entry.origin,
        "address": entry.address,
        "action": entry.action,
        "task_name": entry.task_name,
        "result": entry.result,
        "detail": entry.detail,
    }


def plan_json(outcome: Outcome) -> dict[str, Any]:
    """What `syncd plan --format json` prints for this outcome."""
    return render_json(outcome.plan)
