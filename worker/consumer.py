"""How a worker takes messages from the queue streams, and gives back what it cannot finish.

`StreamConsumer` is the `RedisStreamBroker` the worker runs on, with its own `listen`:

- **Redelivery.** A message stays pending in the consumer group until it is acknowledged.
  Every few seconds the consumer claims (XAUTOCLAIM) messages pending longer than
  `SYNCD_IDLE_TIMEOUT_SECONDS`: their worker died. taskiq-redis claims only right after a
  read that returned new messages, so on a quiet stream a dead worker's message would wait
  for the next unrelated message; here the claim does not depend on traffic.
- **Deaths are counted in the message.** A claimed message was delivered before and never
  acknowledged: each earlier delivery killed its worker. Redis counts deliveries; the
  consumer adds them to the message's `_deaths` label, which the worker checks before
  running it (`worker.broker`): after `SYNCD_MAX_DELIVERIES` deaths it is dead-lettered.
- **Hand-back.** Everything fetched and not acknowledged (running attempts stopped at the
  end of the shutdown grace, messages read ahead and never started) is handed back on
  shutdown: sent again and acknowledged in one MULTI, so another worker takes it at once
  instead of after the idle timeout, and the hand-back does not count as a death.
- **Retries that wait** (`send_later`) are kept in a sorted set next to their stream,
  scored by due time, not in a worker's memory: they survive a restart. Every worker
  moves due entries into their stream twice a second, with one atomic script per stream.
- **Outages.** A lost connection is logged and retried with backoff; a consumer group lost
  with a restarted Redis is declared again. Runs in flight finish and acknowledge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq import AckableMessage, TaskiqMessage
from taskiq_redis import RedisStreamBroker

from worker.labels import DEATHS_LABEL, label_count

logger = logging.getLogger("syncd.worker")

RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 30.0
# How often pending messages of dead workers are looked for (capped by half the idle timeout).
CLAIM_INTERVAL_SECONDS = 5.0

# Retries waiting for their time: every worker looks this often, so a retry starts at most
# about this late.
MOVE_INTERVAL_SECONDS = 0.5
MOVE_BATCH = 500
# One script per stream moves due entries: atomic, so two workers never both send one.
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, data in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'data', data)
end
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
end
return #due
"""

Entry = tuple[str, str]  # stream, entry id


def delayed_key(stream: str) -> str:
    """The sorted set of messages waiting to be sent to `stream`, scored by due time."""
    return f"{stream}:delayed"


