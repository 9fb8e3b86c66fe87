"""never_fires: which valid expressions name no date at all, and why."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from croniter import CroniterBadDateError, croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.cron import CronError, never_fires, normalize_cron
from tests.unit.test_cron_properties import (
    DAY_OF_WEEK,
    field_text,
    midnight_fields,
    spaced,
    valid_expressions,
)

NEVER = [
    ("0 0 30 2 *", "day-of-month 30 never occurs in February"),
    ("0 0 31 2 *", "day-of-month 31 never occurs in February"),
    ("0 0 30,31 feb *", "days-of-month 30,31 never occur in February"),
    ("0 0 31 4,6,9,11 *", "day-of-month 31 never occurs in April, June, September or November"),
    ("0 0 31 2-6/2 *", "day-of-month 31 never occurs in February, April or June"),
    ("0 0 30 2 */1", "day-of-month 30 never occurs in February"),  # AND with every weekday
    (
        "0 0 30 2 */2",
        "day-of-month 30 never occurs in February (day-of-week starts with '*', so cron "
        "requires both day fields to match)",
    ),
    ("15 8 31 9/2 *", "day-of-month 31 never occurs in September or November"),
]


@pytest.mark.parametrize(("expression", "reason"), NEVER)
def test_names_why_an_expression_never_fires(expression: str, reason: str) -> None:
    assert (never_fires(expression) or "").startswith(reason)


@pytest.mark.parametrize(("expression", "reason"), NEVER)
def test_normalised_form_never_fires_for_the_same_reason(expression: str, reason: str) -> None:
    assert never_fires(normalize_cron(expression)) == never_fires(expression)


FIRES = [
    "* * * * *",
    "@yearly",
    "0 0 29 2 *",  # leap years
    "0 0 29 2 */3",  # 29 February is a Sunday in 2032
    "0 0 29-31 2 *",  # 29 February again
    "0 0 30 2 1",  # OR: every Monday in February
    "0 0 30 2 0-7",  # OR: every day, as the day-of-week field does not start with '*'
    "0 0 31 4,6,9,11 sun",  # OR: Sundays
    "0 0 30 2 0,*/2",  # '*' not first: OR
    "0 0 */30 2 *",  # 1 February
    "0 0 31 2,3 *",  # 31 March
    "0 0 31 */2 *",  # 31 January
    "0 0 30 2-4 *",  # 30 March and 30 April
]


@pytest.mark.parametrize("expression", FIRES)
def test_expressions_that_fire_have_no_reason(expression: str) -> None:
    assert never_fires(expression) is None


def test_refuses_invalid_expressions_as_normalize_cron_does() -> None:
    with pytest.raises(CronError, match="day-of-month: 32 is out of range 1-31"):
        never_fires("0 0 32 2 *")


def test_results_are_cached() -> None:
    expression = "0 0 30 2 *"
    never_fires(expression)
    hits = never_fires.cache_info().hits
    never_fires(expression)
    assert never_fires.cache_info().hits == hits + 1


# --- against croniter: over 28 years every date that exists falls on every weekday --------


def croniter_ever_fires(expression: str) -> bool:
    """Whether croniter fires within 28 years of 2024 (implement_cron_bug: cron's day rule)."""
    schedule = croniter(
        expression,
        datetime(2024, 1, 1, tzinfo=UTC),
        ret_type=datetime,
        implement_cron_bug=True,
        max_years_between_matches=29,
    )
    try:
        schedule.get_next()
    except CroniterBadDateError:
        return False
    return True


# Days and months that rarely meet: the last days of the month, the shorter months.
LATE_DAYS = st.lists(
    st.sampled_from(["29", "30", "31", "30-31", "29-31/2"]), min_size=1, max_size=2
)
SHORT_MONTHS = st.lists(
    st.sampled_from(["2", "feb", "4", "apr", "6", "9", "11", "4-11/5", "*/40"]),
    min_size=1,
    max_size=3,
)


@st.composite
def late_day_fields(draw: st.DrawFn) -> str:
    """Midnight on late days of short months: often never, and often only through the OR."""
    days = ",".join(draw(LATE_DAYS))
    months = ",".join(draw(SHORT_MONTHS))
    # Mostly star-led, since a day-of-week field that does not start with '*' always fires.
    weekdays = draw(st.one_of(st.sampled_from(["*", "*/2", "*/7"]), field_text(DAY_OF_WEEK)))
    return spaced(["0", "0", days, months, weekdays], draw)


@settings(max_examples=400, deadline=None)
@given(st.one_of(late_day_fields(), midnight_fields()))
def test_never_fires_exactly_when_croniter_never_fires(expression: str) -> None:
    # field_text lets a '*' only lead, so croniter's day rule and cron's agree here.
    assert (never_fires(expression) is None) == croniter_ever_fires(expression)


@settings(max_examples=300, deadline=None)
@given(valid_expressions)
def test_original_and_normalised_forms_agree(expression: str) -> None:
    assert never_fires(normalize_cron(expression)) == never_fires(expression)
