"""`syncd history`: finished attempts as a table or JSON, and the `--since` parser. Pure.

Each attempt shows the git revision its task was at when it fired (short in tables, whole
in JSON); a deleted task's attempts still show the name they recorded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from syncd.core.logtext import visible_json
from syncd.core.model import Execution
from syncd.views.text import (
    EMPTY,
    first_line,
    format_duration,
    format_time,
    iso_utc,
    shorten,
    table,
)

ERROR_MAX = 80  # characters of an error's first line in a table
SHORT_REVISION = 7  # hex digits of a revision in tables, as `git log --oneline` shows it
DIRTY = "-dirty"  # the suffix adapters.git puts on a revision with uncommitted changes
# How the worker words a stopped attempt (worker.runner and the recorder): each gets its
# own word in tables, so a timing-out or memory-hungry task stands out from a failing one.
_STOPPED = (
    ("TimeoutError: timed out after", "TIMEOUT"),
    ("MemoryLimitExceeded:", "MEMORY"),
    ("ChildDied:", "DIED"),  # recorded by earlier versions: a crash is now redelivered
    ("DeadLettered:", "DEAD"),
)
_SINCE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


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


def history_text(executions: Sequence[Execution]) -> str:
    if not executions:
        return "No executions.\n"
    headers = ("COMPLETED (UTC)", "TASK", "ATTEMPT", "RESULT", "REVISION", "DURATION", "ERROR")
    rows = [
        [
            format_time(e.completed_at),
            task_label(e),
            str(e.attempt),
            outcome(e),
            short_revision(e.git_revision) or EMPTY,
            format_duration(e.duration_seconds),
            shorten(first_line(e.error_message), ERROR_MAX),
        ]
        for e in executions
    ]
    return table(headers, rows) + "\n"


def task_label(execution: Execution) -> str:
    """The task's current name; once its row is deleted, the name its run recorded."""
    if execution.name:
        return execution.name
    if execution.task_name:
        return f"{execution.task_name} (deleted)"
    return f"(deleted task {execution.config_id or '?'})"


def short_revision(revision: str | None) -> str | None:
    """`abc1234` for a commit id, `abc1234-dirty` for uncommitted changes on it."""
    if not revision:
        return None
    dirty = revision.endswith(DIRTY)
    head = revision.removesuffix(DIRTY)[:SHORT_REVISION]
    return head + DIRTY if dirty else head


def execution_json(execution: Execution) -> dict[str, Any]:
    """One attempt as JSON; its strings visible (an error message is the task's words)."""
    shown: dict[str, Any] = visible_json(
        {
            "id": execution.id,
            "name": execution.name,
            "config_id": execution.config_id,
            "task_id": execution.task_id,
            "attempt": execution.attempt,
            "success": execution.is_success,
            "outcome": outcome(execution).lower(),
            "started_at": iso_utc(execution.started_at),
            "completed_at": iso_utc(execution.completed_at),
            "duration_seconds": execution.duration_seconds,
            "error_message": execution.error_message,
            "task_name": execution.task_name,
            "config_hash": execution.config_hash,
            "git_revision": execution.git_revision,
        }
    )
    return shown


def outcome(execution: Execution) -> str:
    """`ok`, or why the attempt failed: `TIMEOUT`, `MEMORY`, `DEAD` (dead-lettered after it
    killed its worker too often), `DIED` or `FAILED`."""
    if execution.is_success:
        return "ok"
    message = execution.error_message or ""
    return next((word for prefix, word in _STOPPED if message.startswith(prefix)), "FAILED")
