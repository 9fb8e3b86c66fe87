"""normalize_cron: canonical forms, rewrites of pycron's traps, and every rejection message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from taskiq.cli.scheduler.run import is_cron_task_now

from schemas.cron import CronError, normalize_cron

NORMALISED = [
    # names, Sunday as 7, nicknames, whitespace
    ("0 0 * * 7", "0 0 * * 0"),
    ("0 0 * * SUN", "0 0 * * 0"),
    ("0 9 * * MON-FRI", "0 9 * * 1-5"),
    ("0 9 * * mon,Wed,FRI", "0 9 * * 1,3,5"),
    ("0 0 1 jan *", "0 0 1 1 *"),
    ("0 0 1 JAN,mar *", "0 0 1 1,3 *"),
    ("0 0 1 jun-AUG *", "0 0 1 6-8 *"),
    ("@hourly", "0 * * * *"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"),
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@Daily", "0 0 * * *"),
    ("  @daily\t", "0 0 * * *"),
    ("0  0 * *  *", "0 0 * * *"),
    ("  0 0\t* * 1  ", "0 0 * * 1"),
    # shapes that collapse to a canonical one
    ("*/1 * * * *", "* * * * *"),
    ("0-59 * * * *", "* * * * *"),
    ("05 * * * *", "5 * * * *"),
    ("1-1 * * * *", "1 * * * *"),
    ("5-5 * * * *", "5 * * * *"),
    ("0,15,30,45 * * * *", "*/15 * * * *"),
    ("0-59/15 * * * *", "*/15 * * * *"),
    ("*/30 * * * *", "0,30 * * * *"),
    ("10-50/20 * * * *", "10,30,50 * * * *"),
    ("5-59/15 * * * *", "5-50/15 * * * *"),
    ("1,2,3,7 * * * *", "1-3,7 * * * *"),
    ("3,1,2 * * * *", "1-3 * * * *"),
    ("0 0 * */3 *", "0 0 * */3 *"),
    ("0 0 * * 0-6", "0 0 * * *"),
    ("0 0 * * 0-7", "0 0 * * *"),
    ("0 0 * * sun-sat", "0 0 * * *"),
    # a step past its range selects the range's first value alone, as cron does
    ("4 2-23/24 * * *", "4 2 * * *"),
    ("25 */24 * * *", "25 0 * * *"),
    ("05 17-22/30 * * 1-5", "5 17 * * 1-5"),
    ("0-59/65 10 * * *", "0 10 * * *"),
    ("*/60 * * * *", "0 * * * *"),
    ("*/2147483588 * * * *", "0 * * * *"),  # the largest step cron's integers take here
    ("0 0 */31 * *", "0 0 1 * *"),
    ("0 0 * 1-12/12 *", "0 0 * 1 *"),
    ("0 0 * * 1-7/10", "0 0 * * 1"),
    ("0 0 * * */8", "0 0 * * 0"),
    ("5/70 * * * *", "5 * * * *"),
    # pycron traps, rewritten into forms it evaluates like cron
    ("5/15 * * * *", "5-50/15 * * * *"),  # N/step: pycron never fires it
    ("0 0 10/10 * *", "0 0 10,20,30 * *"),
    ("0 0 * nov/1 *", "0 0 * 11,12 *"),
    ("0 0 * * 5-7", "0 0 * * 0,5,6"),  # 7 inside a range
    ("0 0 * * 1-7/2", "0 0 * * 0,1,3,5"),  # pycron misses Sunday
    ("0 0 * * */7", "0 0 * * 0"),
    # the day rule: cron ANDs when a day field starts with '*', ORs otherwise
    ("0 0 */2 * 1", "0 0 */2 * 1"),  # AND in both
    ("0 0 1 * 1", "0 0 1 * 1"),  # OR in both
    ("0 0 1-31 * 1", "0 0 * * *"),  # OR with a full field: every day
    ("0 0 1 * 0-6", "0 0 * * *"),
    ("0 0 */1 * 1", "0 0 * * 1"),  # AND with a full field: Mondays
    ("0 0 1,*/10 * 1", "0 0 1-31/10 * 1"),  # '*' not first: OR, pycron would AND
    ("0 0 */2,4 * 1", "0 0 */2,4 * 1"),
    ("0 0 */30 * 1", "0 0 */30 * 1"),
    ("0 0 1,15 * */2,3", "0 0 1,15 * */2,3"),
    ("0 0 1,15 * */7", "0 0 1,15 * */7"),  # AND: a '*' must stay in a day field
    ("0 0 */40 * 1", "0 0 */31 * 1"),  # AND with day 1 alone: still star-led
]


@pytest.mark.parametrize(("expression", "expected"), NORMALISED)
def test_normalises_to_canonical_form(expression: str, expected: str) -> None:
    assert normalize_cron(expression) == expected


@pytest.mark.parametrize(("expression", "expected"), NORMALISED)
def test_canonical_form_is_a_fixed_point(expression: str, expected: str) -> None:
    assert normalize_cron(expected) == expected


MONDAY = datetime(2024, 1, 1, tzinfo=UTC)  # Mon 1 Jan 2024; the window below spans 14 days


def fire_times(expression: str, days: int = 14) -> list[datetime]:
    """When the taskiq scheduler (pycron) would fire `expression`, minute by minute."""
    moments = (MONDAY + timedelta(minutes=i) for i in range(days * 24 * 60))
    return [moment for moment in moments if is_cron_task_now(expression, moment)]


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2024, 1, day, hour, minute, tzinfo=UTC)


# Each of these is registered wrongly if passed to pycron as written (measured, pycron 3.3).
TRAPS = [
    ("0 0 * * 7", [at(7), at(14)]),  # pycron: never
    ("0 0 * * 5-7", [at(5), at(6), at(7), at(12), at(13), at(14)]),
    ("0 0 * * 1-7/2", [at(d) for d in (1, 3, 5, 7, 8, 10, 12, 14)]),  # pycron: no Sundays
    ("5/20 0 1 * *", [at(1, 0, 5), at(1, 0, 25), at(1, 0, 45)]),  # pycron: never
    ("0 0 */2 * 1", [at(1)]),  # odd days AND Mondays: 1 Jan only (8 Jan is even)
    ("0 0 1,*/10 * 1", [at(d) for d in (1, 8, 11)]),  # OR: 1st, 11th, Mondays
    ("0 0 1-31 * 1", [at(d) for d in range(1, 15)]),  # OR with a full field: daily
    ("0 0 1 jan *", [at(1)]),  # pycron: month names never match
    ("0  0 * * 1", [at(1), at(8)]),  # pycron: ValueError on the double space
]

# Steps past their range, with the times cron fires them in the window.
LARGE_STEPS = [
    ("4 2-23/24 * * *", [at(d, 2, 4) for d in range(1, 15)]),
    ("25 */24 * * *", [at(d, 0, 25) for d in range(1, 15)]),
    ("05 17-22/30 * * 1-5", [at(d, 17, 5) for d in (1, 2, 3, 4, 5, 8, 9, 10, 11, 12)]),
    ("0-59/65 10 * * *", [at(d, 10) for d in range(1, 15)]),
    ("0 0 */40 * 1", [at(1)]),  # AND: day 1 and a Monday
    ("0 0 * * 2-7/9", [at(2), at(9)]),  # Tuesdays
]


@pytest.mark.parametrize(("expression", "expected"), TRAPS)
def test_normalised_traps_fire_in_taskiq_as_in_cron(
    expression: str, expected: list[datetime]
) -> None:
    assert fire_times(normalize_cron(expression)) == expected


@pytest.mark.parametrize(("expression", "expected"), LARGE_STEPS)
def test_steps_past_their_range_fire_as_in_cron(expression: str, expected: list[datetime]) -> None:
    assert fire_times(normalize_cron(expression)) == expected


REJECTED = [
    ("", "empty cron expression"),
    (" \t ", "empty cron expression"),
    ("0 0 *", "expected 5 fields (minute hour day-of-month month day-of-week), got 3"),
    ("0 0 0 * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 6"),
    ("0 0 0 * * * 2030", "expected 5 fields (minute hour day-of-month month day-of-week), got 7"),
    ("@reboot", "@reboot has no meaning for a scheduler"),
    ("@fortnightly", "unknown nickname '@fortnightly'"),
    ("@daily 0", "@daily must stand alone"),
    ("0 0 L * *", "day-of-month: 'L' (last day) is not standard cron"),
    ("0 0 LW * *", "day-of-month: 'L' (last day) in 'LW'"),
    ("0 0 L-3 * *", "day-of-month: 'L' (last day) is not standard cron in 'L-3'"),
    ("0 0 * * 5L", "day-of-week: 'L' (last day) in '5L'"),
    ("0 0 15W * *", "day-of-month: 'W' (nearest weekday) in '15W'"),
    ("0 0 * * 5#3", "day-of-week: '#' (nth weekday of the month) in '5#3'"),
    ("0 0 * * fri#1", "day-of-week: '#' (nth weekday of the month)"),
    ("0 0 ? * 1", "day-of-month: '?' (Quartz's 'no specific value'; use '*')"),
    ("61 * * * *", "minute: 61 is out of range 0-59"),
    ("0 24 * * *", "hour: 24 is out of range 0-23"),
    ("0 0 0 * *", "day-of-month: 0 is out of range 1-31"),
    ("0 0 32 * *", "day-of-month: 32 is out of range 1-31"),
    ("0 0 * 13 *", "month: 13 is out of range 1-12"),
    ("0 0 * 0 *", "month: 0 is out of range 1-12"),
    ("0 0 * * 8", "day-of-week: 8 is out of range 0-7"),
    ("0 0 * * 1-8", "day-of-week: 8 is out of range 0-7"),
    ("9" * 5000 + " * * * *", "minute: 99999999999999999... is out of range 0-59"),
    ("*/0 * * * *", "minute: step 0 in '*/0' must be at least 1"),
    ("0 0 1-10/0 * *", "day-of-month: step 0 in '1-10/0' must be at least 1"),
    ("0 5/00 * * *", "hour: step 0 in '5/00' must be at least 1"),
    (
        "*/2147483589 * * * *",
        "minute: step 2147483589 in '*/2147483589' is too large for cron's integers "
        "(at most 2147483588)",
    ),
    ("0 0 * * 1-3/2147483641", "day-of-week: step 2147483641 in '1-3/2147483641' is too large"),
    ("*/" + "9" * 5000 + " * * * *", "minute: step 99999999999999999... in '*/999999999999999"),
    ("*/-1 * * * *", "minute: step '-1' is not a number in '*/-1'"),
    ("*/ * * * *", "minute: step is missing in '*/'"),
    ("*/x * * * *", "minute: step 'x' is not a number in '*/x'"),
    ("*/2/3 * * * *", "minute: step '2/3' is not a number"),
    ("1,,2 * * * *", "minute: empty list item in '1,,2'"),
    ("0 1, * * *", "hour: empty list item in '1,'"),
    ("0 ,1 * * *", "hour: empty list item in ',1'"),
    ("5-1 * * * *", "minute: range '5-1' runs backwards (5 > 1)"),
    ("0 0 * * fri-mon", "day-of-week: range 'fri-mon' runs backwards (5 > 1)"),
    ("0 0 * * sat-sun", "e.g. 'sat-6,0-sun'"),
    ("0 0 * nov-feb *", "month: range 'nov-feb' runs backwards (11 > 2)"),
    ("1-2-3 * * * *", "minute: '1-2-3' is not a valid range"),
    ("1- * * * *", "minute: a value is missing in '1-'"),
    ("-5 * * * *", "minute: a value is missing in '-5'"),
    ("*-5 * * * *", "minute: '*' is not a number in '*-5'"),
    ("x * * * *", "minute: 'x' is not a number"),
    ("0 0 * foo *", "month: 'foo' is not a number or a month name (jan..dec)"),
    ("0 0 * * jul", "day-of-week: 'jul' is not a number or a day name (sun..sat)"),
    ("0 0 * * monday", "day-of-week: 'monday' is not a number or a day name"),
    ("0 0 * * 1/2", "day-of-week: '1/2' is ambiguous"),
    ("0 0 * * mon/2", "write 'mon-6/2' or 'mon-7/2'"),
    ("\u0663 * * * *", "non-ASCII character '\u0663' at position 0"),  # Arabic-Indic 3
    ("\uff10 0 * * *", "non-ASCII character '\uff10' at position 0"),  # fullwidth 0
    ("0 0 * * 1\u00a0", "non-ASCII character '\\xa0' at position 9"),  # no-break space
    ("0 0 * * 1\x00", "day-of-week: '1\\x00' is not a number or a day name"),
]


@pytest.mark.parametrize(("expression", "message"), REJECTED)
def test_rejects_with_precise_message(expression: str, message: str) -> None:
    with pytest.raises(CronError) as caught:
        normalize_cron(expression)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_cron_error_is_a_value_error() -> None:
    assert issubclass(CronError, ValueError)


def test_results_are_cached() -> None:
    expression = "17 3 * * 2"
    normalize_cron(expression)
    hits = normalize_cron.cache_info().hits
    normalize_cron(expression)
    assert normalize_cron.cache_info().hits == hits + 1
