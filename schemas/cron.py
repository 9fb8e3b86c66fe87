"""Cron expressions that the TaskIQ scheduler fires exactly when standard cron would.

TaskIQ matches cron with pycron, which silently mis-fires parts of standard (Vixie) cron, so
`normalize_cron` parses by cron's rules and renders a form pycron reads the same way; the loader
registers that form. `never_fires` tells which valid expressions name no date at all (30 February),
so that the loader can warn. Pure: no I/O, no clock, no time zones (handled by the caller).
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass

__all__ = ["CronError", "never_fires", "normalize_cron"]


class CronError(ValueError):
    """An expression that cannot be registered faithfully; str() is a one-line human message."""


_C_INT_MAX = 2**31 - 1  # cronie parses numbers into a C int


@dataclass(frozen=True)
class _Field:
    """One of the five fields: its name and the values it accepts."""

    name: str
    low: int
    high: int  # largest value the text may use (day-of-week: 7, Sunday again)
    last: int  # largest distinct value (day-of-week: 6, since 7 folds to 0)
    names: tuple[str, ...] = ()  # names[i] stands for the value low + i

    @property
    def universe(self) -> frozenset[int]:
        return frozenset(range(self.low, self.last + 1))

    def fold(self, value: int) -> int:
        # Only day-of-week has high > last: 7 is Sunday, and pycron only knows 0.
        return value if value <= self.last else value - (self.last - self.low + 1)

    @property
    def max_step(self) -> int:
        """The largest step cronie handles soundly in this field.

        cronie accepts any step from 1 (a step past the range selects the range's first value)
        but keeps it in a C int and adds it to a value up to `high`: beyond this the sum
        overflows, and cronie wraps the step or rejects the line depending on the platform.
        """
        return _C_INT_MAX - self.high

    def progression(self, step: int) -> frozenset[int]:
        """The values `*/step` selects: cron counts steps from the field's lowest value."""
        return frozenset(range(self.low, self.last + 1, step))


MINUTE = _Field("minute", 0, 59, 59)
HOUR = _Field("hour", 0, 23, 23)
DAY_OF_MONTH = _Field("day-of-month", 1, 31, 31)
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
MONTH = _Field("month", 1, 12, 12, MONTHS)
DAY_OF_WEEK = _Field("day-of-week", 0, 7, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
FIELDS = (MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK)

NICKNAMES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

# Cron separates fields by blanks; other ASCII control characters are junk, not separators.
_BLANKS = re.compile(r"[ \t\n\r\f\v]+")
_QUARTZ_LAST = re.compile(r"(\d+|[a-z]{3})?lw?")
_QUARTZ_WEEKDAY = re.compile(r"\d*w")


@dataclass(frozen=True)
class _Schedule:
    """What an expression means under cron's rules: the value sets plus the day rule."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    # Vixie cron sets DOM_STAR/DOW_STAR when a field's text *starts with* '*', and then
    # requires both day fields to match (AND); otherwise either one suffices (OR).
    days_star: bool
    weekdays_star: bool

    @property
    def is_day_intersection(self) -> bool:
        return self.days_star or self.weekdays_star


@functools.lru_cache(maxsize=1024)
def normalize_cron(expression: str) -> str:
    """Return the canonical 5-field form pycron fires exactly like standard cron.

    Raises CronError when the expression is invalid or cannot be registered faithfully.
    """
    # Cached: it runs for every task, and thousands of tasks share a handful of expressions.
    return _render(_parse(expression))


@functools.lru_cache(maxsize=1024)
def never_fires(expression: str) -> str | None:
    """Why a valid expression can never fire (e.g. on 30 February), or None if it ever fires.

    Takes the original or the normalised form (they mean the same); raises CronError when the
    expression is invalid, as normalize_cron does.
    """
    return _why_never(_parse(expression))


# --- parsing: text -> _Schedule, with cron's (not pycron's) meaning ---------------------------


def _parse(expression: str) -> _Schedule:
    texts = _split_fields(expression)
    minutes, hours, days, months, weekdays = (
        _parse_field(text, field) for text, field in zip(texts, FIELDS, strict=True)
    )
    days_text, weekdays_text = texts[2], texts[4]
    return _Schedule(
        minutes,
        hours,
        days,
        months,
        weekdays,
        days_star=days_text.startswith("*"),
        weekdays_star=weekdays_text.startswith("*"),
    )


def _split_fields(expression: str) -> list[str]:
    _require_ascii(expression)
    words = [word for word in _BLANKS.split(expression) if word]
    if not words:
        raise CronError("empty cron expression")
    if words[0].startswith("@"):
        return _expand_nickname(words)
    if len(words) != len(FIELDS):
        raise CronError(
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(words)}"
        )
    return words


def _require_ascii(expression: str) -> None:
    # pycron tests digits with str.isnumeric(), so '٣' or '３' would match 3: only ASCII is safe.
    for position, char in enumerate(expression):
        if not char.isascii():
            raise CronError(
                f"non-ASCII character {char!r} at position {position}; "
                "cron expressions are plain ASCII"
            )


def _expand_nickname(words: list[str]) -> list[str]:
    nickname = words[0].lower()
    if nickname == "@reboot":
        raise CronError("@reboot has no meaning for a scheduler")
    if nickname not in NICKNAMES:
        raise CronError(
            f"unknown nickname {_quote(words[0])}; expected one of {', '.join(NICKNAMES)}"
        )
    if len(words) > 1:
        raise CronError(f"{words[0]} must stand alone, got {len(words) - 1} more field(s)")
    return NICKNAMES[nickname].split()


def _parse_field(text: str, field: _Field) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CronError(f"{field.name}: empty list item in {_quote(text)}")
        values.update(field.fold(value) for value in _parse_item(item, field))
    return frozenset(values)


def _parse_item(item: str, field: _Field) -> range:
    """One list item: `*`, `N`, `A-B`, each optionally followed by `/STEP`."""
    base, slash, step_text = item.partition("/")
    step = _parse_step(step_text, item, field) if slash else 1
    if base == "*":
        return range(field.low, field.high + 1, step)
    if "-" in base:
        start, end = _parse_range(base, item, field)
        return range(start, end + 1, step)
    value = _parse_value(base, item, field)
    if not slash:
        return range(value, value + 1)
    _refuse_open_step_in_weekdays(base, step_text, field)
    # Vixie cron and cronie reject `N/STEP`; croniter reads it as `N-max/STEP`, and that reading
    # is kept so that such schedules still register. pycron never fires it: it is expanded.
    return range(value, field.high + 1, step)


def _refuse_open_step_in_weekdays(base: str, step_text: str, field: _Field) -> None:
    # croniter's max for day-of-week is 6, but cron's `*` there runs to 7 = Sunday, so whether
    # `1/2` includes Sunday depends on whose max is meant: refuse to guess.
    if field is DAY_OF_WEEK:
        raise CronError(
            f"{field.name}: '{base}/{step_text}' is ambiguous (standard cron rejects it, and "
            f"it may or may not be meant to reach 7 = Sunday); write '{base}-6/{step_text}' "
            f"or '{base}-7/{step_text}'"
        )


def _parse_range(base: str, item: str, field: _Field) -> tuple[int, int]:
    start_text, _, end_text = base.partition("-")
    if "-" in end_text:
        raise CronError(f"{field.name}: {_quote(item)} is not a valid range")
    start = _parse_value(start_text, item, field)
    end = _parse_value(end_text, item, field)
    if start > end:
        # Standard cron rejects wrap-around ranges, and pycron silently misses days in them.
        raise CronError(
            f"{field.name}: range {_quote(base)} runs backwards ({start} > {end}); ranges do "
            f"not wrap around, split it in two, e.g. '{start_text}-{field.last},"
            f"{field.low}-{end_text}'"
        )
    return start, end


def _parse_step(text: str, item: str, field: _Field) -> int:
    if not text.isdigit():
        detail = "is missing" if not text else f"{_quote(text)} is not a number"
        raise CronError(f"{field.name}: step {detail} in {_quote(item)}")
    step = _to_int(text)
    if step == 0:
        # cron rejects it (it would loop forever; pycron: ZeroDivisionError).
        raise CronError(f"{field.name}: step 0 in {_quote(item)} must be at least 1")
    if step > field.max_step:
        raise CronError(
            f"{field.name}: step {_shorten(text)} in {_quote(item)} is too large for cron's "
            f"integers (at most {field.max_step})"
        )
    # A step past the range is valid cron: it selects the range's first value alone.
    return step


def _parse_value(token: str, item: str, field: _Field) -> int:
    if token.isdigit():
        value = _to_int(token)
    elif token.lower() in field.names:
        value = field.low + field.names.index(token.lower())
    else:
        context = "" if token == item else f" in {_quote(item)}"
        raise CronError(f"{field.name}: {_describe_bad_value(token, field)}{context}")
    if not field.low <= value <= field.high:
        raise CronError(f"{field.name}: {_shorten(token)} is out of range {field.low}-{field.high}")
    return value


def _to_int(digits: str) -> int:
    # int() refuses more than 4300 digits; past 10 significant digits every value and every
    # step is out of range, so one number that large stands for them all.
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= 10 else 10**10


def _describe_bad_value(token: str, field: _Field) -> str:
    if not token:
        return "a value is missing"
    foreign = _name_foreign_syntax(token)
    if foreign:
        where = "" if len(token) == 1 else f" in {_quote(token)}"
        return f"{foreign}{where} is not standard cron"
    if not field.names:
        return f"{_quote(token)} is not a number"
    kind = "month" if field is MONTH else "day"
    return f"{_quote(token)} is not a number or a {kind} name ({field.names[0]}..{field.names[-1]})"


def _name_foreign_syntax(token: str) -> str | None:
    """Name the Quartz extensions people paste from other schedulers, so the message helps."""
    lowered = token.lower()
    if "?" in token:
        return "'?' (Quartz's 'no specific value'; use '*')"
    if "#" in token:
        return "'#' (nth weekday of the month)"
    if _QUARTZ_WEEKDAY.fullmatch(lowered):
        return "'W' (nearest weekday)"
    if _QUARTZ_LAST.fullmatch(lowered):
        return "'L' (last day)"
    return None


def _shorten(text: str, limit: int = 20) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quote(text: str) -> str:
    return repr(_shorten(text))


# --- rendering: _Schedule -> the canonical text pycron evaluates like cron -------------------
#
# pycron (measured, 3.3): ORs the day fields only when neither *contains* '*', ANDs otherwise;
# reads `*/S` correctly (counting from the field's low end); reads `A-B` and `A-B/S` correctly
# for plain numbers with A <= B; knows neither month names nor 7 for Sunday nor `N/S`.
# So the output uses only numbers 0-6 for weekdays, `*`, `*/S`, `A`, `A-B`, `A-B/S`, and puts
# a '*' into a day field exactly when cron's day rule is AND.


def _render(schedule: _Schedule) -> str:
    days, weekdays = _render_day_fields(schedule)
    return " ".join(
        (
            _render_free(schedule.minutes, MINUTE),
            _render_free(schedule.hours, HOUR),
            days,
            _render_free(schedule.months, MONTH),
            weekdays,
        )
    )


def _render_day_fields(schedule: _Schedule) -> tuple[str, str]:
    days, weekdays = schedule.days, schedule.weekdays
    has_full_field = days == DAY_OF_MONTH.universe or weekdays == DAY_OF_WEEK.universe
    if has_full_field and not schedule.is_day_intersection:
        # Cron ORs the day fields here (e.g. `1-31` with `mon`), so one full field means
        # every day; `* *` says that to pycron, which would otherwise AND them.
        return "*", "*"
    if has_full_field:
        # AND with a full field is the other field alone; the full one renders as `*`,
        # which makes pycron AND as well.
        return _render_free(days, DAY_OF_MONTH), _render_free(weekdays, DAY_OF_WEEK)
    if schedule.is_day_intersection:
        return (
            _render_intersected(days, DAY_OF_MONTH, star_led=schedule.days_star),
            _render_intersected(weekdays, DAY_OF_WEEK, star_led=schedule.weekdays_star),
        )
    # Both restricted, no '*' in either rendering: pycron ORs them, as cron does.
    return _render_list(days), _render_list(weekdays)


def _render_intersected(values: frozenset[int], field: _Field, *, star_led: bool) -> str:
    if star_led:
        # Keeps a leading '*' so that pycron ANDs, as cron does (e.g. `*/2` with `mon`).
        return _render_star_led(values, field)
    return _render_free(values, field)


def _render_free(values: frozenset[int], field: _Field) -> str:
    """The shortest faithful form, `*` and `*/S` included: only where a '*' does no harm."""
    if values == field.universe:
        return "*"
    for step in range(2, field.last - field.low + 1):
        progression = field.progression(step)
        if len(progression) < 3:
            break
        if values == progression:
            return f"*/{step}"
    return _render_list(values)


def _render_star_led(values: frozenset[int], field: _Field) -> str:
    """A form that starts with `*/S` (plus the values it misses, as in `*/2,4`)."""
    # A star-led set always holds field.low (`*` and `*/S` start there), and the largest step
    # here selects {low} alone, so `min` always finds a step.
    step = min(
        step for step in range(2, field.last - field.low + 2) if field.progression(step) <= values
    )
    rest = values - field.progression(step)
    return ",".join([f"*/{step}", _render_list(rest)] if rest else [f"*/{step}"])


def _render_list(values: frozenset[int]) -> str:
    """Plain numbers and ranges, never '*': the shorter of `A-B/S` and a list (tie: the list)."""
    ordered = sorted(values)
    listed = ",".join(_render_runs(ordered))
    progression = _render_progression(ordered)
    return progression if progression and len(progression) < len(listed) else listed


def _render_progression(ordered: list[int]) -> str | None:
    """`A-B/S` (or `A-B`) when the values are evenly spaced, three or more of them."""
    gaps = {later - earlier for earlier, later in itertools.pairwise(ordered)}
    if len(ordered) < 3 or len(gaps) != 1:
        return None
    step = gaps.pop()
    return f"{ordered[0]}-{ordered[-1]}" + (f"/{step}" if step > 1 else "")


def _render_runs(ordered: list[int]) -> list[str]:
    """Consecutive runs of three or more become `A-B`; the rest stay single numbers."""
    runs: list[list[int]] = []
    for value in ordered:
        if runs and runs[-1][-1] == value - 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return [f"{run[0]}-{run[-1]}" if len(run) >= 3 else ",".join(map(str, run)) for run in runs]


# --- dates that never come -----------------------------------------------------------------

MONTH_NAMES = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
# February has 29 days: leap years have them, so `0 0 29 2 *` fires every four years.
MONTH_LENGTHS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _why_never(schedule: _Schedule) -> str | None:
    if not schedule.is_day_intersection:
        # OR: a matching weekday suffices, and every month has every weekday.
        return None
    # AND: each date that exists falls on every weekday in some year (29 February too, over
    # the Gregorian cycle), so only the day-of-month and month fields can rule out all dates.
    longest = max(MONTH_LENGTHS[month - 1] for month in schedule.months)
    if min(schedule.days) <= longest:
        return None
    return _describe_missing_days(schedule)


def _describe_missing_days(schedule: _Schedule) -> str:
    days = _render_list(schedule.days)
    months = _join_or([MONTH_NAMES[month - 1] for month in sorted(schedule.months)])
    if len(schedule.days) == 1:
        reason = f"day-of-month {days} never occurs in {months}"
    else:
        reason = f"days-of-month {days} never occur in {months}"
    if schedule.weekdays != DAY_OF_WEEK.universe:
        # Here day-of-month cannot start with '*' (`*` and `*/S` hold day 1), so day-of-week
        # does, and that is what turns cron's usual OR of the day fields into an AND.
        reason += " (day-of-week starts with '*', so cron requires both day fields to match)"
    return reason


def _join_or(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
