"""What the three plan views share: value formatting, change rows and fire times.

`plan_text`, `plan_markdown` and `plan_json` render one Plan value; the decisions about
what a change looks like (a dict field split into per-key rows, the key fields of a created
task, the next fire times before and after a schedule change) are made once, here. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from schemas.secrets import secret_name
from syncd.core.firetimes import Instant, is_approximate, next_fire_times, timezone_of
from syncd.core.model import TaskConfig
from syncd.core.plan import FieldChange, Plan, TaskPlan
from syncd.views.text import (
    clean,
    describe_schedule,
    dumps,
    format_local,
    format_minute,
    location,
    shorten,
)

NOTED_STATES = frozenset({"frozen", "kept", "paused", "expired"})
TEXT_VALUE_MAX = 60
MD_VALUE_MAX = 120
MAX_KEY_ROWS = 10  # a dict field with more changed keys is shown whole
VERBS = {"create": "create", "update": "update", "delete": "destroy", "noop": "drift"}
SYMBOLS = {"create": "+", "update": "~", "delete": "-", "noop": "!"}
FIRE_COUNT = 5  # next fire times shown per side of a schedule change
SCHEDULE_FIELDS = frozenset({"scheduler_type", "schedule_config", "enabled"})


class Absent:
    """A dict key present on one side of a change only."""


ABSENT = Absent()
ChangeRow = tuple[str, Any, Any]  # (label, before, after)


def value_text(value: Any, limit: int) -> str:
    """A value as compact one-line JSON, shortened to `limit` characters; a secret
    reference as `secret NAME` (the value itself is never known here)."""
    if isinstance(value, Absent):
        return "(absent)"
    if (name := secret_name(value)) is not None:
        return f"secret {name}"
    return shorten(clean(dumps(value)), limit)


def change_rows(change: FieldChange) -> list[ChangeRow]:
    """One row per changed key of a dict field (when few), else one row for the field."""
    before, after = change.before, change.after
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted({*before, *after}, key=str)
        changed = [k for k in keys if before.get(k, ABSENT) != after.get(k, ABSENT)]
        if 0 < len(changed) <= MAX_KEY_ROWS:
            return [
                (f"{change.field}.{k}", before.get(k, ABSENT), after.get(k, ABSENT))
                for k in changed
            ]
    return [(change.field, before, after)]


def config_values(task: TaskPlan, config: TaskConfig | None, side: str) -> dict[str, Any]:
    """The fields of a created (side='after') or deleted (side='before') task."""
    if config is not None:
        return config.field_values()
    return {c.field: getattr(c, side) for c in task.field_changes}


def key_fields(values: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("task_type", value_text(values.get("task_type"), TEXT_VALUE_MAX)),
        (
            "schedule",
            describe_schedule(values.get("scheduler_type"), values.get("schedule_config")),
        ),
        ("enabled", value_text(values.get("enabled"), TEXT_VALUE_MAX)),
    ]


def ops(task: TaskPlan) -> list[str]:
    """The writes a task's plan makes, in words."""
    deleting = task.action == "delete"
    found = [("delete row" if deleting else "write row")] if task.write_row else []
    if task.schedule_op is not None:
        found.append(f"{task.schedule_op} schedule")
    if task.status_op == "delete":
        found.append("delete status key")
    elif task.status_op is not None:
        found.append(f"status → {task.status_op}")
    return found


def no_changes(plan: Plan) -> str:
    tasks = f"{len(plan.tasks)} task{'' if len(plan.tasks) == 1 else 's'}"
    if plan.broken_sources or plan.errors:
        return f"No changes to apply ({tasks}); see the warnings and errors."
    return f"No changes. Taskdefs, PostgreSQL and Redis agree ({tasks})."


def by_name(tasks: Iterable[TaskPlan]) -> list[TaskPlan]:
    return sorted(tasks, key=lambda t: t.name)


def with_state(plan: Plan, state: str) -> list[TaskPlan]:
    return by_name(t for t in plan.tasks if t.state == state)


FireSide = tuple[str, TaskConfig, list[Instant]]  # (before | after, config, fire times)


def fire_sides(task: TaskPlan, now: Instant | None) -> list[FireSide]:
    """Fire times of a created task, or before and after an update of its schedule.

    Empty when there is no `now`, no schedule change, or neither side is ever scheduled.
    """
    if now is None or task.after is None:
        return []
    if task.action == "create":
        configs = [("after", task.after)]
    elif task.action == "update" and task.before is not None and schedule_changed(task):
        configs = [("before", task.before), ("after", task.after)]
    else:
        return []
    if not any(config.is_scheduled for _, config in configs):
        return []
    return [(side, c, next_fire_times(c, now, FIRE_COUNT)) for side, c in configs]


def schedule_changed(task: TaskPlan) -> bool:
    return any(change.field in SCHEDULE_FIELDS for change in task.field_changes)


def never(config: TaskConfig) -> str:
    """Why a side has no fire time at all."""
    if config.scheduler_type == "manual":
        return "never (manual task)"
    if not config.enabled:
        return "never (disabled)"
    if config.scheduler_type == "date":
        return "never ('at' has passed)"
    return "never (the cron expression matches no date)"


def side_title(side: str, config: TaskConfig) -> str:
    zone = timezone_of(config)
    approx = ", approximate" if is_approximate(config) else ""
    return f"{side} ({zone}{approx})" if zone != "UTC" else f"{side} (UTC{approx})"


def fire_label(when: Instant, config: TaskConfig) -> str:
    zone = timezone_of(config)
    return (
        format_minute(when)
        if zone == "UTC"
        else f"{format_minute(when)} = {format_local(when, zone)}"
    )


def approx_note(sides: Sequence[FireSide], now: Instant) -> str:
    if not any(is_approximate(config) for _, config, _ in sides):
        return ""
    return (
        f"interval times are estimates counted from {format_minute(now)}: the scheduler counts "
        "from its own last send"
    )


def where_text(task: TaskPlan) -> str:
    """The task's `path:line`, cleaned; empty when unknown."""
    return clean(location(task) or "")
