"""Every Redis key syncd reads or writes, and their layout, in one place.

Schedules use the layout of taskiq-redis `ListRedisScheduleSource`, so the TaskIQ
scheduler reads what syncd writes (docs/architecture.md, "Redis layout"):

    {prefix}:data:{schedule_id}        JSON of a ScheduledTask (never pickle)
    {prefix}:cron                      list of schedule ids with a cron
    {prefix}:interval                  list of schedule ids with an interval
    {prefix}:time:{YYYY-MM-DDTHH:MM}   list of one-shot schedule ids due in that UTC minute
    {prefix}:version                   a fresh token in every write transaction, so a
                                       scheduler refreshes in one round trip when unchanged
    schedule:status:{config_id}        active | paused | inactive, outside the prefix
    syncd-queue:{queue}                the Redis stream of a worker queue (the broker's)
    syncd-fire:{prefix}:{schedule_id}:{slot}
                                       a fire claimed by one scheduler (two never send twice)
    syncd-leader:{prefix}              the leader lease of the `syncd watch` daemons

`prefix` must not contain ':' — taskiq-redis parses time keys with `split(":", 2)`, so a
colon in the prefix breaks one-shot schedules. Schedule ids are `task_{config_id}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

DEFAULT_SCHEDULE_PREFIX = "syncd"
DEFAULT_STATUS_PREFIX = "schedule:status:"
SCHEDULE_ID_PATTERN = re.compile(r"^task_(\d+)$")
STATUSES = ("active", "paused", "inactive")
QUEUE_STREAM_PREFIX = "syncd-queue:"
# Outside the schedule prefix, like the status keys: the scheduler never scans it.
LEASE_KEY_PREFIX = "syncd-leader:"
_GLOB_SPECIAL = frozenset("\\*?[]")


def queue_stream(queue: str) -> str:
    """The Redis stream a worker queue reads from."""
    return f"{QUEUE_STREAM_PREFIX}{queue}"


def schedule_id(config_id: int) -> str:
    return f"task_{config_id}"


def config_id_of(schedule_id_: str) -> int | None:
    """The config id in a `task_{id}` schedule id, or None for ids syncd did not make."""
    match = SCHEDULE_ID_PATTERN.match(schedule_id_)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class KeyLayout:
    """The key names for one deployment (tests use their own Redis database, same layout)."""

    prefix: str = DEFAULT_SCHEDULE_PREFIX
    status_prefix: str = DEFAULT_STATUS_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or ":" in self.prefix:
            raise ValueError(
                f"schedule prefix {self.prefix!r} must be non-empty and contain no ':'"
            )

    def data_key(self, schedule_id_: str) -> str:
        return f"{self.prefix}:data:{schedule_id_}"

    @property
    def data_pattern(self) -> str:
        return glob_prefix(f"{self.prefix}:data:")

    @property
    def version_key(self) -> str:
        return f"{self.prefix}:version"

    @property
    def lease_key(self) -> str:
        """One lease per schedule prefix: daemons of other deployments do not compete."""
        return f"{LEASE_KEY_PREFIX}{self.prefix}"

    def fire_key(self, schedule_id_: str, slot: str) -> str:
        return f"syncd-fire:{self.prefix}:{schedule_id_}:{slot}"

    @property
    def cron_key(self) -> str:
        return f"{self.prefix}:cron"

    @property
    def interval_key(self) -> str:
        return f"{self.prefix}:interval"

    def time_key(self, when: datetime) -> str:
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return f"{self.prefix}:time:{when.astimezone(UTC).strftime('%Y-%m-%dT%H:%M')}"

    @property
    def time_pattern(self) -> str:
        return glob_prefix(f"{self.prefix}:time:")

    def status_key(self, config_id: int) -> str:
        return f"{self.status_prefix}{config_id}"

    @property
    def status_pattern(self) -> str:
        return glob_prefix(self.status_prefix)

    def schedule_id_of_data_key(self, key: str) -> str:
        return key.removeprefix(f"{self.prefix}:data:")

    def config_id_of_status_key(self, key: str) -> int | None:
        rest = key.removeprefix(self.status_prefix)
        return int(rest) if re.fullmatch(r"[0-9]{1,18}", rest) else None


def glob_prefix(literal: str) -> str:
    """A SCAN pattern matching the keys that start with `literal`, glob characters escaped.

    The layout forbids only ':' in the prefix: a '*', '?' or '[' in it must not make a
    SCAN match other keys (or none).
    """
    return "".join(f"\\{char}" if char in _GLOB_SPECIAL else char for char in literal) + "*"
