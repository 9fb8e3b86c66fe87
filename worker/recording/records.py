"""Building one execution record from what taskiq hands the recorder, bounded and storable.

A record is a `syncd.core.model.Execution` (the `task_executions` row type syncd reads
back): every text is cut to a bound and cleaned of what PostgreSQL refuses (NUL, lone
surrogates), the result becomes a JSON value, a timeout gets the message the CLI shows.
The task's name, content hash and git revision come from the message's labels as they
were when it fired (`TaskLabels`); a label that is not a short string is stored as NULL.
`record_json` / `record_from_json` are its form in a spool file and in the INSERT.
"""

from __future__ import annotations

import json
import math
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from taskiq import TaskiqMessage

from syncd.core.model import Execution
from worker.labels import RETRIES_LABEL, label_count, label_number, label_text

MAX_RESULT_BYTES = 64 * 1024
RESULT_PREVIEW_CHARS = 1000
MAX_TRACEBACK_CHARS = 20 * 1024
MAX_MESSAGE_CHARS = 4 * 1024
TASK_ID_CHARS = 64  # task_executions.task_id is String(64)
# task_executions.task_name is String(200), config_hash and git_revision String(64).
TASK_NAME_CHARS, CONFIG_HASH_CHARS, GIT_REVISION_CHARS = 200, 64, 64
# Results this small and plain are stored without a JSON round trip (json_result).
PLAIN_NODES, PLAIN_CHARS = 64, 256
# "\u0000" escapes not preceded by an odd number of backslashes: PostgreSQL's jsonb refuses them.
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
# The columns the recorder writes (id and created_at are the database's).
WRITTEN = (
    "config_id",
    "task_id",
    "attempt",
    "is_success",
    "started_at",
    "completed_at",
    "duration_seconds",
    "result",
    "error_message",
    "error_traceback",
    "task_name",
    "config_hash",
    "git_revision",
)
_TIMES = ("started_at", "completed_at")
# Written columns a spool line from an older worker may lack.
_ADDED = ("task_name", "config_hash", "git_revision")


def record_json(record: Execution) -> dict[str, Any]:
    """The written columns (WRITTEN) as JSON values, times as ISO 8601.

    Spelled out rather than looped over WRITTEN: it runs once per attempt (a test checks the
    keys are WRITTEN)."""
    return {
        "config_id": record.config_id,
        "task_id": record.task_id,
        "attempt": record.attempt,
        "is_success": record.is_success,
        "started_at": record.started_at.isoformat(),
        "completed_at": record.completed_at.isoformat(),
        "duration_seconds": record.duration_seconds,
        "result": record.result,
        "error_message": record.error_message,
        "error_traceback": record.error_traceback,
        "task_name": record.task_name,
        "config_hash": record.config_hash,
        "git_revision": record.git_revision,
    }


def record_from_json(row: dict[str, Any]) -> Execution:
    values: dict[str, Any] = {name: row[name] for name in WRITTEN if name not in _ADDED}
    values.update({name: row.get(name) for name in _ADDED})
    for name in _TIMES:
        values[name] = datetime.fromisoformat(row[name])
    return Execution(**values)


def clean_text(text: str, limit: int, keep_tail: bool = False) -> str:
    """Bounded, and storable by PostgreSQL: no NUL, no lone surrogate (either fails a batch)."""
    if len(text) <= limit and text.isascii() and "\x00" not in text:
        return text  # the common case, at a fraction of the cost
    if len(text) > limit:
        cut = len(text) - limit
        text = f"[{cut} chars cut]\n" + text[-limit:] if keep_tail else text[:limit]
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def json_result(value: Any) -> Any:
    """The task's return value as a JSON value: non-JSON values stringified, big ones cut."""
    if _is_plain(value, [PLAIN_NODES]):
        return value  # already a small, storable JSON value: no round trip through text
    try:
        text = json.dumps(value, default=str, allow_nan=False, ensure_ascii=False)
    except Exception:  # NaN, circular, non-str keys, a __str__ that raises
        text = json.dumps(_safe_repr(value), ensure_ascii=False)
    text = _NUL_ESCAPE.sub(r"\1\\ufffd", text).encode("utf-8", "replace").decode("utf-8")
    size = len(text.encode("utf-8"))
    if size > MAX_RESULT_BYTES:
        return {"truncated": True, "bytes": size, "preview": text[:RESULT_PREVIEW_CHARS]}
    return json.loads(text)


