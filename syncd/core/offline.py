"""Offline plans for pull requests: what merging would change, from git alone.

`plan --against REF` treats the taskdefs at REF as if they had been applied perfectly,
synthesises that state, and plans the working tree against it with the same pure
planner the live sync uses, so a PR comment and the later sync agree.
"""

from __future__ import annotations

from datetime import datetime

from syncd.core.keys import KeyLayout, schedule_id
from syncd.core.model import Actual, Desired, Row, ScheduleRecord
from syncd.core.payloads import build_schedule, index_key


def applied_state(base: Desired, now: datetime, layout: KeyLayout) -> Actual:
    """The stores exactly as a sync of `base` at `now` would leave them."""
    rows: dict[str, Row] = {}
    schedules: dict[str, ScheduleRecord] = {}
    statuses: dict[int, str] = {}
    for config_id, (name, task) in enumerate(sorted(base.tasks.items()), start=1):
        config = task.config
        rows[name] = Row(config_id, config, config.content_hash(), task.source, task.line)
        payload = None
        if config.is_scheduled and not config.has_passed(now):
            payload = build_schedule(config_id, config, base.queue_for(config.task_type))
        if payload is not None:
            key = index_key(layout, payload)
            schedules[schedule_id(config_id)] = ScheduleRecord(
                schedule_id(config_id), payload, (key,) if key else ()
            )
        statuses[config_id] = "active" if payload is not None else "inactive"
    return Actual(rows, schedules, statuses)
