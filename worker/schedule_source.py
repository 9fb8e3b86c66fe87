"""The scheduler's view of Redis: syncd's schedules, kept compactly, claimed once per fire.

A `ListRedisScheduleSource` in syncd's key layout and JSON serializer (never pickle) that
fixes the measured traps of taskiq-redis (docs/architecture.md, "taskiq traps"):
- `refresh` costs one round trip when nothing changed (syncd bumps a version key), so the
  scheduler can refresh every second; when the version changed it re-reads the lists and
  the data keys but parses again only the payloads whose bytes changed; when only the
  minute turned it reads that minute's one-shots and nothing else;
- each schedule is kept as a `Schedule`: the few fields that decide when it fires, and
  its payload's bytes, parsed again only when it fires (a pydantic `ScheduledTask` per
  schedule cost about 2.5 KB; the bytes about 0.5 KB);
- a failed refresh keeps the last good schedules instead of none (no schedules would make
  every interval schedule fire again at once);
- entries pycron cannot evaluate faithfully (or at all) are skipped and logged, so one bad
  entry cannot stop the scheduler;
- `claim_many` checks the status and claims the fire of each schedule of a batch in one
  round trip (a Lua script): a paused, inactive or deleted task is never claimed, and a
  fire another scheduler claimed is not sent twice.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError
from taskiq import ScheduledTask
from taskiq.exceptions import ScheduledTaskCancelledError
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListRedisScheduleSource

from schemas.cron import CronError, normalize_cron
from syncd.core.keys import KeyLayout

logger = logging.getLogger("syncd.scheduler")

CLAIMED, TAKEN, NOT_ACTIVE = "claimed", "taken", "not active"
SENT = "sent"  # claimed by this token, and its message was added already
READ_CHUNK = 1000  # data keys per MGET

# For each fire of the batch, the status check and the claim, atomically: a pause that
# lands first is seen. KEYS holds the n status keys, then the n fire keys; ARGV[1] is the
# sender's token, ARGV[1 + i] the i-th claim's lifetime in ms (ARGV[2] alone: the lifetime
# of all; a tick's cron fires share theirs). The token lets a sender
# whose reply was lost tell its own claims from another scheduler's when it asks again.
# (SET ... NX GET claims and reads the holder in one call.)
_CLAIM_SCRIPT = """
local n = #KEYS / 2
local statuses = redis.call('MGET', unpack(KEYS, 1, n))
local out = {}
for i = 1, n do
  if statuses[i] ~= 'active' then
    out[i] = 'status:' .. tostring(statuses[i])
  else
    local ttl = ARGV[i + 1] or ARGV[2]
    local holder = redis.call('SET', KEYS[n + i], ARGV[1], 'NX', 'PX', ttl, 'GET')
    if not holder or holder == ARGV[1] then
      out[i] = 'claimed'
    elseif holder == ARGV[1] .. ':sent' then
      out[i] = 'sent'
    else
      out[i] = 'taken'
    end
  end
end
return out
"""
# Add each claimed fire's message to its stream, as the broker's XADD would: KEYS holds
# (stream, fire key) pairs; ARGV[1] is the token, ARGV[2] the streams' MAXLEN ('' for
# none), ARGV[3] '~' when trimming is approximate, ARGV[3 + i] the i-th message. A message
# Redis refuses (an error reply: nothing was written) gives its claim back; one added marks
# its claim as sent, so asking again after a lost reply does not send it twice.
_SEND_SCRIPT = """
local out = {}
for i = 1, #KEYS / 2 do
  local reply
  if ARGV[2] == '' then
    reply = redis.pcall('XADD', KEYS[2 * i - 1], '*', 'data', ARGV[3 + i])
  elseif ARGV[3] == '~' then
    reply = redis.pcall('XADD', KEYS[2 * i - 1], 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[3 + i])
  else
    reply = redis.pcall('XADD', KEYS[2 * i - 1], 'MAXLEN', ARGV[2], '*', 'data', ARGV[3 + i])
  end
  if type(reply) == 'table' and reply.err then
    if redis.call('GET', KEYS[2 * i]) == ARGV[1] then
      redis.call('DEL', KEYS[2 * i])
    end
    out[i] = reply.err
  else
    if redis.call('GET', KEYS[2 * i]) == ARGV[1] then
      redis.call('SET', KEYS[2 * i], ARGV[1] .. ':sent', 'KEEPTTL')
    end
    out[i] = ''
  end
end
return out
"""
_RELEASE_SCRIPT = """
local released = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    released = released + redis.call('DEL', KEYS[i])
  end
