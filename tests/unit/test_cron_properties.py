"""normalize_cron properties: taskiq fires its output exactly when croniter fires its input."""

from __future__ import annotations

import calendar
import functools
from datetime import UTC, datetime, timedelta

from croniter import CroniterBadDateError, croniter
from hypothesis import given, settings
from hypothesis import strategies as st
from taskiq.cli.scheduler.run import is_cron_task_now

from schemas.cron import CronError, normalize_cron

# (low, high, names) per field as standard cron writes them; names[i] stands for low + i.
MINUTE = (0, 59, ())
HOUR = (0, 23, ())
DAY_OF_MONTH = (1, 31, ())
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
MONTH = (1, 12, MONTHS)
DAY_OF_WEEK = (0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
Field = tuple[int, int, tuple[str, ...]]

NICKNAMES = ["@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"]


def spellings(field: Field, value: int) -> list[str]:
    """`value` as a number, zero-padded, and by name in several cases where it has one."""
    low, _, names = field
    texts = [str(value), f"{value:02d}"]
    if names and value - low < len(names):
        name = names[value - low]
        texts += [name, name.upper(), name.capitalize()]
    return texts


@st.composite
def value_text(draw: st.DrawFn, field: Field) -> str:
    """Any value, with the bounds (0, 7, 31, 12...) drawn often: bugs live there."""
    low, high, _ = field
    value = draw(st.one_of(st.sampled_from([low, high]), st.integers(low, high)))
    return draw(st.sampled_from(spellings(field, value)))


def step_value(field: Field) -> st.SearchStrategy[int]:
    """A step within the field's range, past it (which selects the range's start alone), or
    the largest step cron's integers hold there."""
    _, high, _ = field
    largest = 2**31 - 1 - high
    return st.one_of(
        st.integers(1, high),
        st.integers(high + 1, 3 * high),
        st.sampled_from([high + 1, 1000, largest]),
    )


@st.composite
def range_text(draw: st.DrawFn, field: Field) -> str:
    """`A-B`, `A-B/S`, or (not in day-of-week, where it is refused) `A/S`."""
    low, high, _ = field
    # Equal ranges (`5-5`) stay out: croniter reads them as the whole field.
    start = draw(st.integers(low, high - 1))
    end = draw(st.one_of(st.just(high), st.integers(start + 1, high)))
    start_text = draw(st.sampled_from(spellings(field, start)))
    end_text = draw(st.sampled_from(spellings(field, end)))
    step = draw(step_value(field))
    shapes = [f"{start_text}-{end_text}", f"{start_text}-{end_text}/{step}"]
    if field is not DAY_OF_WEEK:
        shapes.append(f"{start_text}/{step}")
    return draw(st.sampled_from(shapes))


@functools.cache
def item_text(field: Field) -> st.SearchStrategy[str]:
    """A list item other than `*`: a value or a range."""
    return st.one_of(value_text(field), range_text(field))


@functools.cache
def field_text(field: Field) -> st.SearchStrategy[str]:
    """`*`, `*/S`, or a list; a '*' only ever leads, so that croniter's "contains '*'"
    test for the day rule agrees with cron's "starts with '*'"."""
    star = step_value(field).map(lambda step: f"*/{step}")
    items = st.lists(item_text(field), min_size=1, max_size=3).map(",".join)
    return st.one_of(st.just("*"), star, items, st.tuples(star, items).map(",".join))


BLANKS = st.sampled_from([" ", " ", " ", "  ", "\t", " \t "])


def spaced(texts: list[str], draw: st.DrawFn) -> str:
    """Fields joined by assorted blanks, with some before and after."""
    joined = "".join(text + draw(BLANKS) for text in texts).rstrip()
    return draw(st.sampled_from(["", " ", "\t"])) + joined + draw(st.sampled_from(["", " "]))


@st.composite
def five_fields(draw: st.DrawFn) -> str:
    fields = [MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK]
    return spaced([draw(field_text(field)) for field in fields], draw)


@st.composite
def midnight_fields(draw: st.DrawFn) -> str:
    """Fires at 00:00 at most: the day fields are what varies."""
    fields = [DAY_OF_MONTH, MONTH, DAY_OF_WEEK]
    return spaced(["0", "0", *(draw(field_text(field)) for field in fields)], draw)


@st.composite
def nickname(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(NICKNAMES))
    return draw(st.sampled_from([name, name.upper()]))


valid_expressions = st.one_of(five_fields(), nickname())


@st.composite
def month_end_windows(draw: st.DrawFn, days: int = 8) -> tuple[datetime, datetime]:
    """Whole days (8: all weekdays) that always cross a month end, leap Februaries too."""
    year, month = draw(st.integers(2023, 2025)), draw(st.integers(1, 12))
    last_day = calendar.monthrange(year, month)[1]
    start = datetime(year, month, last_day, tzinfo=UTC) - timedelta(days=draw(st.integers(0, 6)))
    return start, start + timedelta(days=days)


def taskiq_fires(
    expression: str, start: datetime, end: datetime, every: timedelta = timedelta(minutes=1)
) -> set[datetime]:
    """What the taskiq scheduler (pycron underneath) fires, asked at each `every` from start."""
    moments = (start + i * every for i in range((end - start) // every))
    return {moment for moment in moments if is_cron_task_now(expression, moment)}


def croniter_fires(expression: str, start: datetime, end: datetime) -> set[datetime]:
    """What croniter fires; implement_cron_bug gives cron's starts-with-'*' day rule."""
    schedule = croniter(
        expression,
        start - timedelta(seconds=1),
        ret_type=datetime,
        implement_cron_bug=True,
        max_years_between_matches=1,
    )
    fires: set[datetime] = set()
    try:
        while (moment := schedule.get_next()) < end:
            fires.add(moment)
    except CroniterBadDateError:  # no fire within a year, e.g. `0 0 30 2 *`
        pass
    return fires


@settings(max_examples=80, deadline=None)
@given(expression=valid_expressions, window=month_end_windows())
def test_taskiq_fires_normal_form_when_croniter_fires_original(
    expression: str, window: tuple[datetime, datetime]
) -> None:
    normal = normalize_cron(expression)
    assert taskiq_fires(normal, *window) == croniter_fires(expression, *window)


@settings(max_examples=1000, deadline=None)
@given(expression=midnight_fields(), window=month_end_windows(days=66))
def test_taskiq_fires_on_the_days_croniter_fires(
    expression: str, window: tuple[datetime, datetime]
) -> None:
    # Minute and hour are `0 0`, so asking pycron at each midnight is asking at every fire
    # time; that makes two months of days cheap enough for many examples.
    normal = normalize_cron(expression)
    fires = taskiq_fires(normal, *window, every=timedelta(days=1))
    assert fires == croniter_fires(expression, *window)


@settings(max_examples=300, deadline=None)
@given(valid_expressions)
def test_normal_form_is_plain_and_idempotent(expression: str) -> None:
    normal = normalize_cron(expression)
    assert normalize_cron(normal) == normal
    assert normal.isascii()
    assert normal == " ".join(normal.split())
    assert len(normal.split(" ")) == 5
    assert not any(char.isalpha() for char in normal)


CRON_ALPHABET = " \t*/,-0123456789@LW#?janfebmonsatdcly\u0663\uff10\x00"
cron_like_words = st.text(alphabet=CRON_ALPHABET.replace(" ", "").replace("\t", ""), max_size=6)
cron_like_text = st.one_of(
    st.text(),
    st.text(alphabet=CRON_ALPHABET, max_size=40),
    st.lists(cron_like_words, min_size=1, max_size=7).map(" ".join),
)


def normalise_or_refusal(text: str) -> str | CronError:
    try:
        return normalize_cron(text)
    except CronError as error:
        return error


@settings(max_examples=600, deadline=None)
@given(cron_like_text)
def test_any_text_is_normalised_or_refused_with_cron_error(text: str) -> None:
    # Any other exception escapes and fails the test.
    outcome = normalise_or_refusal(text)
    if isinstance(outcome, CronError):
        assert str(outcome)
        assert "\n" not in str(outcome)
    else:
        assert normalize_cron(outcome) == outcome
