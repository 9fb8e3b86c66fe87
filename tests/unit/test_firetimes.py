"""Next fire times (`syncd.core.firetimes`) and how plans render them: cron as the TaskIQ scheduler
fires it (DST included), intervals as estimates, one-shots, and the markdown/text views."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pycron
import pytest

from syncd.core.firetimes import is_approximate, next_fire_times, timezone_of
from syncd.core.model import TaskConfig
from syncd.core.plan import FieldChange, Plan, TaskPlan, diff_configs
from syncd.views.plan_markdown import render_markdown
from syncd.views.plan_text import render_text
from syncd.views.text import format_local

BERLIN = ZoneInfo("Europe/Berlin")


def cron(expression: str, timezone: str = "UTC", **fields: Any) -> TaskConfig:
    schedule = {"cron": expression, "timezone": timezone}
    return TaskConfig(name="t", task_type="diagnostics.noop", scheduler_type="cron",
                      schedule_config=schedule, **fields)  # fmt: skip


def interval(seconds: int) -> TaskConfig:
    return TaskConfig(name="t", task_type="diagnostics.noop", scheduler_type="interval",
                      schedule_config={"interval": seconds})  # fmt: skip


def at(when: datetime) -> TaskConfig:
    return TaskConfig(name="t", task_type="diagnostics.noop", scheduler_type="date",
                      schedule_config={"at": when.isoformat()})  # fmt: skip


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def scheduler_fires(expression: str, timezone: str, now: datetime, count: int) -> list[datetime]:
    """What taskiq's scheduler does, minute by minute: local wall time matched by pycron."""
    zone, found = ZoneInfo(timezone), []
    minute = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while len(found) < count:
        if pycron.is_now(expression, minute.astimezone(zone)):
            found.append(minute)
        minute += timedelta(minutes=1)
    return found


# ---------------------------------------------------------------- cron


def test_daily_cron_in_utc() -> None:
    times = next_fire_times(cron("0 3 * * *"), utc(2026, 1, 10, 12), 3)
    assert times == [utc(2026, 1, 11, 3), utc(2026, 1, 12, 3), utc(2026, 1, 13, 3)]
    assert all(t.tzinfo is UTC for t in times)


def test_strictly_after_now() -> None:
    assert next_fire_times(cron("0 3 * * *"), utc(2026, 1, 10, 3), 1) == [utc(2026, 1, 11, 3)]


def test_sundays_at_midnight() -> None:
    times = next_fire_times(cron("0 0 * * 0"), utc(2026, 11, 25, 8), 5)  # a Wednesday
    assert times[0] == utc(2026, 11, 29)
    assert [t.weekday() for t in times] == [6] * 5
    assert all(b - a == timedelta(days=7) for a, b in itertools.pairwise(times))


def test_sundays_in_berlin_are_saturday_evenings_in_utc() -> None:
    times = next_fire_times(cron("0 0 * * 0", "Europe/Berlin"), utc(2026, 11, 25), 2)
    assert times == [utc(2026, 11, 28, 23), utc(2026, 12, 5, 23)]
    assert [t.astimezone(BERLIN).weekday() for t in times] == [6, 6]


def test_dst_start_in_berlin_shifts_utc_and_skips_the_missing_hour() -> None:
    # 2026-03-29: clocks jump from 02:00 CET to 03:00 CEST. 02:30 does not exist that day:
    # the scheduler (wall time matched each UTC minute) never fires it, unlike croniter.
    now = utc(2026, 3, 27, 12)
    half_past_two = next_fire_times(cron("30 2 * * *", "Europe/Berlin"), now, 3)
    assert half_past_two == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 30, 0, 30),
                             utc(2026, 3, 31, 0, 30)]  # fmt: skip
    three = next_fire_times(cron("0 3 * * *", "Europe/Berlin"), now, 3)
    assert three == [utc(2026, 3, 28, 2), utc(2026, 3, 29, 1), utc(2026, 3, 30, 1)]
    assert {t.astimezone(BERLIN).hour for t in three} == {3}


