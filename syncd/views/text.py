"""Text safety and the small formats every view shares: one definition of each.

`clean` is the views' name for `schemas.text.visible`, the one rule for user text: every
user string a view prints (names, paths, values, reasons) goes through it, so no control
character (ESC, CSI, a newline, a line separator) or bidi override written in a taskdef, a
row or a Redis key can move a cursor, forge a line or reorder text. A line that would
begin with user text begins with its `line_head` form (never a CI workflow command), and
the JSON views pass their values through `visible_json` (both in `syncd.core.logtext`).
Also here: shortening, a task's `path:line`, one-line schedule descriptions, compact JSON
values, and the two time formats. Pure; no clock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from schemas.text import visible
from syncd.core.logtext import line_head

if TYPE_CHECKING:
    from datetime import datetime

    from syncd.core.model import TaskConfig
    from syncd.core.plan import TaskPlan

_UTC = ZoneInfo("UTC")
EMPTY = "—"
CELL_MAX = 48


def clean(text: str) -> str:
    """Control characters, line breaks and bidi controls as visible escapes (`\\x1b`, `\\n`)."""
    return visible(text)


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def dumps(value: Any) -> str:
    """Compact one-line JSON, keys sorted when they can be."""
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    except TypeError:  # keys of mixed types cannot be sorted
        return json.dumps(value, ensure_ascii=False, default=str)


def location(task: TaskPlan) -> str | None:
    """`path:line` where the task is declared (or was, for a row git no longer has)."""
    where = task.path or task.source
    if where is None:
        return None
    return where if task.line is None else f"{where}:{task.line}"


def describe_schedule(kind: Any, conf: Any, enabled: Any = True) -> str:
    """One line for people: `cron 0 3 * * * (Europe/Berlin)`, `every 300s`, `manual`...

    Takes the raw fields, not a TaskConfig, because a plan's deleted side may hold any
    value a hand-edited row had; the result is cleaned and bounded.
    """
    if not isinstance(conf, dict):
        return shorten(clean(dumps(conf)), 60)
    if kind == "cron":
        zone = conf.get("timezone") or "UTC"
        text = f"cron {_scalar(conf.get('cron'))} ({_scalar(zone)})"
    elif kind == "interval":
        text = f"every {_scalar(conf.get('interval'))}s"
    elif kind == "date":
        text = f"once at {_scalar(conf.get('at'))}"
    elif kind == "manual":
        return "manual"
    else:
        return shorten(clean(dumps(conf)), 60)
    return text if enabled is not False else f"{text} (disabled)"


def describe_config(config: TaskConfig) -> str:
    return describe_schedule(config.scheduler_type, config.schedule_config, config.enabled)


def _scalar(value: Any) -> str:
    return shorten(clean(value if isinstance(value, str) else dumps(value)), 40)


def format_time(when: datetime | None) -> str:
    """`2026-01-02 03:04:05` in UTC (tables: status, history, explain)."""
    return EMPTY if when is None else when.astimezone(_UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_minute(when: datetime) -> str:
    """`2026-01-02 03:04 UTC` (fire times: they fall on whole minutes)."""
    return when.astimezone(_UTC).strftime("%Y-%m-%d %H:%M UTC")


def format_local(when: datetime, timezone: str) -> str:
    """Wall time in `timezone` with its abbreviation, e.g. `2026-03-29 03:30 CEST`."""
    return when.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M %Z")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return EMPTY
    if seconds < 60:
        return f"{seconds:.3f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def iso_utc(when: datetime | None) -> str | None:
    """ISO 8601 in UTC, for JSON."""
    return None if when is None else when.astimezone(_UTC).isoformat()


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; every cell cleaned and bounded."""
    cells = [[shorten(clean(c), CELL_MAX) for c in row] for row in rows]
    for row in cells:  # the first cell begins its line
        if row:
            row[0] = line_head(row[0])
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = [[h.ljust(w) for h, w in zip(headers, widths, strict=True)]]
    lines += [[c.ljust(w) for c, w in zip(row, widths, strict=True)] for row in cells]
    return "\n".join("  ".join(line).rstrip() for line in lines)
