"""Pydantic models of the taskdef format: what a file in `taskdefs/` may say.

Strict on purpose: unknown keys are errors, numbers are not coerced from strings, and a
cron expression is stored in the normalised form the TaskIQ scheduler fires faithfully.
Checking `task_type` and `parameters` against the worker's registry is the loader's job
(it needs the registry as data); this module knows nothing about tasks or I/O.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    ValidationInfo,
    field_validator,
)

from schemas.cron import CronError, normalize_cron
from schemas.text import quoted

# A name becomes part of Redis keys, log lines and URLs: no ':' (the Redis key separator),
# no '/', no spaces, nothing that needs quoting.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
NAME_MAX_LENGTH = 200
TASK_TYPE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
MAX_RETRIES_LIMIT = 100
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
MAX_INTERVAL_SECONDS = 366 * 24 * 3600
DEFAULT_RETRY_BACKOFF_SECONDS = 5.0
DEFAULT_RETRY_BACKOFF_MAX_SECONDS = 600.0
MAX_RETRY_BACKOFF_SECONDS = 24 * 3600
# The instants an `at` may name, in UTC: every store, time zone conversion and fire-time
# computation handles these (year 9999 in a far-west zone overflows Python's datetime).
EARLIEST_AT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_AT = datetime(9000, 1, 1, tzinfo=UTC)

# How a task is scheduled, as `task_configs.scheduler_type` stores it (an `at` is a "date").
SchedulerType = Literal["cron", "interval", "date", "manual"]
SCHEDULER_TYPES: tuple[SchedulerType, ...] = get_args(SchedulerType)


class StrictModel(BaseModel):
    """Base of every taskdef model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class CronSchedule(StrictModel):
    """Fire at the times a standard 5-field cron expression names, in `timezone`."""

    cron: Annotated[str, Field(description="5-field cron expression, names and @nicknames allowed")]
    timezone: Annotated[str, Field(description="IANA time zone name")] = "UTC"

    @field_validator("cron")
    @classmethod
    def _normalise_cron(cls, value: str) -> str:
        try:
            return normalize_cron(value)
        except CronError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        if not is_known_timezone(value):
            raise ValueError(
                f"unknown time zone {quoted(value)} (use an IANA name such as Europe/Berlin)"
            )
        return value


class IntervalSchedule(StrictModel):
    """Fire every `interval` whole seconds."""

    interval: Annotated[int, Field(ge=1, le=MAX_INTERVAL_SECONDS, description="seconds")]


class AtSchedule(StrictModel):
    """Fire once, at a timezone-aware instant."""

    at: Annotated[
        AwareDatetime,
        Field(description="ISO 8601 date-time with offset, e.g. 2026-12-01T09:00:00Z"),
    ]

    @field_validator("at", mode="before")
    @classmethod
    def _iso_string(cls, value: Any) -> Any:
        # YAML reads an unquoted timestamp as a datetime; a quoted one is the string the
        # JSON Schema (and so every editor) calls a date-time: both mean the same instant.
        if not isinstance(value, str):
            return value
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"{quoted(value)} is not an ISO 8601 date-time such as 2026-12-01T09:00:00Z"
            ) from None

    @field_validator("at")
    @classmethod
    def _within_range(cls, value: datetime) -> datetime:
        try:
            instant = value.astimezone(UTC)
        except OverflowError:
            instant = None
        if instant is None or not EARLIEST_AT <= instant < LATEST_AT:
            raise ValueError(
                f"{value.isoformat()} is out of range: an 'at' lies between "
                f"{EARLIEST_AT:%Y-%m-%d} and {LATEST_AT:%Y-%m-%d} (UTC)"
            )
        return value