end
return released
"""


class Timed(Protocol):
    """What says when a schedule fires (a `Schedule` or a taskiq `ScheduledTask`)."""

    @property
    def cron(self) -> str | None: ...
    @property
    def interval(self) -> int | timedelta | None: ...
    @property
    def time(self) -> datetime | None: ...


@dataclass(frozen=True, slots=True)
class Schedule:
    """One schedule as the scheduler keeps it: when it fires, and its payload's bytes."""

    schedule_id: str
    config_id: int | None  # None: not a schedule syncd wrote; never sent
    cron: str | None
    cron_offset: str | timedelta | None
    interval: int | timedelta | None
    time: datetime | None
    task_id: str | None
    raw: bytes  # the JSON of its ScheduledTask, as read from Redis

    @classmethod
    def of(cls, task: ScheduledTask, raw: bytes | None = None) -> Schedule:
        config_id = task.labels.get("config_id")
        if not isinstance(config_id, int) or isinstance(config_id, bool):
            config_id = None
        return cls(
            schedule_id=task.schedule_id,
            config_id=config_id,
            # Thousands of schedules share a few expressions: keep one copy of each.
            cron=None if task.cron is None else sys.intern(task.cron),
            cron_offset=(
                sys.intern(task.cron_offset)
                if isinstance(task.cron_offset, str)
                else task.cron_offset
            ),
            interval=task.interval,
            time=task.time,
            task_id=task.task_id,
            raw=raw if raw is not None else json.dumps(task.model_dump(mode="json")).encode(),
        )

    def task(self) -> ScheduledTask:
        return ScheduledTask.model_validate(json.loads(self.raw))


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
        self._listed: dict[str, Schedule] = {}  # cron and interval (and missed one-shots)
        self._one_shots: dict[str, Schedule] = {}  # this minute's
        self._current: dict[str, Schedule] = {}
        self._version: bytes | None = None
        self._minute: str | None = None
        self._first_read = True
        self._tasks_of: dict[str, Schedule] | None = None
        self._tasks: list[ScheduledTask] = []

    @property
    def connection_pool(self) -> ConnectionPool:
        return self._connection_pool

    def _redis(self) -> Redis:
        return Redis(connection_pool=self._connection_pool)

    async def refresh(self) -> dict[str, Schedule]:
        """Every schedule by id. The same object when nothing changed since the last call
        (one GET); a new one when syncd changed something or the minute turned."""
        now = datetime.now(UTC)
        minute = now.strftime("%Y-%m-%dT%H:%M")
        try:
            async with self._redis() as redis:
                version = _as_bytes(await redis.get(self.layout.version_key))
                changed = version != self._version or self._first_read
                if not changed and minute == self._minute:
                    return self._current
                if changed:
                    self._listed = await self._read_listed(redis, now)
                one_shots = await self._read(
                    redis, await redis.lrange(self.layout.time_key(now), 0, -1), self._one_shots
                )
        except (RedisError, OSError) as exc:
            logger.warning(
                "cannot refresh schedules (%s); keeping the last %d", exc, len(self._current)
            )
            return self._current
        self._version, self._minute, self._first_read = version, minute, False
        if changed or one_shots != self._one_shots:
            self._one_shots = one_shots
            self._current = self._listed | one_shots
        return self._current

    async def _read_listed(self, redis: Redis, now: datetime) -> dict[str, Schedule]:
        """Cron and interval schedules (plus missed one-shots on the first read)."""
        pipe = redis.pipeline(transaction=False)
        pipe.lrange(self.layout.cron_key, 0, -1)
        pipe.lrange(self.layout.interval_key, 0, -1)
        ids: list[bytes | str] = [i for ids in await pipe.execute() for i in ids]
        if self._first_read:  # one-shots whose minute passed while no scheduler ran: late
            ids += await self._missed_one_shots(redis, now)
        return await self._read(redis, ids, self._current)

    async def _read(
        self, redis: Redis, ids: Iterable[bytes | str], previous: dict[str, Schedule]
    ) -> dict[str, Schedule]:
        """The schedules of `ids`; one whose payload is unchanged is taken from `previous`."""
        # An entry that is not UTF-8 is no schedule syncd wrote (the next sync removes it
        # as a stray); the scheduler skips it rather than stop firing the others.
        names = [_text(i) for i in dict.fromkeys(ids) if isinstance(i, str) or _is_utf8(i)]
        found: dict[str, Schedule] = {}
        for start in range(0, len(names), READ_CHUNK):
            chunk = names[start : start + READ_CHUNK]
            values = await redis.mget([self.layout.data_key(name) for name in chunk])
            for name, raw in zip(chunk, values, strict=True):
                if not isinstance(raw, bytes):
                    continue  # deleted since the list was read
                old = previous.get(name)
                schedule = old if old is not None and old.raw == raw else read_schedule(raw)
                if schedule is not None:
                    found[schedule.schedule_id] = schedule
        return found

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

    async def get_schedules(self) -> list[ScheduledTask]:
        """taskiq's view of `refresh`: a ScheduledTask per schedule (built again only
        when the schedules changed)."""
        current = await self.refresh()
        if current is not self._tasks_of:
            self._tasks = [s.task() for s in current.values()]
            self._tasks_of = current
        return self._tasks

    async def pre_send(self, task: ScheduledTask) -> None:
        """Cancel the fire unless the task is active and no other scheduler claimed it."""
        outcome = await self.claim(Schedule.of(task), secrets.token_hex(16), datetime.now(UTC))
        if outcome != CLAIMED:
            raise ScheduledTaskCancelledError

    async def claim(self, schedule: Schedule, token: str, due: datetime) -> str:
        """Claim one fire (see `claim_many`)."""
        slot, ttl_ms = fire_slot(schedule, due)
        (outcome,) = await self.claim_many([(schedule, slot, ttl_ms)], token)
        return outcome

    async def claim_many(self, fires: Sequence[tuple[Schedule, str, int]], token: str) -> list[str]:
        """Claim the fires (schedule, slot, claim lifetime in ms) for `token`, in one round
        trip; the outcome of each, in order.

        CLAIMED when the task's status is `active` and the fire's slot was free or already
        held by `token` (a retry whose first reply was lost); SENT when `token` holds it and
        `add_to_streams` added its message already; TAKEN when another sender holds it;
        NOT_ACTIVE when the status is anything else (nothing is claimed then). Raises
        RedisError/OSError when Redis cannot answer: whether the claims happened is then
        unknown, and claiming again with the same token settles it.
        """
        outcomes = [NOT_ACTIVE] * len(fires)
        asked = [i for i, (s, _, _) in enumerate(fires) if s.config_id is not None]
        if not asked:
            return outcomes
        status_key, fire_key = self.layout.status_key, self.layout.fire_key
        keys = [status_key(fires[i][0].config_id or 0) for i in asked]
        keys += [fire_key(fires[i][0].schedule_id, fires[i][1]) for i in asked]
        ttls = [fires[i][2] for i in asked]
        if len(set(ttls)) == 1:
            ttls = ttls[:1]
        async with self._redis() as redis:
            found = await redis.eval(_CLAIM_SCRIPT, len(keys), *keys, token, *ttls)
        for i, reply in zip(asked, found, strict=True):
            outcomes[i] = _outcome(fires[i][0], fires[i][1], reply)
        return outcomes

    async def add_to_streams(
        self,
        entries: Sequence[tuple[str, Schedule, str, bytes]],
        token: str,
        maxlen: int | None = None,
        approximate: bool = True,
    ) -> list[str | None]:
        """Add the messages (stream, schedule, slot, message) of fires `token` claimed, in
        one round trip: for each, None once added, or the error Redis answered (then
        nothing was written and its claim is given back). Raises RedisError/OSError when
        Redis cannot answer: claiming again with the same token then tells which were
        added (SENT)."""
        keys: list[str] = []
        for stream, schedule, slot, _ in entries:
            keys += [stream, self.layout.fire_key(schedule.schedule_id, slot)]
        trim = "" if maxlen is None else str(maxlen)
        messages = [message for *_, message in entries]
        async with self._redis() as redis:
            replies = await redis.eval(
                _SEND_SCRIPT, len(keys), *keys, token, trim, "~" if approximate else "=", *messages
            )
        return [_text(r) or None for r in replies]

    async def release(self, schedule: Schedule, token: str, due: datetime) -> None:
        """Give back a claim `token` holds (its send failed), so a retry can take it."""
        await self.release_many([(schedule, fire_slot(schedule, due)[0])], token)

    async def release_many(self, fires: Sequence[tuple[Schedule, str]], token: str) -> None:
        """Give back the claims of these fires (schedule, slot) that `token` holds."""
        keys = [self.layout.fire_key(s.schedule_id, slot) for s, slot in fires]
        if keys:
            async with self._redis() as redis:
                await redis.eval(_RELEASE_SCRIPT, len(keys), *keys, token)

    async def shutdown(self) -> None:
        # taskiq-redis leaves its pool open (a ResourceWarning): close it.
        await super().shutdown()
        await self._connection_pool.disconnect()


