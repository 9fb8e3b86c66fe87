"""Lateness and failure streaks (`syncd.core.lateness`): table tests and properties.

The previous cron fire is checked against what the scheduler does (pycron on the wall
time of each UTC minute, DST included) walked back minute by minute; lateness against its
definition:
late exactly when the most recent fire due by `now - grace` has no run at or after it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pycron
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from syncd.core.firetimes import timezone_of
from syncd.core.lateness import (
    FIRE_SLACK,
    MAX_GRACE_SECONDS,
    MIN_GRACE_SECONDS,
    MISSED_CAP,
    NOT_LATE,
    Activity,
    default_grace,
    failing_since,
    lateness,
    previous_fire,
)
from syncd.core.model import Execution, TaskConfig

NOW = datetime(2026, 6, 10, 12, 0, 30, tzinfo=UTC)
DAY = timedelta(days=1)


def cron(expression: str, timezone: str = "UTC", **overrides: Any) -> TaskConfig:
    schedule = {"cron": expression, "timezone": timezone}
    return TaskConfig("t", "x.y", "cron", schedule, **overrides)


def interval(seconds: int, **overrides: Any) -> TaskConfig:
    return TaskConfig("t", "x.y", "interval", {"interval": seconds}, **overrides)


def once(at: datetime) -> TaskConfig:
    return TaskConfig("t", "x.y", "date", {"at": at.isoformat()})


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


# ---------------------------------------------------------------- grace


@given(st.one_of(st.none(), st.floats(0, 10**9, allow_nan=False)))
def test_the_default_grace_is_a_tenth_of_the_period_within_a_minute_and_a_quarter_hour(
    period: float | None,
) -> None:
    grace = default_grace(period)
    assert MIN_GRACE_SECONDS <= grace <= MAX_GRACE_SECONDS
    if period and MIN_GRACE_SECONDS <= period / 10 <= MAX_GRACE_SECONDS:
        assert grace == pytest.approx(period / 10)


# ---------------------------------------------------------------- who is never late


@pytest.mark.parametrize(
    ("config", "status"),
    [
        (cron("* * * * *"), "paused"),
        (cron("* * * * *"), "inactive"),
        (cron("* * * * *"), None),
        (cron("* * * * *", enabled=False), "active"),
        (TaskConfig("t", "x.y", "manual"), "active"),
        (interval(5), "paused"),
    ],
)
def test_paused_disabled_manual_and_unregistered_tasks_are_never_late(
    config: TaskConfig, status: str | None
) -> None:
    assert lateness(config, status, Activity(ago(days=30)), NOW) == NOT_LATE


def test_a_task_without_a_row_is_not_late() -> None:
    assert lateness(cron("* * * * *"), "active", None, NOW) == NOT_LATE


def test_a_one_shot_registered_after_its_time_never_ran_and_is_not_late() -> None:
    # Created already expired: syncd never registered it (`created_unscheduled`).
    late = lateness(once(ago(days=2)), "active", Activity(ago(days=1)), NOW)
    assert (late.late, late.expected_at) == (False, None)


# ---------------------------------------------------------------- cron and at


def test_a_cron_task_that_ran_at_its_last_fire_is_on_time() -> None:
    late = lateness(cron("*/5 * * * *"), "active", Activity(ago(days=1), ago(minutes=5)), NOW)
    assert late.late is False
    # 12:00 is within the grace (60 s) of now: the fire expected is 11:55, which ran.
    assert late.expected_at == datetime(2026, 6, 10, 11, 55, tzinfo=UTC)


def test_a_cron_task_without_a_run_since_a_due_fire_is_late_with_its_missed_fires() -> None:
    runs = Activity(ago(days=1), last_started=ago(minutes=20, seconds=30))  # 11:40 ran
    late = lateness(cron("*/5 * * * *"), "active", runs, NOW)
    assert late.late is True
    assert late.expected_at == datetime(2026, 6, 10, 11, 55, tzinfo=UTC)
    assert late.missed == 3  # 11:45, 11:50, 11:55 (12:00 is still within the grace)


def test_fires_before_the_registration_are_not_expected() -> None:
    late = lateness(cron("0 3 * * *"), "active", Activity(ago(hours=1)), NOW)
    assert (late.late, late.expected_at, late.missed) == (False, None, 0)


def test_a_run_slightly_before_the_fire_counts_for_it() -> None:
    # The worker's clock may be a little behind the scheduler's.
    started = datetime(2026, 6, 10, 11, 55, tzinfo=UTC) - FIRE_SLACK
    late = lateness(cron("*/5 * * * *"), "active", Activity(ago(days=1), started), NOW)
    assert late.late is False


def test_the_last_runs_duration_extends_the_grace() -> None:
    # A run is recorded when it ends: a 10-minute task fired at 11:55 has no row yet.
    runs = Activity(ago(days=1), last_started=ago(minutes=10, seconds=30), last_duration=600)
    late = lateness(cron("*/5 * * * *"), "active", runs, NOW)
    assert late.grace_seconds == 660
    assert late.expected_at == datetime(2026, 6, 10, 11, 45, tzinfo=UTC)
    assert late.late is False


def test_the_grace_can_be_set() -> None:
    runs = Activity(ago(days=1), last_started=ago(minutes=5, seconds=30))  # the 11:55 run
    late = lateness(cron("* * * * *"), "active", runs, NOW, grace_seconds=0)
    assert (late.late, late.expected_at, late.missed) == (
        True,
        datetime(2026, 6, 10, 12, 0, tzinfo=UTC),
        5,
    )


def test_missed_fires_are_counted_up_to_a_cap() -> None:
    late = lateness(cron("* * * * *"), "active", Activity(ago(days=3)), NOW)
    assert (late.late, late.missed) == (True, MISSED_CAP)


def test_a_one_shot_that_never_ran_is_late_once() -> None:
    at = ago(hours=2)
    late = lateness(once(at), "active", Activity(ago(days=1)), NOW)
    assert (late.late, late.expected_at, late.missed) == (True, at, 1)
    ran = lateness(once(at), "active", Activity(ago(days=1), at + timedelta(seconds=1)), NOW)
    assert (ran.late, ran.expected_at) == (False, at)
    assert lateness(once(ago(seconds=10)), "active", Activity(ago(days=1)), NOW).late is False


def test_a_cron_that_never_fires_is_never_late() -> None:
    assert lateness(cron("0 0 30 2 *"), "active", Activity(ago(days=900)), NOW).late is False


def test_a_hand_edited_cron_the_scheduler_cannot_read_is_not_late() -> None:
    assert previous_fire(cron("not a cron"), NOW) is None
    assert previous_fire(cron("* * * * *", "Mars/Olympus"), NOW) is None


# ---------------------------------------------------------------- interval


def test_an_interval_task_is_expected_once_per_interval_after_its_last_start() -> None:
    every = interval(300)  # grace 60 s
    on_time = lateness(every, "active", Activity(ago(days=1), ago(seconds=359)), NOW)
    assert (on_time.late, on_time.expected_at, on_time.missed) == (False, None, 0)
    late = lateness(every, "active", Activity(ago(days=1), ago(seconds=1000)), NOW)
    assert (late.late, late.missed, late.expected_at) == (True, 3, ago(seconds=100))


def test_an_interval_task_never_run_is_expected_one_interval_after_registration() -> None:
    assert lateness(interval(300), "active", Activity(ago(seconds=300)), NOW).late is False
    assert lateness(interval(300), "active", Activity(ago(seconds=361)), NOW).late is True


@given(
    seconds=st.integers(1, 7 * 86400),
    registered=st.integers(0, 30 * 86400),
    started=st.one_of(st.none(), st.integers(0, 30 * 86400)),
    duration=st.one_of(st.none(), st.floats(0, 3600)),
)
def test_an_interval_task_is_late_exactly_when_no_start_came_within_interval_and_grace(
    seconds: int, registered: int, started: int | None, duration: float | None
) -> None:
    runs = Activity(
        ago(seconds=registered),
        None if started is None else ago(seconds=started),
        duration,
    )
    late = lateness(interval(seconds), "active", runs, NOW)
    anchor = min(registered, registered if started is None else started)  # seconds ago
    silent = anchor - seconds - default_grace(seconds) - (duration or 0)
    assert late.late == (silent >= 0)
    assert (late.missed >= 1) == late.late
    assert late.missed <= MISSED_CAP


# ---------------------------------------------------------------- properties of cron


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]
CRONS = ["* * * * *", "*/7 * * * *", "30 * * * *", "30 2 * * *", "0 1,2,3 * * *", "15 4 * * 0"]
# Around the 2026 DST changes of the zones above, and an ordinary day.
MOMENTS = [
    datetime(2026, 3, 8, 7, 0, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
    datetime(2026, 4, 4, 15, 0, tzinfo=UTC),
    datetime(2026, 10, 25, 1, 0, tzinfo=UTC),
    datetime(2026, 11, 1, 6, 0, tzinfo=UTC),
    datetime(2026, 6, 10, 12, 0, tzinfo=UTC),
]
moments = st.builds(
    lambda base, minutes: base + timedelta(minutes=minutes),
    st.sampled_from(MOMENTS),
    st.integers(-240, 240),
)


def oracle_previous(config: TaskConfig, at: datetime) -> datetime | None:
    """What the scheduler did: the newest UTC minute, at most 8 days back, whose wall time
    pycron matches."""
    zone = ZoneInfo(timezone_of(config))
    minute = at.replace(second=0, microsecond=0)
    for _ in range(8 * 24 * 60):
        if pycron.is_now(config.schedule_config["cron"], minute.astimezone(zone)):
            return minute
        minute -= timedelta(minutes=1)
    return None


@settings(max_examples=150, deadline=None)
@given(expression=st.sampled_from(CRONS), zone=st.sampled_from(ZONES), at=moments)
def test_the_previous_fire_is_the_one_the_scheduler_fired_last(
    expression: str, zone: str, at: datetime
) -> None:
    config = cron(expression, zone)
    assert previous_fire(config, at) == oracle_previous(config, at)


@settings(max_examples=150, deadline=None)
@given(
    expression=st.sampled_from(CRONS),
    zone=st.sampled_from(ZONES),
    now=moments,
    registered_days=st.floats(0, 10),
    started_minutes=st.one_of(st.none(), st.integers(0, 3 * 24 * 60)),
)
def test_a_cron_task_is_late_exactly_when_its_last_due_fire_has_no_run(
    expression: str,
    zone: str,
    now: datetime,
    registered_days: float,
    started_minutes: int | None,
) -> None:
    config = cron(expression, zone)
    registered = now - timedelta(days=registered_days)
    started = None if started_minutes is None else now - timedelta(minutes=started_minutes)
    late = lateness(config, "active", Activity(registered, started), now)

    due = oracle_previous(config, now - timedelta(seconds=late.grace_seconds))
    assume(due is None or due != registered)
    expected = due if due is not None and due > registered else None
    assert late.expected_at == expected
    answered = started is not None and expected is not None and started >= expected - FIRE_SLACK
    assert late.late == (expected is not None and not answered)
    assert (late.missed >= 1) == late.late
    # A run that starts now answers every fire so far.
    assert lateness(config, "active", Activity(registered, now), now).late is False


# ---------------------------------------------------------------- failing since


def run(ok: bool, revision: str | None, minutes_ago: int = 0) -> Execution:
    started = NOW - timedelta(minutes=minutes_ago)
    return Execution(
        7, f"id-{minutes_ago}", 1, ok, started, started, 1.0, None, git_revision=revision
    )


def test_no_streak_without_runs_or_when_the_newest_succeeded() -> None:
    assert failing_since([]) is None
    assert failing_since([run(True, "b"), run(False, "a", 1)]) is None


def test_a_streak_after_a_success_on_another_revision_is_attributed_to_its_revision() -> None:
    runs = [run(False, "bbb", 1), run(False, "bbb", 2), run(False, "bbb", 3), run(True, "aaa", 4)]
    found = failing_since(runs)
    assert found is not None
    assert (found.failures, found.runs, found.revision) == (3, 4, "bbb")
    assert found.since == NOW - timedelta(minutes=3)
    assert (found.succeeded_before, found.previous_revision, found.attributed) == (
        True,
        "aaa",
        True,
    )


def test_a_streak_on_the_revision_that_succeeded_before_is_not_attributed() -> None:
    found = failing_since([run(False, "aaa", 1), run(True, "aaa", 2)])
    assert found is not None
    assert found.attributed is False


def test_a_streak_over_the_whole_window_names_its_oldest_revision() -> None:
    found = failing_since([run(False, "ccc", 1), run(False, "bbb", 2), run(False, "bbb", 3)])
    assert found is not None
    assert (found.failures, found.runs, found.revision) == (3, 3, "bbb")
    assert (found.succeeded_before, found.attributed) == (False, False)


def test_runs_recorded_before_revisions_existed_give_a_streak_without_revision() -> None:
    found = failing_since([run(False, None, 1), run(True, None, 2)])
    assert found is not None
    assert (found.revision, found.attributed) == (None, False)


@given(st.lists(st.tuples(st.booleans(), st.sampled_from([None, "a", "b", "c"])), max_size=25))
def test_the_streak_is_the_leading_failures(outcomes: list[tuple[bool, str | None]]) -> None:
    runs = [run(ok, revision, minutes) for minutes, (ok, revision) in enumerate(outcomes)]
    found = failing_since(runs)
    leading = next((i for i, (ok, _) in enumerate(outcomes) if ok), len(outcomes))
    if leading == 0:
        assert found is None
        return
    assert found is not None
    assert found.failures == leading
    assert found.runs == len(runs)
    assert found.revision == outcomes[leading - 1][1]
    assert found.succeeded_before == (leading < len(outcomes))
    if found.attributed:
        assert found.previous_revision != found.revision
        assert outcomes[leading][0] is True