def _schedule_kind(value: Any) -> str | None:
    """Pick the schedule model by the key present, so errors speak of that kind only."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if not isinstance(value, dict):
        return None
    for kind in ("cron", "interval", "at"):
        if kind in value:
            return kind
    return None


Schedule = Annotated[
    Annotated[CronSchedule, Tag("cron")]
    | Annotated[IntervalSchedule, Tag("interval")]
    | Annotated[AtSchedule, Tag("at")],
    Discriminator(
        _schedule_kind,
        custom_error_type="schedule_kind",
        custom_error_message="schedule needs exactly one of 'cron', 'interval' or 'at'",
    ),
]


class TaskDef(StrictModel):
    """One task as declared in YAML; `name` is its stable identity across the repository."""

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=NAME_MAX_LENGTH,
            pattern=NAME_PATTERN,
            description="unique across all taskdefs; letters, digits, '.', '_', '-'",
        ),
    ]
    description: Annotated[str, Field(max_length=2000)] = ""
    task_type: Annotated[
        str,
        Field(max_length=200, pattern=TASK_TYPE_PATTERN, description="a task the worker registers"),
    ]
    schedule: Schedule | None = Field(default=None, description="omitted: a manual task")
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    max_retries: Annotated[int, Field(ge=0, le=MAX_RETRIES_LIMIT)] = 0
    retry_backoff_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=MAX_RETRY_BACKOFF_SECONDS,
            allow_inf_nan=False,
            description=(
                "seconds before the first retry (0: at once); each further retry waits twice "
                "as long as the one before, up to retry_backoff_max_seconds; every delay is "
                "scaled by a random factor in [0.5, 1]"
            ),
        ),
    ] = DEFAULT_RETRY_BACKOFF_SECONDS
    retry_backoff_max_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=MAX_RETRY_BACKOFF_SECONDS,
            allow_inf_nan=False,
            # Checked against retry_backoff_seconds even when omitted: a first delay above
            # the default cap is an error, not a silently capped delay.
            validate_default=True,
            description="the longest delay before a retry; at least retry_backoff_seconds",
        ),
    ] = DEFAULT_RETRY_BACKOFF_MAX_SECONDS
    timeout_seconds: Annotated[int, Field(gt=0, le=MAX_TIMEOUT_SECONDS)] | None = None
    priority: Annotated[int, Field(ge=1, le=10)] = 5
    enabled: bool = True

    @field_validator("description")
    @classmethod
    def _storable_description(cls, value: str) -> str:
        _storable(value)
        return value

    @field_validator("retry_backoff_max_seconds")
    @classmethod
    def _cap_not_below_first_delay(cls, value: float, info: ValidationInfo) -> float:
        # Fields validate in declaration order: retry_backoff_seconds is in info.data
        # unless it was invalid itself (then that error is reported, not this one).
        first = info.data.get("retry_backoff_seconds")
        if first is not None and value < first:
            default = " (the default)" if value == DEFAULT_RETRY_BACKOFF_MAX_SECONDS else ""
            raise ValueError(
                f"{value:g}{default} is less than retry_backoff_seconds ({first:g}); "
                "the longest delay must be at least the first"
            )
        return value

    @field_validator("parameters")
    @classmethod
    def _storable_parameters(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        _storable(value)
        return value

    @property
    def scheduler_type(self) -> SchedulerType:
        """The `task_configs.scheduler_type` of this task."""
        if isinstance(self.schedule, CronSchedule):
            return "cron"
        if isinstance(self.schedule, IntervalSchedule):
            return "interval"
        if isinstance(self.schedule, AtSchedule):
            return "date"
        return "manual"

    def at_time(self) -> datetime | None:
        return self.schedule.at if isinstance(self.schedule, AtSchedule) else None


class TaskdefFile(StrictModel):
    """A whole taskdef file: a format version and a list of tasks."""

    version: Literal[1]
    # Required, even when empty (`tasks: []`): a file cut short after its header must not
    # read as "delete every task this file declared".
    tasks: list[TaskDef]


def _storable(value: object, path: str = "") -> None:
    """What PostgreSQL's text and JSONB cannot hold — NUL (U+0000), infinities and NaN (YAML
    has `.inf`, `.nan`; 1e400 reads as infinity) — is refused here, with a line number,
    rather than failing every later sync as if the database were down."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{_where(path)}NUL characters (\\0) cannot be stored")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(
                f"{_where(path)}{value} is not a finite number (JSON has no infinity or NaN); "
                "quote it to pass it as a string"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key, path)
            _storable(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _storable(item, f"{path}[{index}]")


def _where(path: str) -> str:
    return f"at {quoted(path)}: " if path else ""


@lru_cache(maxsize=1024)
def is_known_timezone(name: str) -> bool:
    if not re.fullmatch(r"[A-Za-z0-9_+\-/]+", name):
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a name like "Europe" is a directory of the tz database, not a zone.
        return False
    return True


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a taskdef file, as committed in `schemas/taskdef.schema.json`."""
    schema = TaskdefFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "syncd taskdef file"
    return schema