def _is_plain(value: Any, budget: list[int]) -> bool:
    """A small JSON value PostgreSQL stores as is: finite numbers, short ASCII strings without
    NUL, and lists and str-keyed dicts of those, `budget` nodes in all (so well under
    MAX_RESULT_BYTES). Exact types only: a subclass may serialise differently."""
    budget[0] -= 1
    kind = type(value)
    if budget[0] < 0 or kind not in _PLAIN_CHECKS:
        return False
    return _PLAIN_CHECKS[kind](value, budget)


def _plain_dict(value: dict[Any, Any], budget: list[int]) -> bool:
    return all(
        type(k) is str and _is_plain(k, budget) and _is_plain(v, budget) for k, v in value.items()
    )


_PLAIN_CHECKS: dict[type, Callable[[Any, list[int]], bool]] = {
    type(None): lambda value, budget: True,
    bool: lambda value, budget: True,
    int: lambda value, budget: True,
    float: lambda value, budget: math.isfinite(value),
    str: lambda value, budget: (
        len(value) <= PLAIN_CHARS and value.isascii() and "\x00" not in value
    ),
    dict: _plain_dict,
    list: lambda value, budget: all(_is_plain(item, budget) for item in value),
}


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)[: MAX_RESULT_BYTES // 2]
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def error_message(exc: BaseException, timeout: float | None, elapsed: float | None) -> str:
    # taskiq's `timeout` label raises a bare TimeoutError (anyio.fail_after); a TimeoutError
    # before the deadline came from the task itself and keeps its own message.
    if isinstance(exc, TimeoutError) and _reached(elapsed, timeout):
        return f"TimeoutError: timed out after {timeout:g} s"
    text = str(exc)
    name = type(exc).__name__
    return clean_text(f"{name}: {text}" if text else name, MAX_MESSAGE_CHARS)


def _reached(elapsed: float | None, timeout: float | None) -> bool:
    # 10 ms of slack for clock granularity; elapsed starts in pre_execute, before the deadline.
    return elapsed is not None and timeout is not None and elapsed >= timeout - 0.01


def format_traceback(exc: BaseException) -> str:
    # The tail holds the raising frame, the final exception and its notes (the child's own
    # traceback, for a task that ran in a child process): keep that end.
    text = "".join(traceback.format_exception(exc))
    return clean_text(text, MAX_TRACEBACK_CHARS, keep_tail=True)


@dataclass(frozen=True)
class TaskLabels:
    """Which task fired, as its message says: the row's columns of the same names."""

    task_name: str | None
    config_hash: str | None
    git_revision: str | None

    @classmethod
    def of(cls, labels: dict[str, Any]) -> TaskLabels:
        return cls(
            label_text(labels, "task_name", TASK_NAME_CHARS),
            label_text(labels, "config_hash", CONFIG_HASH_CHARS),
            label_text(labels, "git_revision", GIT_REVISION_CHARS),
        )


def config_id_label(labels: dict[str, Any]) -> int | None:
    number = label_number(labels, "config_id")
    return int(number) if number is not None and number.is_integer() else None


def attempt_number(message: TaskiqMessage) -> int:
    # A retry (worker.retries) is sent with the same task_id and counts earlier tries in _retries.
    return label_count(message.labels, RETRIES_LABEL) + 1


@dataclass
class Attempt:
    """What pre_execute and on_error learn about one running attempt, for post_execute."""

    message: TaskiqMessage
    number: int
    started_at: datetime
    clock: float | None
    error: BaseException | None = None
