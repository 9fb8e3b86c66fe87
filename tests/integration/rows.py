"""A task row to write in tests of the PostgreSQL store: one shape, any field changed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from syncd.core.model import DesiredTask, TaskConfig


def desired(name: str, source: str | None = None, **changes: Any) -> DesiredTask:
    """A cron task named `name` from `source` (default `team/{name}.yaml`), line 4."""
    config = TaskConfig(
        name=name,
        task_type="cleanup.temp_files",
        scheduler_type="cron",
        schedule_config={"cron": "0 3 * * *", "timezone": "Europe/Berlin"},
        parameters={"path": "/var/tmp/app", "older_than_days": 7},
        description=f"about {name}",
        max_retries=3,
        timeout_seconds=600,
    )
    source = source or f"team/{name}.yaml"
    return DesiredTask(replace(config, **changes), source, 4, f"taskdefs/{source}")