def test_dst_end_in_berlin_fires_the_repeated_hour_twice() -> None:
    # 2026-10-25: clocks go back from 03:00 CEST to 02:00 CET; 02:30 happens twice.
    now = utc(2026, 10, 24, 12)
    times = next_fire_times(cron("30 2 * * *", "Europe/Berlin"), now, 3)
    assert times == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30), utc(2026, 10, 26, 1, 30)]
    assert [format_local(t, "Europe/Berlin") for t in times] == [
        "2026-10-25 02:30 CEST", "2026-10-25 02:30 CET", "2026-10-26 02:30 CET",
    ]  # fmt: skip
    four = next_fire_times(cron("0 4 * * *", "Europe/Berlin"), now, 2)
    assert four == [utc(2026, 10, 25, 3), utc(2026, 10, 26, 3)]


def test_repeated_hour_still_ahead_when_now_is_inside_it() -> None:
    # 00:50 UTC is 02:50 CEST: the second 02:00 (01:00 UTC, CET) is still to come.
    times = next_fire_times(cron("0 2 * * *", "Europe/Berlin"), utc(2026, 10, 25, 0, 50), 2)
    assert times == [utc(2026, 10, 25, 1), utc(2026, 10, 26, 1)]


@pytest.mark.parametrize(
    "expression", ["*/20 * * * *", "30 2 * * *", "0 * * * *", "15 1-3 * * *", "0 0 * * 0"]
)
@pytest.mark.parametrize(
    "now",
    [utc(2026, 3, 28, 23), utc(2026, 3, 29, 0, 40), utc(2026, 10, 24, 23, 50),
     utc(2026, 10, 25, 0, 50), utc(2026, 10, 25, 1, 10)],
)  # fmt: skip
def test_cron_matches_the_scheduler_minute_by_minute(expression: str, now: datetime) -> None:
    expected = scheduler_fires(expression, "Europe/Berlin", now, 5)
    assert next_fire_times(cron(expression, "Europe/Berlin"), now, 5) == expected


def test_cron_that_never_matches_has_no_fire_times() -> None:
    assert next_fire_times(cron("0 0 30 2 *"), utc(2026, 1, 1), 5) == []


def test_manual_disabled_and_zero_count_never_fire() -> None:
    manual = TaskConfig(name="t", task_type="x", scheduler_type="manual")
    assert next_fire_times(manual, utc(2026, 1, 1), 5) == []
    assert next_fire_times(cron("* * * * *", enabled=False), utc(2026, 1, 1), 5) == []
    assert next_fire_times(cron("* * * * *"), utc(2026, 1, 1), 0) == []


def test_timezone_of_is_declared_for_cron_and_utc_otherwise() -> None:
    assert timezone_of(cron("0 3 * * *", "Europe/Berlin")) == "Europe/Berlin"
    assert timezone_of(interval(60)) == "UTC"
    assert timezone_of(at(utc(2030, 1, 1))) == "UTC"


# ---------------------------------------------------------------- interval and at


def test_interval_is_now_plus_multiples_and_labelled_approximate() -> None:
    now = utc(2026, 5, 1, 12, 0, 7)
    assert next_fire_times(interval(300), now, 3) == [now + timedelta(seconds=300 * k)
                                                      for k in (1, 2, 3)]  # fmt: skip
    assert is_approximate(interval(300))
    assert not is_approximate(cron("0 3 * * *"))
    assert not is_approximate(at(utc(2030, 1, 1)))


def test_at_in_the_future_fires_once() -> None:
    when = datetime(2030, 1, 1, 10, tzinfo=BERLIN)
    assert next_fire_times(at(when), utc(2026, 1, 1), 5) == [utc(2030, 1, 1, 9)]


def test_at_in_the_past_or_now_never_fires() -> None:
    assert next_fire_times(at(utc(2026, 1, 1)), utc(2026, 1, 2), 5) == []
    assert next_fire_times(at(utc(2026, 1, 1)), utc(2026, 1, 1), 5) == []


# ---------------------------------------------------------------- rendering in plans

NOW = utc(2026, 3, 27, 12)
BEFORE = cron("30 2 * * *", "Europe/Berlin")
AFTER = cron("0 6 * * 1-5", "America/New_York")