class StreamConsumer(RedisStreamBroker):
    """A RedisStreamBroker that reclaims on its own clock, counts deaths and hands back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams = [self.queue_name, *self.additional_streams]
        self.claim_interval = min(CLAIM_INTERVAL_SECONDS, self.idle_timeout / 2000)
        # Fetched and not acknowledged yet: what a hand-back sends again.
        self.outstanding: dict[Entry, bytes] = {}
        self._mover: asyncio.Task[None] | None = None
        self.handed_back = False  # from then on this worker sends nothing
        # One client for the short commands (acks above all): building a Redis client costs
        # more than the XACK itself. Commands take connections from the shared pool.
        self.client = Redis(connection_pool=self.connection_pool)

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        delay = RECONNECT_MIN_SECONDS
        while True:
            try:
                async for message in self._deliveries():
                    delay = RECONNECT_MIN_SECONDS
                    yield message
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("lost Redis (%s); reconnecting in %.1f s", exc, delay)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                logger.warning("consumer group missing (Redis restarted empty?); recreating it")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)
            await self._redeclare_group()

    async def _deliveries(self) -> AsyncGenerator[AckableMessage, None]:
        loop = asyncio.get_running_loop()
        async with Redis(connection_pool=self.connection_pool) as client:
            next_claim = 0.0
            while True:
                if loop.time() >= next_claim:
                    next_claim = loop.time() + self.claim_interval
                    for stream in self.streams:
                        for message in await self._claim(client, stream):
                            yield message
                fetched: Any = await client.xreadgroup(
                    self.consumer_group_name,
                    self.consumer_name,
                    dict.fromkeys(self.streams, ">"),
                    block=self.block,
                    count=self.count,
                )
                batch = [
                    (_text(stream), _text(entry_id), fields[b"data"])
                    for stream, entries in fetched or []
                    for entry_id, fields in entries
                ]
                for stream, entry_id, data in batch:
                    self.outstanding[stream, entry_id] = data
                for stream, entry_id, data in batch:
                    yield self._message(stream, entry_id, data)

    async def _claim(self, client: Redis, stream: str) -> list[AckableMessage]:
        """Messages of dead workers, with the deaths they caused added to their labels."""
        reply: Any = await client.xautoclaim(
            stream,
            self.consumer_group_name,
            self.consumer_name,
            min_idle_time=self.idle_timeout,
            start_id="0-0",
            count=self.unacknowledged_batch_size,
        )
        claimed = [(_text(entry_id), fields[b"data"]) for entry_id, fields in reply[1] if fields]
        if not claimed:
            return []
        pending: Any = await client.xpending_range(
            stream,
            self.consumer_group_name,
            min=claimed[0][0],
            max=claimed[-1][0],
            count=len(claimed) + len(self.outstanding),
            consumername=self.consumer_name,
        )
        deliveries = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        messages = []
        for entry_id, stored in claimed:
            earlier = deliveries.get(entry_id, 2) - 1
            logger.warning(
                "message %s of %s: its worker died (%d delivery(ies) without an outcome)",
                entry_id,
                stream,
                earlier,
            )
            # Handed back with the deaths in its labels: the new entry starts a new count.
            data = self._with_deaths(stored, earlier)
            self.outstanding[stream, entry_id] = data
            messages.append(self._message(stream, entry_id, data))
        return messages

    def _with_deaths(self, data: bytes, earlier: int) -> bytes:
        try:
            message = self.formatter.loads(data)
        except Exception:  # not ours to judge here: the receiver reports what it cannot read
            return data
        deaths = label_count(message.labels, DEATHS_LABEL) + earlier
        message.labels[DEATHS_LABEL] = deaths
        return self.formatter.dumps(message).message

    def _message(self, stream: str, entry_id: str, data: bytes) -> AckableMessage:
        return AckableMessage(data=data, ack=self._acker(stream, entry_id))

    def _acker(self, stream: str, entry_id: str) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            if self.outstanding.pop((stream, entry_id), None) is None:
                return  # handed back already
            await self.client.xack(stream, self.consumer_group_name, entry_id)

        return ack

    async def hand_back(self) -> int:
        """Send every outstanding message again and acknowledge it, atomically."""
        self.handed_back = True
        entries, self.outstanding = self.outstanding, {}
        if not entries:
            return 0
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for (stream, entry_id), data in entries.items():
                    pipe.xadd(stream, {b"data": data})
                    pipe.xack(stream, self.consumer_group_name, entry_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # Still pending: after the idle timeout another worker claims them.
            logger.warning("could not hand back %d message(s): %s", len(entries), exc)
            return 0
        logger.info("handed back %d unfinished message(s) to the queue", len(entries))
        return len(entries)

    # -- retries that wait -------------------------------------------------------------

    async def send_later(self, stream: str, data: bytes, delay: float) -> None:
        """Send a message to `stream` after `delay` seconds; the wait is kept in Redis."""
        if self.handed_back:
            # Its attempt's message was handed back: it runs again, sending it is not ours.
            logger.info("not sending a message to %s: shutting down", stream)
            return
        if delay <= 0:
            await self.client.xadd(stream, {b"data": data})
        else:
            await self.client.zadd(delayed_key(stream), {data: time.time() + delay})

    async def resend(
        self, message: TaskiqMessage, delay: float, labels: dict[str, Any | None]
    ) -> None:
        """Send a copy of `message` to its stream after `delay` seconds, with `labels`
        changed (None removes one). The message itself keeps its labels: the middlewares
        after the caller still need those of the attempt that ran."""
        again = message.model_copy(deep=True)
        for name, value in labels.items():
            if value is None:
                again.labels.pop(name, None)
            else:
                again.labels[name] = value
        stream = str(message.labels.get("queue_name") or self.queue_name)
        await self.send_later(stream, self.formatter.dumps(again).message, delay)

    async def startup(self) -> None:
        await super().startup()
        if self.is_worker_process:
            self._mover = asyncio.create_task(self._move_due_forever(), name="syncd-delayed")

    async def shutdown(self) -> None:
        if self._mover is not None:
            self._mover.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mover
        await super().shutdown()

    async def move_due(self, client: Redis) -> int:
        """Move the retries that are due into their streams; each one exactly once."""
        script = client.register_script(_MOVE_DUE)
        moved = 0
        for stream in self.streams:
            keys = [delayed_key(stream), stream]
            moved += int(await script(keys=keys, args=[time.time(), MOVE_BATCH]))
        return moved

    async def _move_due_forever(self) -> None:
        async with Redis(connection_pool=self.connection_pool) as client:
            while True:
                try:
                    await self.move_due(client)
                except (RedisError, OSError) as exc:
                    logger.debug("cannot move due retries yet: %s", exc)
                await asyncio.sleep(MOVE_INTERVAL_SECONDS)

    async def _redeclare_group(self) -> None:
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
            await self._declare_consumer_group()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
