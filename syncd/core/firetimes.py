"""When a task's schedule fires next: `next_fire_times(config, now, count)`, pure.

Used by the plan views (fire times before/after a schedule change) and the status
views (`syncd status`, `syncd explain`). Cron is computed the way the TaskIQ scheduler
fires it, not the way croniter would; an interval is only approximated. No I/O and no
clock: `now` is passed in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TypeAlias
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from syncd.core.model import TaskConfig

Instant: TypeAlias = datetime
"""An aware datetime. The plan views name their `now` parameter's type through this alias:
they must not import the clock module themselves (a test keeps them free of `datetime`)."""

# croniter from a naive wall time this far back: an ambiguous wall time (DST ends) maps to a
# second instant up to the DST shift later, which may still be ahead of `now`.
_LOOKBACK = timedelta(hours=3)


def next_fire_times(config: TaskConfig, now: datetime, count: int) -> list[datetime]:
    """The next `count` fire times after `now`, in UTC, oldest first.

    Cron: exact. Interval: `now + k·interval`, an approximation (the scheduler counts from
    its own last send, see `is_approximate`). At: `[at]` while it is in the future.
    Manual and disabled tasks never fire: `[]`.
    """
    if not config.is_scheduled or count <= 0:
        return []
    schedule = config.schedule_config
    if config.scheduler_type == "cron":
        try:
            return _cron_times(schedule["cron"], timezone_of(config), now, count)
        except (ValueError, KeyError, OSError):
            # A row edited by hand may hold what validation never lets through (an unknown
            # zone, a cron croniter cannot read): no fire times, rather than no view at all.
            return []
    if config.scheduler_type == "interval":
        step = timedelta(seconds=schedule["interval"])
        return [now.astimezone(UTC) + k * step for k in range(1, count + 1)]
    at = config.at_time()
    return [at.astimezone(UTC)] if at is not None and not config.has_passed(now) else []


def is_approximate(config: TaskConfig) -> bool:
    """Interval fire times are estimates: taskiq fires an interval `interval` seconds after
    its own last send, which only the running scheduler knows."""
    return config.scheduler_type == "interval"


def timezone_of(config: TaskConfig) -> str:
    """The declared timezone (cron only); everything else is UTC."""
    if config.scheduler_type != "cron":
        return "UTC"
    return str(config.schedule_config.get("timezone") or "UTC")


def _cron_times(expression: str, timezone: str, now: datetime, count: int) -> list[datetime]:
    """Fire times as the scheduler sees them: each UTC minute whose wall time matches.

    croniter walks naive wall times; each becomes the instants that show it. A wall time
    skipped when DST starts has none (the scheduler never fires it; croniter alone would
    fire at 03:00), one repeated when DST ends has two (the scheduler fires twice).
    """
    zone = ZoneInfo(timezone)
    walls = croniter(expression, (now.astimezone(zone) - _LOOKBACK).replace(tzinfo=None))
    found: list[datetime] = []
    while True:
        try:
            wall: datetime = walls.get_next(datetime)
        except CroniterBadDateError:  # an expression that never matches (30 February)
            return found
        instants = _instants(wall, zone)
        # Wall times map to non-decreasing first instants: once the next one is past the
        # count-th time found, nothing earlier can follow.
        if len(found) >= count and instants and instants[0] >= found[count - 1]:
            return found[:count]
        found = sorted({*found, *(t for t in instants if t > now)})


def _instants(wall: datetime, zone: ZoneInfo) -> list[datetime]:
    """The UTC instants whose wall time in `zone` is `wall`: none, one or two."""
    candidates = {wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)}
    return sorted(t for t in candidates if t.astimezone(zone).replace(tzinfo=None) == wall)