def rescheduled(before: TaskConfig = BEFORE, after: TaskConfig = AFTER) -> TaskPlan:
    return TaskPlan(
        name="report", action="update", state="active", config_id=4, before=before, after=after,
        changes=diff_configs(before, after), path="taskdefs/r.yaml", line=3, write_row=True,
    )  # fmt: skip


def created(config: TaskConfig) -> TaskPlan:
    return TaskPlan(
        name="fresh", action="create", state="active", after=config,
        changes=tuple(FieldChange(f, None, v) for f, v in config.field_values().items()),
        path="taskdefs/f.yaml", line=1, write_row=True,
    )  # fmt: skip


def table_rows(markdown: str) -> list[list[str]]:
    start = markdown.index("| # |")
    lines = markdown[start:].split("\n\n", maxsplit=1)[0].splitlines()
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_markdown_lists_five_fire_times_before_and_after_in_utc_and_local() -> None:
    md = render_markdown(Plan(tasks=(rescheduled(),)), now=NOW)
    assert "Next 5 fire times (from 2026-03-27 12:00 UTC):" in md
    assert ("| # | before, UTC | before, Europe/Berlin | after, UTC | "
            "after, America/New\\_York |") in md  # fmt: skip
    rows = table_rows(md)
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    before_utc = [format_local(t, "UTC") for t in next_fire_times(BEFORE, NOW, 5)]
    assert [r[1] for r in rows] == before_utc
    assert rows[1][2] == "2026-03-30 02:30 CEST"  # 03-29's 02:30 does not exist
    assert all(r[4].endswith(("06:00 EDT", "06:00 EST")) for r in rows)
    assert rows[0][3] == "2026-03-30 10:00 UTC"  # Friday 10:00 UTC has passed: Monday


def test_markdown_fire_times_only_for_schedule_changes_and_only_with_now() -> None:
    priority_only = TaskPlan(
        name="p", action="update", state="active", before=BEFORE, after=BEFORE,
        changes=(FieldChange("priority", 5, 8),), write_row=True,
    )  # fmt: skip
    assert "fire times" not in render_markdown(Plan(tasks=(priority_only,)), now=NOW)
    assert "fire times" not in render_markdown(Plan(tasks=(rescheduled(),)))
    manual = TaskConfig(name="fresh", task_type="x", scheduler_type="manual")
    assert "fire times" not in render_markdown(Plan(tasks=(created(manual),)), now=NOW)


def test_markdown_created_task_shows_after_only_and_interval_is_marked_estimate() -> None:
    md = render_markdown(Plan(tasks=(created(interval(900)),)), now=NOW)
    assert "| # | after, UTC, approximate |" in md
    assert [r[1] for r in table_rows(md)][:2] == ["2026-03-27 12:15 UTC", "2026-03-27 12:30 UTC"]
    assert "interval times are estimates" in md


def test_markdown_disabling_says_never() -> None:
    disabled = cron("30 2 * * *", "Europe/Berlin", enabled=False)
    md = render_markdown(Plan(tasks=(rescheduled(BEFORE, disabled),)), now=NOW)
    assert "never (disabled)" in md


def test_markdown_with_fire_times_stays_within_max_chars() -> None:
    tasks = tuple(
        rescheduled(BEFORE, cron(f"{i % 60} 6 * * *", "Europe/Berlin")) for i in range(400)
    )
    plan = Plan(tasks=tuple(replace(t, name=f"t{i:04d}") for i, t in enumerate(tasks)))
    for max_chars in (60_000, 10_000, 2_000):
        md = render_markdown(plan, max_chars=max_chars, now=NOW)
        assert len(md) <= max_chars
        assert md.count("<details>") == md.count("</details>")
        assert "more changes not shown" in md


def test_text_shows_fire_times_only_when_verbose() -> None:
    plan = Plan(tasks=(rescheduled(),))
    assert "fire times" not in render_text(plan, now=NOW)
    text = render_text(plan, verbose=True, now=NOW)
    assert "next 5 fire times before (Europe/Berlin):" in text
    assert "next 5 fire times after (America/New_York):" in text
    assert "2026-03-28 01:30 UTC = 2026-03-28 02:30 CET" in text
