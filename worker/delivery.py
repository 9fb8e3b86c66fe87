"""Sending due schedules: bounded, retried within their time, never dropped silently.

taskiq's scheduler loop starts one asyncio task per due schedule and calls the scheduler's
`on_ready` in it; whatever that raises is lost ("Task exception was never retrieved").
With tens of thousands of schedules due in the same minute, the sends exhausted the Redis
connection pools ("No connection available") and those fires were simply not sent.
`DeliveringScheduler.on_ready` is that step, made dependable:

- at most `max_in_flight` fires are sent at once, below the pools' 100 connections: a fire
  waits for its turn here instead of failing for want of a connection;
- the status check and the claim are one round trip (`SyncdScheduleSource.claim`), with a
  token, so asking again after a lost reply recognises the sender's own claim;
- a send that fails (Redis away, an error reply) is retried with backoff until its time is
  up: a cron fire until the end of its minute, an interval's while its claim lasts, a
  one-shot's for a minute. A send Redis refused gives its claim back first. Each retry
  and each fire given up is counted (`syncd_scheduler_send_retries_total`,
  `syncd_scheduler_fires_total{result="failed"}`) and logged. A fire keeps one task id
  across its retries, so a retry after a reply that was lost (the message was in fact
  added) is recorded once by the worker's recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from redis.exceptions import RedisError, ResponseError
from taskiq import AsyncBroker, ScheduledTask, ScheduleSource, TaskiqScheduler
from taskiq.exceptions import SendTaskError
from taskiq.kicker import AsyncKicker

from worker.metrics import MetricsServer, serve_metrics
from worker.schedule_source import CLAIMED, SyncdScheduleSource, fire_slot

logger = logging.getLogger("syncd.scheduler")

MAX_IN_FLIGHT = 50  # fires being sent at once; each holds a source and a broker connection
FIRST_RETRY_SECONDS = 0.25
MAX_RETRY_SECONDS = 5.0
MAX_RETRY_WINDOW_SECONDS = 60.0  # the longest any fire is retried (by default)
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


@dataclass(frozen=True)
class _Fire:
    """One due fire and what stays fixed across its retries."""

    task: ScheduledTask
    due: datetime  # when it was found due: names its claim's slot
    token: str  # its claim's value
    task_id: str  # the message's id, the same in every retry
    give_up_at: float  # monotonic


class DeliveringScheduler(TaskiqScheduler):
    """A TaskiqScheduler whose sends wait their turn, retry, and are counted."""

    def __init__(
        self,
        broker: AsyncBroker,
        source: SyncdScheduleSource,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        retry_window_seconds: float = MAX_RETRY_WINDOW_SECONDS,
        metrics_port: int = 0,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        super().__init__(broker, [source])
        self.metrics = SchedulerMetrics()
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

    async def on_ready(self, source: ScheduleSource, task: ScheduledTask) -> None:
        """Send one due fire (called by taskiq's loop, in a task of its own)."""
        if not isinstance(source, SyncdScheduleSource):
            await super().on_ready(source, task)
            return
        fire = self._fire(task)
        try:
            async with self._turns:
                sent = await self._deliver(source, fire)
        except Exception:
            # Anything else escaping here would end as "Task exception was never retrieved".
            self.metrics.fires.labels("failed").inc()
            logger.exception("schedule %s NOT SENT: unexpected error", task.schedule_id)
            return
        if sent:
            await self._after_send(source, task)

    def _fire(self, task: ScheduledTask) -> _Fire:
        due = datetime.now(UTC)
        window = self._retry_window
        if task.cron is not None:  # the claim's slot is this minute: retry within it only
            window = min(window, 60.0 - due.second - due.microsecond / 1e6)
        elif task.interval is not None:  # the claim lasts a little less than the interval
            window = min(window, max(0.5, fire_slot(task, due)[1] / 1000))
        task_id = task.task_id or self.broker.id_generator()
        return _Fire(task, due, secrets.token_hex(16), task_id, time.monotonic() + window)

    async def _deliver(self, source: SyncdScheduleSource, fire: _Fire) -> bool:
        """Send the fire unless it is not to be sent; True once it was sent."""
        delay = FIRST_RETRY_SECONDS
        while True:
            try:
                return await self._send_once(source, fire)
            except _SEND_ERRORS as exc:
                if time.monotonic() + delay > fire.give_up_at:
                    self.metrics.fires.labels("failed").inc()
                    logger.error(
                        "schedule %s NOT SENT: %s; gave up when its time ran out",
                        fire.task.schedule_id,
                        exc,
                    )
                    return False
                self.metrics.retries.inc()
                logger.warning(
                    "sending schedule %s failed (%s); retrying in %.2f s",
                    fire.task.schedule_id,
                    exc,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_SECONDS)

    async def _send_once(self, source: SyncdScheduleSource, fire: _Fire) -> bool:
        task = fire.task
        outcome = await source.claim(task, fire.token, fire.due)
        if outcome != CLAIMED:
            self.metrics.fires.labels(outcome.replace(" ", "_")).inc()
            return False
        try:
            await (
                AsyncKicker(task.task_name, self.broker, task.labels)
                .with_labels(schedule_id=task.schedule_id)
                .with_task_id(task_id=fire.task_id)
                .kiq(*task.args, **task.kwargs)
            )
        except _SEND_ERRORS as exc:
            # Redis refused the message (an error reply): nothing was written, so the claim
            # is given back and another scheduler may send it if this one gives up. Any
            # other failure (a timeout, a dropped connection) may have written it: the
            # claim stays ours, and the retry, which claims with the same token, sends it
            # with the same task id (recorded once even if both copies arrive).
            if isinstance(exc.__cause__ or exc, ResponseError):
                with contextlib.suppress(RedisError, OSError):
                    await source.release(task, fire.token, fire.due)
            raise
        self.metrics.fires.labels("sent").inc()
        return True

    async def _after_send(self, source: SyncdScheduleSource, task: ScheduledTask) -> None:
        """Remove a one-shot that was sent; a failure here is no reason to send it again."""
        try:
            await source.post_send(task)
        except Exception:
            # Its claim lasts a week: no scheduler sends it again meanwhile.
            logger.exception("schedule %s sent but not removed", task.schedule_id)
