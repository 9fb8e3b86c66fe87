"""Sending due fires in batches: claimed and sent in few round trips, retried within their
time, counted, never dropped silently.

`DeliveringScheduler.deliver` sends the fires one tick found due (worker/scheduler.py):

- fires go in chunks of `chunk_size` (500); at most `max_in_flight` chunks are being sent
  at once, by all ticks together, so the connection pools are never exhausted;
- a chunk's status checks and claims are one round trip (`SyncdScheduleSource.claim_many`,
  a Lua script), with the tick's token, so asking again after a lost reply recognises the
  sender's own claims;
- the claimed fires' messages are built exactly as taskiq's kicker builds them (with the
  broker's middlewares' `pre_send` and `post_send` around the send, when one has them) and
  added to their streams in one pipeline, with the arguments of the broker's own XADD;
- a send that fails (Redis away, an error reply) is retried with backoff until its time is
  up: a cron fire until the end of its minute, an interval's while its claim lasts, a
  one-shot's for a minute. A send Redis refused gives its claim back first. Retries and
  fires given up are counted (`syncd_scheduler_send_retries_total`,
  `syncd_scheduler_fires_total{result="failed"}`) and logged with their schedule ids. A
  fire keeps one task id across its retries, so a retry after a reply that was lost (the
  message was in fact added) is recorded once by the worker's recorder;
- one INFO line per tick sums it up ("tick 12:00:00: 10000 due, 10000 sent, 0 taken, 0 not
  active, 0 failed, 0 retries (0.41 s)"); the line per schedule is DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError, ResponseError
from taskiq import AsyncBroker, ScheduledTask, ScheduleSource, TaskiqMiddleware, TaskiqScheduler
from taskiq.exceptions import SendTaskError
from taskiq.formatters.proxy_formatter import ProxyFormatter
from taskiq.kicker import AsyncKicker
from taskiq.labels import LabelType, prepare_label
from taskiq.message import BrokerMessage, TaskiqMessage
from taskiq.utils import maybe_awaitable
from taskiq_redis import RedisStreamBroker

from worker.metrics import MetricsServer, serve_metrics
from worker.schedule_source import (
    CLAIMED,
    NOT_ACTIVE,
    SENT,
    TAKEN,
    Schedule,
    SyncdScheduleSource,
    fire_slot,
)

logger = logging.getLogger("syncd.scheduler")

CHUNK_SIZE = 500  # fires claimed by one script and sent by one pipeline
MAX_IN_FLIGHT = 4  # chunks being sent at once; each holds a source and a broker connection
FIRST_RETRY_SECONDS = 0.25
MAX_RETRY_SECONDS = 5.0
MAX_RETRY_WINDOW_SECONDS = 60.0  # the longest any fire is retried (by default)
LISTED_IDS = 20  # schedule ids named in one log line
# The summary line of a tick, as `Tally.__str__` writes it after the tick's label.
TICK_SUMMARY = re.compile(
    r"tick [\d:]+: (\d+) due, (\d+) sent, (\d+) taken, (\d+) not active, (\d+) failed, "
    r"(\d+) retries"
)
# What a send can fail with while Redis is away or answers an error: SendTaskError is the
# kicker's wrapper of the broker's error.
_SEND_ERRORS = (RedisError, OSError, SendTaskError)


class SchedulerMetrics:
    """What the scheduler did with the fires it found due, in a registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.fires = Counter(
            "syncd_scheduler_fires",
            "Due fires by result: sent, taken (another scheduler sent it), not_active "
            "(paused, inactive or deleted), failed (not sent within its time)",
            ["result"],
            registry=r,
        )
        for result in ("sent", "taken", "not_active", "failed"):
            self.fires.labels(result)
        self.retries = Counter(
            "syncd_scheduler_send_retries", "Sends tried again after a failure", registry=r
        )
        ProcessCollector(registry=r)


@dataclass(slots=True)
class Fire:
    """One due fire and what stays fixed across its retries."""

    schedule: Schedule
    slot: str  # names its claim: the minute of a cron fire, ...
    ttl_ms: int  # ... and how long the claim lasts
    task_id: str  # the message's id, the same in every retry
    give_up_at: float  # monotonic


