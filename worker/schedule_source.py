"""The scheduler's view of Redis: syncd's schedules, fresh within a second, sent once.

A `ListRedisScheduleSource` in syncd's key layout and JSON serializer (never pickle) that
fixes the measured traps of taskiq-redis (docs/architecture.md, "taskiq traps"):
- `pre_send` cancels a fire whose task status is not `active` (pause and delete act at the
  next tick) and one another scheduler already claimed (SET NX per schedule and slot);
- `get_schedules` costs one round trip when nothing changed (syncd bumps a version key),
  so the scheduler can refresh every second;
- a failed refresh returns the last good list instead of an empty one (an empty list would
  make every interval schedule fire again at once);
- entries pycron cannot evaluate faithfully (or at all) are skipped and logged, so one bad
  entry cannot stop the scheduler.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from taskiq import ScheduledTask
from taskiq.exceptions import ScheduledTaskCancelledError
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListRedisScheduleSource

from schemas.cron import CronError, normalize_cron
from syncd.core.keys import KeyLayout

logger = logging.getLogger("syncd.scheduler")

CLAIMED, TAKEN, NOT_ACTIVE = "claimed", "taken", "not active"

# Status check and claim in one round trip, atomically: a pause that lands first is seen.
# The claim holds a token, so a sender whose reply was lost can tell its own claim from
# another scheduler's when it asks again.
_CLAIM_SCRIPT = """
local status = redis.call('GET', KEYS[1])
if status ~= 'active' then return 'status:' .. tostring(status) end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'claimed' end
if redis.call('GET', KEYS[2]) == ARGV[1] then return 'claimed' end
return 'taken'
"""
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SyncdScheduleSource(ListRedisScheduleSource):
    """Schedules written by `syncd sync`, read the way the scheduler needs them."""

    def __init__(self, url: str, layout: KeyLayout | None = None, **kwargs: Any) -> None:
        self.layout = layout or KeyLayout()
        super().__init__(
            url,
            prefix=self.layout.prefix,
            serializer=JSONSerializer(),
            skip_past_schedules=True,
            **kwargs,
        )
        self._cached: list[ScheduledTask] = []
        self._cached_version: bytes | None = None
        self._cached_minute: str | None = None

    def _redis(self) -> Redis:
        return Redis(connection_pool=self._connection_pool)

    async def get_schedules(self) -> list[ScheduledTask]:
        """All schedules; re-read only when syncd changed something or the minute turned."""
        minute = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M")
        try:
            async with self._redis() as redis:
                version = _as_bytes(await redis.get(self.layout.version_key))
                if version == self._cached_version and minute == self._cached_minute:
                    return self._cached
                payloads = await self._read_payloads(redis, catch_up=self._cached_version is None)
        except (RedisError, OSError) as exc:
            logger.warning(
                "cannot refresh schedules (%s); keeping the last %d", exc, len(self._cached)
            )
            return self._cached
        self._cached = [t for t in parse_schedules(payloads) if is_runnable(t)]
        self._cached_version, self._cached_minute = version, minute
        return self._cached

    async def _read_payloads(self, redis: Redis, *, catch_up: bool) -> list[bytes]:
        """Cron, interval and this minute's one-shots (plus missed ones on the first read)."""
        now = datetime.now(UTC)
        pipe = redis.pipeline(transaction=False)
        pipe.lrange(self.layout.cron_key, 0, -1)
        pipe.lrange(self.layout.interval_key, 0, -1)
        pipe.lrange(self.layout.time_key(now), 0, -1)
        ids: list[bytes] = [i for ids in await pipe.execute() for i in ids]
        if catch_up:  # one-shots whose minute passed while no scheduler ran: send them late
            ids += await self._missed_one_shots(redis, now)
        # An entry that is not UTF-8 is no schedule syncd wrote (the next sync removes it
        # as a stray); the scheduler skips it rather than stop firing the others.
        keys = [self.layout.data_key(i.decode()) for i in dict.fromkeys(ids) if _is_utf8(i)]
        values: list[bytes] = []
        for start in range(0, len(keys), 1000):
            values += [
                v for v in await redis.mget(keys[start : start + 1000]) if isinstance(v, bytes)
            ]
        return values

    async def _missed_one_shots(self, redis: Redis, now: datetime) -> list[bytes]:
        current = self.layout.time_key(now)
        keys = [
            k
            async for k in redis.scan_iter(self.layout.time_pattern, count=1000)
            if _is_utf8(k) and k.decode() < current
        ]
        if not keys:
            return []
        pipe = redis.pipeline(transaction=False)
        for key in keys:
            pipe.lrange(key, 0, -1)
        return [i for ids in await pipe.execute() for i in ids]

    async def pre_send(self, task: ScheduledTask) -> None:
        """Cancel the fire unless the task is active and no other scheduler claimed it."""
        outcome = await self.claim(task, secrets.token_hex(16), datetime.now(UTC))
        if outcome != CLAIMED:
            raise ScheduledTaskCancelledError

    async def claim(self, task: ScheduledTask, token: str, due: datetime) -> str:
        """Claim the fire of `task` due at `due` for `token`, in one round trip.

        CLAIMED when the task's status is `active` and the fire's slot was free or already
        held by `token` (a retry whose first reply was lost); TAKEN when another sender holds
        it; `NOT_ACTIVE` when the status is anything else. Raises RedisError/OSError when
        Redis cannot answer: whether the claim happened is then unknown, and claiming again
        with the same token settles it.
        """
        config_id = task.labels.get("config_id")
        if not isinstance(config_id, int) or isinstance(config_id, bool):
            logger.info("not sending %s: no config id", task.schedule_id)
            return NOT_ACTIVE
        slot, ttl_ms = fire_slot(task, due)
        keys = [self.layout.status_key(config_id), self.layout.fire_key(task.schedule_id, slot)]
        async with self._redis() as redis:
            found = await redis.eval(_CLAIM_SCRIPT, 2, *keys, token, ttl_ms)
        outcome = found.decode() if isinstance(found, bytes) else str(found)
        if outcome.startswith("status:"):
            logger.info("not sending %s: %s", task.schedule_id, outcome)
            return NOT_ACTIVE
        if outcome == TAKEN:
            logger.info("not sending %s: slot %s sent by another scheduler", task.schedule_id, slot)
        return outcome

    async def release(self, task: ScheduledTask, token: str, due: datetime) -> None:
        """Give back a claim `token` holds (its send failed), so a retry can take it."""
        slot, _ = fire_slot(task, due)
        async with self._redis() as redis:
            await redis.eval(
                _RELEASE_SCRIPT, 1, self.layout.fire_key(task.schedule_id, slot), token
            )

    async def shutdown(self) -> None:
        # taskiq-redis leaves its pool open (a ResourceWarning): close it.
        await super().shutdown()
        await self._connection_pool.disconnect()


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def fire_slot(task: ScheduledTask, now: datetime) -> tuple[str, int]:
    """(slot name, claim lifetime in ms) identifying one fire across schedulers.

    Cron fires once per minute: the minute is the slot. An interval fires every N s: the
    first scheduler to fire claims the schedule for most of an interval, so another one
    whose clock is a little off does not fire it again. A one-shot fires once for its time:
    the slot names that time, so a one-shot moved to a later `at` (same schedule id) fires
    again instead of finding the old claim.
    """
    if task.cron is not None:
        return now.strftime("%Y%m%d%H%M"), 120_000
    if task.interval is not None:
        seconds = task.interval if isinstance(task.interval, int) else task.interval.total_seconds()
        return "interval", max(500, math.floor(seconds * 1000) - 500)
    when = task.time.astimezone(UTC).strftime("%Y%m%d%H%M") if task.time else "unknown"
    return f"once:{when}", 7 * 24 * 3600 * 1000


def is_runnable(task: ScheduledTask) -> bool:
    """False (and logged) for a cron pycron would mis-read or crash on."""
    if task.cron is None:
        return True
    try:
        if normalize_cron(task.cron) == task.cron:
            return True
    except CronError as exc:
        logger.error("skipping schedule %s: cron %r: %s", task.schedule_id, task.cron, exc)
        return False
    logger.error(
        "skipping schedule %s: cron %r is not in normalised form", task.schedule_id, task.cron
    )
    return False


def parse_schedules(payloads: list[bytes]) -> list[ScheduledTask]:
    """Parse JSON payloads one by one, skipping (and logging) what taskiq cannot read.

    Never unpickles: whoever can write Redis must not run code in the scheduler.
    """
    tasks = []
    for raw in payloads:
        try:
            tasks.append(ScheduledTask.model_validate(json.loads(raw)))
        except (ValueError, ValidationError) as exc:
            logger.error("skipping unreadable schedule payload %.80r: %s", raw, exc)
    return tasks


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True
