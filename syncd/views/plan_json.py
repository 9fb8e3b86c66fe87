"""A Plan as the `--format json` object: the machine-readable contract of plan and sync.

`format_version` 2: each drift, note and error is `{"code", "message"}` (the code is
stable, the message is for people); version 1 had the message strings alone. Values are
made JSON-safe (non-finite floats and odd keys become strings) and every string visible
(`visible_json`: no raw control character or bidi override reaches a CI log that prints
it); the caller dumps it. Pure.
"""

from __future__ import annotations

import math
from typing import Any

from syncd.core.logtext import visible_json
from syncd.core.plan import Plan, TaskPlan
from syncd.views.plan_parts import NOTED_STATES, by_name

FORMAT_VERSION = 2


def render_json(plan: Plan) -> dict[str, Any]:
    """The `--format json` object (JSON-safe; the caller dumps it)."""
    report = {
        "format_version": FORMAT_VERSION,
        "summary": plan.summary(),
        "changes": [plan_task_json(t) for t in by_name(plan.tasks) if _reported(t)],
        "frozen_files": list(plan.broken_sources),
        "strays": [{"schedule_id": s.schedule_id, "lists": list(s.lists)} for s in plan.strays],
        "stray_statuses": list(plan.stray_statuses),
        "errors": [error.to_json() for error in plan.errors],
        "pruning_suspended": plan.pruning_suspended,
    }
    shown: dict[str, Any] = visible_json(report)
    return shown


def _reported(task: TaskPlan) -> bool:
    return task.has_changes or bool(task.notes) or task.state in NOTED_STATES


def plan_task_json(task: TaskPlan) -> dict[str, Any]:
    """One task's item of `changes` (listed there or not: an in-sync task is not)."""
    return {
        "name": task.name,
        "action": task.action,
        "state": task.state,
        "config_id": task.config_id,
        "source": task.source,
        "path": task.path,
        "line": task.line,
        "changes": [
            {"field": c.field, "before": _json_safe(c.before), "after": _json_safe(c.after)}
            for c in task.field_changes
        ],
        "drift": [reason.to_json() for reason in task.drift],
        "notes": [reason.to_json() for reason in task.notes],
        "schedule_op": task.schedule_op,
        "status_op": task.status_op,
    }


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    return str(value)