@dataclass
class Tally:
    """What became of one tick's fires."""

    due: int = 0
    sent: int = 0
    taken: int = 0
    not_active: int = 0
    failed: int = 0
    retries: int = 0

    @classmethod
    def summed(cls, log_text: str) -> Tally:
        """The tick summaries found in a scheduler's log, added up."""
        total = cls()
        for match in TICK_SUMMARY.finditer(log_text):
            for f, n in zip(fields(cls), match.groups(), strict=True):
                setattr(total, f.name, getattr(total, f.name) + int(n))
        return total

    def __str__(self) -> str:
        return ", ".join(
            f"{getattr(self, f.name)} {f.name.replace('_', ' ')}" for f in fields(self)
        )


Failure = tuple[Fire, BaseException]


@dataclass(slots=True)
class _Outgoing:
    """A claimed fire's message, ready to send."""

    fire: Fire
    task_name: str
    data: bytes  # the message as the broker's formatter writes it
    labels: dict[str, Any]  # its labels: `queue_name` names its stream
    message: TaskiqMessage | None = None  # for the middlewares' `post_send`

    def formatted(self) -> BrokerMessage:
        """What the broker's formatter returns for the message."""
        return BrokerMessage(
            task_id=self.fire.task_id,
            task_name=self.task_name,
            message=self.data,
            labels=self.labels,
        )


