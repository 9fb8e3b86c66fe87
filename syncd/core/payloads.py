"""What syncd registers in Redis for a task: the ScheduledTask payload and its index list.

Pure: builds the JSON dict exactly as taskiq's `ScheduledTask.model_dump(mode="json")`
would (an integration test proves they are equal), and names the list it belongs in.
The planner builds each payload once, compares it with Redis and hands it to apply in
the Plan. The labels carry what the worker needs: config id, retries and their backoff,
timeout, priority and queue; the parameters are the task's kwargs. They also say which
configuration fired (its name, content hash and the git revision its row was written at),
which the recorder copies onto each execution row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from syncd.core.keys import KeyLayout, queue_stream, schedule_id
from syncd.core.model import TaskConfig


def schedule_labels(
    config_id: int, config: TaskConfig, queue: str, *, revision: str | None = None
) -> dict[str, Any]:
    """Labels of every message sent for this task (by the scheduler or `syncd run`).

    `revision` is the one stamped on the task's row when its configuration was last
    written (`Row.git_revision`), never the current HEAD: a commit that leaves a task alone
    must not rewrite its schedule.
    """
    labels: dict[str, Any] = {
        "config_id": config_id,
        "task_name": config.name,
        "config_hash": config.content_hash(),
        "priority": config.priority,
        "queue": queue,
        # RedisStreamBroker.kick routes a message to the stream named by this label.
        "queue_name": queue_stream(queue),
        # taskiq's SimpleRetryMiddleware counts attempts in total, the taskdef counts
        # retries after the first failure: 2 retries = 3 attempts.
        "max_retries": config.max_retries + 1,
        "retry_on_error": config.max_retries > 0,
    }
    if config.max_retries > 0:
        # The worker delays retry n by min(retry_backoff_max, retry_backoff * 2^(n-1)),
        # jittered. Absent without retries, so those payloads did not change with them.
        labels["retry_backoff"] = float(config.retry_backoff_seconds)
        labels["retry_backoff_max"] = float(config.retry_backoff_max_seconds)
    if config.timeout_seconds is not None:
        labels["timeout"] = config.timeout_seconds
    if revision is not None:
        labels["git_revision"] = revision
    return labels


def build_schedule(
    config_id: int, config: TaskConfig, queue: str, *, revision: str | None = None
) -> dict[str, Any] | None:
    """The ScheduledTask JSON for a scheduled task, or None for a manual one; `revision`
    as in `schedule_labels`."""
    schedule = config.schedule_config
    cron = interval = time = cron_offset = None
    if config.scheduler_type == "cron":
        cron = schedule["cron"]
        timezone = schedule.get("timezone", "UTC")
        cron_offset = None if timezone == "UTC" else timezone
    elif config.scheduler_type == "interval":
        interval = schedule["interval"]
    elif config.scheduler_type == "date":
        time = _json_datetime(datetime.fromisoformat(schedule["at"]))
    else:
        return None
    return {
        "task_name": config.task_type,
        "labels": schedule_labels(config_id, config, queue, revision=revision),
        "args": [],
        "kwargs": dict(config.parameters),
        "task_id": None,
        "schedule_id": schedule_id(config_id),
        "cron": cron,
        "cron_offset": cron_offset,
        "time": time,
        "interval": interval,
    }


def _json_datetime(value: datetime) -> str:
    # pydantic's JSON form of an aware datetime: ISO 8601 with 'Z' for UTC.
    text = value.isoformat()
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def index_key(layout: KeyLayout, payload: dict[str, Any]) -> str | None:
    """The list a payload belongs in (same precedence as ListRedisScheduleSource)."""
    if payload.get("cron") is not None:
        return layout.cron_key
    if payload.get("time") is not None:
        return layout.time_key(datetime.fromisoformat(payload["time"]))
    if payload.get("interval"):
        return layout.interval_key
    return None
