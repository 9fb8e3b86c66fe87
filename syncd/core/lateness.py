"""How a task is doing over time: is it late (a fire with no run), and since when does it fail.

Pure: the stores are read elsewhere (`adapters.executions`) and handed in as values, with
`now`. Two questions:

- `lateness(config, status, activity, now)`: the most recent fire the task should have had by
  `now - grace`, and whether a run started at or after it. Only an active, scheduled task
  can be late; paused, disabled, manual tasks never are, nor a one-shot registered after
  its `at` (it was never scheduled). Cron and `at` fires are exact (as the scheduler fires
  them); an interval is an approximation, since only the scheduler knows its last send: it
  is expected once per interval after the later of its last start and its registration.
- `failing_since(runs)`: the streak of failures a task's newest runs end with, and the git
  revision it began on, so a page can say "failing since revision abc1234 (3 of the last 3
  runs)" and whether the run before succeeded on another revision (the change is then the
  likely cause).

A run is recorded only when it ends, so a run still going looks like no run: the grace
includes the duration of the task's last run.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from syncd.core.firetimes import next_fire_times, timezone_of
from syncd.core.model import Execution, TaskConfig

MIN_GRACE_SECONDS = 60.0
MAX_GRACE_SECONDS = 900.0
GRACE_SHARE = 0.1  # of the period between two fires
# A run answers a cron or `at` fire if it started at most this long before it (clocks of
# scheduler and worker hosts differ a little); cron fires are at least a minute apart.
FIRE_SLACK = timedelta(seconds=30)
MISSED_CAP = 100  # missed fires are counted up to this (an alert needs > 0, not the exact sum)
STREAK_WINDOW = 20  # runs `failing_since` looks back over
# The largest jump of a UTC offset (DST): around one, wall times and instants reorder.
_DST_SLACK = timedelta(hours=3)
_MAX_CRON_STEPS = 2000  # croniter steps spent on one previous fire near a DST change
_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Activity:
    """What the stores know of one task's runs (read in bulk, one query for every task)."""

    registered_at: datetime  # its row last written: the schedule as it is now exists since
    last_started: datetime | None = None  # start of its newest recorded attempt
    last_duration: float | None = None  # seconds that attempt took
    last_success: datetime | None = None  # end of its newest successful attempt


@dataclass(frozen=True)
class Lateness:
    """`expected_at`: the most recent fire due by `now - grace` (None: none since the task
    was registered, or it cannot be late). `late`: no run started at or after it.
    `missed`: fires due with no run since the last one, at most MISSED_CAP."""

    late: bool
    expected_at: datetime | None
    missed: int
    grace_seconds: float


NOT_LATE = Lateness(False, None, 0, 0.0)


def default_grace(period_seconds: float | None) -> float:
    """max(60 s, 10 % of the time between two fires), at most 15 minutes."""
    share = GRACE_SHARE * period_seconds if period_seconds else 0.0
    return min(max(MIN_GRACE_SECONDS, share), MAX_GRACE_SECONDS)


def lateness(
    config: TaskConfig,
    status: str | None,
    activity: Activity | None,
    now: datetime,
    grace_seconds: float | None = None,
) -> Lateness:
    """Whether the task missed its most recent fire; `grace_seconds` replaces the default
    grace (the last run's duration is added to either)."""
    if status != "active" or not config.is_scheduled or activity is None:
        return NOT_LATE
    if config.scheduler_type == "interval":
        return _interval_lateness(config, activity, now, grace_seconds)
    return _fire_lateness(config, activity, now, grace_seconds)


def _grace(period: float | None, activity: Activity, override: float | None) -> float:
    base = default_grace(period) if override is None else override
    return base + (activity.last_duration or 0.0)


