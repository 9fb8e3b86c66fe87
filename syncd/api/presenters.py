"""Small pure helpers the console templates use: times, durations, outcomes, the chart.

They only format values the views already produced (ISO strings, seconds, outcomes); the
templates escape whatever they return (Jinja autoescape), so nothing here builds markup.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from syncd.views.text import EMPTY, format_duration, format_time

CHART_WIDTH = 600
CHART_HEIGHT = 120
CHART_GAP = 2
CHART_SLOTS = 25  # a few runs get bars of this share of the width, not the whole chart


def utc(value: str | None) -> str:
    """An ISO timestamp from a JSON view as `2026-01-02 03:04:05 UTC`."""
    if not value:
        return EMPTY
    return f"{format_time(datetime.fromisoformat(value))} UTC"


def pretty(value: Any) -> str:
    """A JSON value as indented text (the template escapes it)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def percent(rate: float | None) -> str:
    return EMPTY if rate is None else f"{round(rate * 100)} %"


def rate_class(rate: float | None) -> str:
    """A CSS class for a success rate: good, fair or poor."""
    if rate is None:
        return "none"
    return "good" if rate >= 0.95 else "fair" if rate >= 0.7 else "poor"


def status_class(status: str | None) -> str:
    return {"active": "ok", "paused": "warn", "inactive": "muted"}.get(status or "", "bad")


def sync_class(state: str) -> str:
    return {"in sync": "ok", "changed in git": "info", "drift": "warn", "frozen": "bad"}.get(
        state, "muted"
    )


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    ok: bool
    label: str  # for the bar's <title>: when, outcome and duration


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    width: int
    height: int
    longest: str  # the duration the full height stands for


def duration_chart(executions: Sequence[dict[str, Any]]) -> Chart | None:
    """Bars of the recent executions' durations, oldest left, coloured by outcome."""
    runs = list(reversed(executions))  # the views list newest first
    if not runs:
        return None
    longest = max((run["duration_seconds"] or 0.0) for run in runs) or 1.0
    slot = CHART_WIDTH / max(len(runs), CHART_SLOTS)
    width = max(1.0, slot - CHART_GAP)
    bars = []
    for index, run in enumerate(runs):
        seconds = run["duration_seconds"] or 0.0
        height = max(2.0, (CHART_HEIGHT - 4) * seconds / longest)
        took = format_duration(run["duration_seconds"])
        label = f"{utc(run['completed_at'])}: {run['outcome']}, {took}"
        bars.append(
            Bar(
                x=round(index * slot, 2),
                y=round(CHART_HEIGHT - height, 2),
                width=round(width, 2),
                height=round(height, 2),
                ok=bool(run["success"]),
                label=label,
            )
        )
    return Chart(bars, CHART_WIDTH, CHART_HEIGHT, format_duration(longest))