class DeliveringScheduler(TaskiqScheduler):
    """Sends due fires in batches; a TaskiqScheduler, so taskiq's loop can still drive it."""

    def __init__(
        self,
        broker: AsyncBroker,
        source: SyncdScheduleSource,
        *,
        chunk_size: int = CHUNK_SIZE,
        max_in_flight: int = MAX_IN_FLIGHT,
        retry_window_seconds: float = MAX_RETRY_WINDOW_SECONDS,
        metrics_port: int = 0,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        super().__init__(broker, [source])
        self.source = source
        self.metrics = SchedulerMetrics()
        self._chunk_size = chunk_size
        self._turns = asyncio.Semaphore(max_in_flight)
        self._retry_window = retry_window_seconds
        self._metrics_address = (metrics_port, metrics_host)
        self._server: MetricsServer | None = None

    async def startup(self) -> None:
        await super().startup()
        port, host = self._metrics_address
        if port and self._server is None:
            self._server = serve_metrics(self.metrics.registry, port, host)

    async def shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await super().shutdown()

    def fire(self, schedule: Schedule, due: datetime) -> Fire:
        """The fire of `schedule` found due at `due` (the tick: it names the claim's slot)."""
        (fire,) = self.fires([schedule], due)
        return fire

    def fires(self, schedules: Sequence[Schedule], due: datetime) -> list[Fire]:
        """The fires of one tick; what all its cron fires share is worked out once."""
        now = time.monotonic()
        end_of_minute = due.replace(second=0, microsecond=0) + timedelta(minutes=1)
        # A cron fire's claim is its minute: retried within that minute only.
        cron_window = min(self._retry_window, (end_of_minute - datetime.now(UTC)).total_seconds())
        cron_slot: tuple[str, int] | None = None
        new_id = self.broker.id_generator
        made = []
        for schedule in schedules:
            if schedule.cron is not None:
                cron_slot = cron_slot or fire_slot(schedule, due)
                slot, ttl_ms = cron_slot
                window = cron_window
            else:
                slot, ttl_ms = fire_slot(schedule, due)
                window = self._retry_window
                if schedule.interval is not None:  # its claim lasts a little less than it
                    window = min(window, max(0.5, ttl_ms / 1000))
            task_id = schedule.task_id or new_id()
            made.append(Fire(schedule, slot, ttl_ms, task_id, now + window))
        return made

    async def on_ready(self, source: ScheduleSource, task: ScheduledTask) -> None:
        """Send one due fire (how taskiq's own scheduler loop drives a scheduler)."""
        if not isinstance(source, SyncdScheduleSource):
            await super().on_ready(source, task)
            return
        fire = self.fire(Schedule.of(task), datetime.now(UTC))
        await self.deliver([fire], f"schedule {task.schedule_id}")

    async def deliver(self, fires: Sequence[Fire], label: str) -> Tally:
        """Send the fires; retried until sent or their time is up. Never raises."""
        tally = Tally(due=len(fires))
        started = time.monotonic()
        try:
            await self._deliver(list(fires), label, tally)
        except Exception:
            # Whatever escapes here would end as "Task exception was never retrieved".
            lost = tally.due - tally.sent - tally.taken - tally.not_active - tally.failed
            self._count(tally, "failed", lost)
            logger.exception("%s: %d fire(s) NOT SENT: unexpected error", label, lost)
        logger.info("%s: %s (%.2f s)", label, tally, time.monotonic() - started)
        return tally

    async def _deliver(self, pending: list[Fire], label: str, tally: Tally) -> None:
        token = secrets.token_hex(16)  # the tick's: claim keys differ between its fires
        delay = FIRST_RETRY_SECONDS
        while pending:
            failed = await self._round(pending, token, label, tally)
            pending = self._retry_or_give_up(failed, delay, tally, label)
            if pending:
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)

    async def _round(
        self, fires: list[Fire], token: str, label: str, tally: Tally
    ) -> list[Failure]:
        """One try of every fire, a chunk at a time; the fires whose send failed."""
        size = self._chunk_size
        chunks = [fires[i : i + size] for i in range(0, len(fires), size)]
        results = await asyncio.gather(
            *(self._send_chunk(c, token) for c in chunks), return_exceptions=True
        )
        failed: list[Failure] = []
        for chunk, result in zip(chunks, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                # A chunk's counts are kept until its end: none of its fires was counted.
                self._count(tally, "failed", len(chunk))
                logger.error(
                    "%s: %d fire(s) NOT SENT: unexpected error", label, len(chunk), exc_info=result
                )
                continue
            done, failures = result
            for name in ("sent", "taken", "not_active", "failed"):
                self._count(tally, name, getattr(done, name))
            failed += failures
        return failed

    def _retry_or_give_up(
        self, failed: list[Failure], delay: float, tally: Tally, label: str
    ) -> list[Fire]:
        """The failed fires that still have time for another try; the others are counted
        and logged as not sent."""
        if not failed:
            return []
        next_try = time.monotonic() + delay
        again = [(f, e) for f, e in failed if next_try <= f.give_up_at]
        given_up = [(f, e) for f, e in failed if next_try > f.give_up_at]
        if given_up:
            self._count(tally, "failed", len(given_up))
            logger.error(
                "%s: %d fire(s) NOT SENT (%s); gave up when their time ran out: %s",
                label,
                len(given_up),
                given_up[0][1],
                _ids(given_up),
            )
        if again:
            tally.retries += len(again)
            self.metrics.retries.inc(len(again))
            logger.warning(
                "%s: sending %d fire(s) failed (%s); retrying in %.2f s: %s",
                label,
                len(again),
                again[0][1],
                delay,
                _ids(again),
            )
        return [f for f, _ in again]

    async def _send_chunk(self, fires: list[Fire], token: str) -> tuple[Tally, list[Failure]]:
        """Claim and send one chunk: what became of its fires, and those whose send failed
        (to be retried)."""
        tally = Tally()
        async with self._turns:
            claims = [(f.schedule, f.slot, f.ttl_ms) for f in fires]
            try:
                outcomes = await self.source.claim_many(claims, token)
            except _SEND_ERRORS as exc:
                return tally, [(f, exc) for f in fires]
            by_outcome: dict[str, list[Fire]] = {}
            for fire, outcome in zip(fires, outcomes, strict=True):
                by_outcome.setdefault(outcome, []).append(fire)
            tally.taken = len(by_outcome.get(TAKEN, []))
            tally.not_active = len(by_outcome.get(NOT_ACTIVE, []))
            outgoing = await self._outgoing(by_outcome.get(CLAIMED, []), tally)
            sent, failures = await self._send(outgoing, token)
            # Sent by an earlier try of this tick whose reply was lost: not sent again.
            sent += await self._outgoing(by_outcome.get(SENT, []), tally, pre_send=False)
        tally.sent = len(sent)
        await self._after_send(sent)
        return tally, failures

    async def _outgoing(
        self, fires: list[Fire], tally: Tally, *, pre_send: bool = True
    ) -> list[_Outgoing]:
        """Each fire's message as the kicker would send it; a fire whose message cannot be
        built is counted and logged as not sent (its claim stays: a retry would fail too)."""
        middlewares = self.broker.middlewares
        hooked = _overriding(middlewares, "pre_send") + _overriding(middlewares, "post_send")
        direct = not hooked and self._adds_in_script() and _is_proxy(self.broker.formatter)
        built = []
        for fire in fires:
            try:
                built.append(
                    (direct and self._direct(fire))
                    or await self._through_kicker(fire, pre_send=pre_send)
                )
            except Exception:
                tally.failed += 1
                logger.exception(
                    "schedule %s NOT SENT: unexpected error", fire.schedule.schedule_id
                )
        return built

    async def _through_kicker(self, fire: Fire, *, pre_send: bool) -> _Outgoing:
        """What `TaskiqScheduler.on_ready`'s kicker builds for this schedule and task id,
        with the middlewares' `pre_send` applied."""
        payload: dict[str, Any] = json.loads(fire.schedule.raw)
        kicker: AsyncKicker[Any, Any] = (
            AsyncKicker(payload["task_name"], self.broker, payload["labels"])
            .with_labels(schedule_id=fire.schedule.schedule_id)
            .with_task_id(task_id=fire.task_id)
        )
        message = kicker._prepare_message(*payload["args"], **payload["kwargs"])
        for middleware in _overriding(self.broker.middlewares, "pre_send") if pre_send else []:
            message = await maybe_awaitable(middleware.pre_send(message))
        formatted = self.broker.formatter.dumps(message)
        return _Outgoing(fire, formatted.task_name, formatted.message, formatted.labels, message)

    def _direct(self, fire: Fire) -> _Outgoing | None:
        """The same bytes as `_through_kicker` without its models, for a payload of JSON
        values (all syncd writes): the kicker's labels and the dict `model_dump(mode="json")`
        gives for them, through the broker's serializer, as ProxyFormatter does. None for
        a payload with NaN or Infinity (pydantic writes those as null)."""
        try:
            payload: dict[str, Any] = _STRICT_JSON.decode(fire.schedule.raw.decode())
        except ValueError:
            return None
        labels: dict[str, Any] = {}
        types: dict[str, int] = {}
        for name, value in {**payload["labels"], "schedule_id": fire.schedule.schedule_id}.items():
            if name == "types_of_exceptions":  # as the kicker: never sent
                continue
            simple = _SIMPLE_LABELS.get(type(value))
            if simple is None:
                labels[name], types[name] = prepare_label(value)
            else:  # what prepare_label returns for these, without its enum lookups
                labels[name], types[name] = str(value), simple
        body = {
            "task_id": fire.task_id,
            "task_name": payload["task_name"],
            "labels": labels,
            "labels_types": types,
            "args": payload["args"],
            "kwargs": payload["kwargs"],
        }
        return _Outgoing(fire, body["task_name"], self.broker.serializer.dumpb(body), labels)

    async def _send(
        self, outgoing: list[_Outgoing], token: str
    ) -> tuple[list[_Outgoing], list[Failure]]:
        """Send the messages; (sent, failed). A send Redis refused (an error reply: nothing
        was written) gives its claim back, so another scheduler may send it if this one
        gives up. Any other failure (a timeout, a dropped connection) may have written it:
        the claim stays ours, and the retry, which claims with the same token, finds it
        sent, or sends it with the same task id."""
        if not outgoing:
            return [], []
        if self._adds_in_script():
            errors = await self._add_in_script(outgoing, token)
        else:
            errors = await self._kick_each(outgoing, token)
        sent = [o for o, e in zip(outgoing, errors, strict=True) if e is None]
        failed = [(o.fire, e) for o, e in zip(outgoing, errors, strict=True) if e is not None]
        return sent, failed

    def _adds_in_script(self) -> bool:
        """Whether the broker's sends are XADDs the claim's Redis can do in a script: a
        plain Redis stream broker on the schedule source's Redis."""
        broker = self.broker
        return (
            isinstance(broker, RedisStreamBroker)
            and type(broker).kick is RedisStreamBroker.kick
            and _address(broker.connection_pool) == _address(self.source.connection_pool)
        )

    async def _add_in_script(
        self, outgoing: list[_Outgoing], token: str
    ) -> list[BaseException | None]:
        """One script adds every message to its stream, with the broker's XADD arguments
        (`RedisStreamBroker.kick`), and marks its claim as sent (or gives it back when
        Redis refuses the message)."""
        broker: Any = self.broker
        entries = [
            (o.labels.get("queue_name") or broker.queue_name, o.fire.schedule, o.fire.slot, o.data)
            for o in outgoing
        ]
        try:
            errors = await self.source.add_to_streams(
                entries, token, broker.maxlen, broker.approximate
            )
        except _SEND_ERRORS as exc:
            return [exc] * len(outgoing)
        return [None if e is None else ResponseError(e) for e in errors]

    async def _kick_each(self, outgoing: list[_Outgoing], token: str) -> list[BaseException | None]:
        """Any other broker: its `kick` per message; a refused one gives its claim back."""
        results = await asyncio.gather(
            *(self.broker.kick(o.formatted()) for o in outgoing),
            return_exceptions=True,
        )
        errors = [r if isinstance(r, BaseException) else None for r in results]
        refused = [(o.fire.schedule, o.fire.slot) for o, e in zip(outgoing, errors, strict=True)
                   if _refused(e)]  # fmt: skip
        if refused:
            with contextlib.suppress(RedisError, OSError):
                await self.source.release_many(refused, token)
        return errors

    async def _after_send(self, sent: list[_Outgoing]) -> None:
        """The middlewares' `post_send`, then a one-shot that was sent is removed."""
        post_send = list(reversed(_overriding(self.broker.middlewares, "post_send")))
        for out in sent:
            schedule_id = out.fire.schedule.schedule_id
            logger.debug("sent %s as task %s", schedule_id, out.fire.task_id)
            try:
                if out.message is not None:
                    for middleware in post_send:
                        await maybe_awaitable(middleware.post_send(out.message))
                if out.fire.schedule.time is not None:  # as ListRedisScheduleSource.post_send
                    await self.source.delete_schedule(schedule_id)
            except Exception:
                # A one-shot's claim lasts a week: no scheduler sends it again meanwhile.
                logger.exception("schedule %s sent; what follows a send failed", schedule_id)

    def _count(self, tally: Tally, result: str, n: int) -> None:
        if n:
            setattr(tally, result, getattr(tally, result) + n)
            self.metrics.fires.labels(result).inc(n)


def _overriding(middlewares: list[TaskiqMiddleware], hook: str) -> list[TaskiqMiddleware]:
    """The middlewares with a hook of their own, as the kicker picks them."""
    default = getattr(TaskiqMiddleware, hook)
    return [m for m in middlewares if getattr(type(m), hook) is not default]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} in a payload")


_STRICT_JSON = json.JSONDecoder(parse_constant=_no_constant)
_SIMPLE_LABELS = {
    int: LabelType.INT.value,
    str: LabelType.STR.value,
    float: LabelType.FLOAT.value,
    bool: LabelType.BOOL.value,
}


def _is_proxy(formatter: object) -> bool:
    """taskiq's default formatter: the message's JSON-mode dump through the serializer."""
    return type(formatter) is ProxyFormatter


def _address(pool: ConnectionPool) -> tuple[object, ...]:
    """Which Redis server and database a pool connects to."""
    kwargs = pool.connection_kwargs
    return tuple(kwargs.get(k) for k in ("host", "port", "path", "db", "username"))


def _refused(error: BaseException | None) -> bool:
    """Whether Redis answered the send with an error reply (then nothing was written)."""
    return isinstance(error, ResponseError) or isinstance(error and error.__cause__, ResponseError)


def _ids(failures: list[Failure]) -> str:
    names = [f.schedule.schedule_id for f, _ in failures[:LISTED_IDS]]
    more = len(failures) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")