def _outcome(schedule: Schedule, slot: str, reply: bytes | str) -> str:
    outcome = reply.decode() if isinstance(reply, bytes) else str(reply)
    if outcome.startswith("status:"):
        logger.debug("not sending %s: %s", schedule.schedule_id, outcome)
        return NOT_ACTIVE
    if outcome == TAKEN:
        logger.debug(
            "not sending %s: slot %s sent by another scheduler", schedule.schedule_id, slot
        )
    return outcome


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def fire_slot(task: Timed, now: datetime) -> tuple[str, int]:
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
        return "interval", max(500, math.floor(interval_seconds(task.interval) * 1000) - 500)
    when = task.time.astimezone(UTC).strftime("%Y%m%d%H%M") if task.time else "unknown"
    return f"once:{when}", 7 * 24 * 3600 * 1000


def interval_seconds(interval: int | timedelta) -> float:
    return interval if isinstance(interval, int) else interval.total_seconds()


def read_schedule(raw: bytes) -> Schedule | None:
    """The schedule in a payload; None (and logged) for what taskiq cannot read or pycron
    cannot evaluate. Never unpickles: whoever can write Redis must not run code here."""
    try:
        task = ScheduledTask.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        logger.error("skipping unreadable schedule payload %.80r: %s", raw, exc)
        return None
    if not is_runnable(task):
        return None
    schedule = Schedule.of(task, raw)
    if schedule.config_id is None:
        logger.warning("schedule %s has no config id: it is never sent", task.schedule_id)
    return schedule


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


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True