def _interval_lateness(
    config: TaskConfig, activity: Activity, now: datetime, override: float | None
) -> Lateness:
    every = float(config.schedule_config["interval"])
    grace = _grace(every, activity, override)
    anchor = activity.registered_at
    if activity.last_started is not None:
        anchor = max(anchor, activity.last_started)
    due = int((now - timedelta(seconds=grace) - anchor).total_seconds() // every)
    if due < 1:
        return Lateness(False, None, 0, grace)
    return Lateness(True, anchor + timedelta(seconds=due * every), min(due, MISSED_CAP), grace)


def _fire_lateness(
    config: TaskConfig, activity: Activity, now: datetime, override: float | None
) -> Lateness:
    """Cron and `at`: fires are known exactly."""
    latest, before = _last_two_fires(config, now)
    period = (latest - before).total_seconds() if latest and before else None
    grace = _grace(period, activity, override)
    deadline = now - timedelta(seconds=grace)
    expected = _fire_by(config, deadline, latest, before)
    # A fire before the registration belongs to an earlier schedule (or none at all).
    if expected is None or expected <= activity.registered_at:
        return Lateness(False, None, 0, grace)
    started = activity.last_started
    if started is not None and started >= expected - FIRE_SLACK:
        return Lateness(False, expected, 0, grace)
    since = activity.registered_at if started is None else max(activity.registered_at, started)
    return Lateness(True, expected, _missed(config, since, deadline), grace)


def _last_two_fires(config: TaskConfig, now: datetime) -> tuple[datetime | None, datetime | None]:
    latest = previous_fire(config, now)
    if latest is None:
        return None, None
    return latest, previous_fire(config, latest - timedelta(microseconds=1))


def _fire_by(
    config: TaskConfig, deadline: datetime, latest: datetime | None, before: datetime | None
) -> datetime | None:
    """The most recent fire at or before `deadline`, reusing the two already known."""
    if latest is None or latest <= deadline:
        return latest
    if before is not None and before <= deadline:
        return before
    return previous_fire(config, deadline)


def _missed(config: TaskConfig, since: datetime, deadline: datetime) -> int:
    """Fires after `since` (plus the slack) up to `deadline`: each one had no run."""
    if config.scheduler_type == "date":
        return 1
    fires = next_fire_times(config, since + FIRE_SLACK, MISSED_CAP)
    return max(1, sum(1 for fire in fires if fire <= deadline))


# ---------------------------------------------------------------- previous fire times


def previous_fire(config: TaskConfig, at: datetime) -> datetime | None:
    """The latest fire of a cron or `at` schedule at or before `at` (UTC), as the
    scheduler fires it; None for other kinds, or when there is none."""
    if config.scheduler_type == "date":
        when = config.at_time()
        return when.astimezone(UTC) if when is not None and when <= at else None
    if config.scheduler_type != "cron":
        return None
    try:
        return _previous_cron(config.schedule_config["cron"], timezone_of(config), at)
    except (ValueError, KeyError, OSError):
        # A row edited by hand may hold what validation never lets through.
        return None


def _previous_cron(expression: str, timezone: str, at: datetime) -> datetime | None:
    """Walk matching wall times back from `at`'s; each becomes the instants that show it
    (none in a DST gap, two in a fold), as in `firetimes`. Away from a DST change, the
    first wall time with an instant gives the answer; near one, walls and instants may
    reorder by up to the shift, so the walk starts that much later and goes that much
    further back."""
    zone = ZoneInfo(timezone)
    at = at.astimezone(UTC)
    slack = _DST_SLACK if _offset_changes_near(zone, at) else timedelta(0)
    wall_at = (at.astimezone(zone) + slack).replace(tzinfo=None, second=0, microsecond=0)
    walls = _walker(expression, wall_at + _MINUTE)  # get_prev is strictly before its start
    best: datetime | None = None
    best_wall = wall_at
    for _ in range(_MAX_CRON_STEPS):
        try:
            wall: datetime = walls.get_prev(datetime)
        except CroniterBadDateError:  # an expression that never matches (30 February)
            break
        if best is not None and wall < best_wall - slack:
            break
        shown = [t for t in _instants(wall, zone) if t <= at]
        if shown and (best is None or shown[-1] > best):
            best, best_wall = shown[-1], wall
            if not slack:
                break
    return best


def _offset_changes_near(zone: ZoneInfo, at: datetime) -> bool:
    before, after = (at - _DST_SLACK).astimezone(zone), (at + _DST_SLACK).astimezone(zone)
    return before.utcoffset() != after.utcoffset()


def _walker(expression: str, start: datetime) -> croniter:
    # Parsing an expression costs more than stepping through it: copy a parsed one.
    walls = copy.copy(_parsed(expression))
    walls.set_current(start, force=True)
    return walls


@lru_cache(maxsize=4096)
def _parsed(expression: str) -> croniter:
    return croniter(expression, datetime(2000, 1, 1))


def _instants(wall: datetime, zone: ZoneInfo) -> list[datetime]:
    """The UTC instants whose wall time in `zone` is `wall`: none, one or two."""
    candidates = {wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)}
    return sorted(t for t in candidates if t.astimezone(zone).replace(tzinfo=None) == wall)


# ---------------------------------------------------------------- failure streaks


@dataclass(frozen=True)
class FailingSince:
    """The failures a task's newest runs end with.

    `failures` of the `runs` looked at, newest first; `revision` and `since`: the git
    revision (None if not recorded) and start of the oldest failure of the streak.
    `succeeded_before`: the run just before the streak (a success) is among those looked
    at; `previous_revision` is its revision."""

    failures: int
    runs: int
    revision: str | None
    since: datetime
    succeeded_before: bool
    previous_revision: str | None = None

    @property
    def attributed(self) -> bool:
        """The run before the streak succeeded on another revision: the streak's revision
        is the likely cause."""
        return (
            self.succeeded_before
            and self.revision is not None
            and self.previous_revision is not None
            and self.revision != self.previous_revision
        )


def failing_since(runs: Sequence[Execution]) -> FailingSince | None:
    """The streak of failures `runs` (newest first) begin with; None if the newest
    succeeded or there are none."""
    streak = 0
    while streak < len(runs) and not runs[streak].is_success:
        streak += 1
    if streak == 0:
        return None
    first = runs[streak - 1]
    before = runs[streak] if streak < len(runs) else None
    return FailingSince(
        failures=streak,
        runs=len(runs),
        revision=first.git_revision,
        since=first.started_at,
        succeeded_before=before is not None,
        previous_revision=None if before is None else before.git_revision,
    )
