"""Trim the queue streams safely: drop only entries every consumer group is done with.

The broker keeps `maxlen=None` (length trimming drops messages nobody consumed yet),
so acked entries would stay forever. `StreamTrimmer`, a middleware the broker adds, runs in
worker processes and every minute (jittered) trims each served stream with `XTRIM MINID`
below the oldest entry any group may still need (`safe_min_id`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from taskiq import TaskiqMiddleware

logger = logging.getLogger(__name__)

MAX_SEQ = 2**64 - 1
_STREAM_ID = re.compile(r"(\d+)-(\d+)")
DEFAULT_INTERVAL = 60.0
# Each `~` call removes at most 100 x stream-node-max-entries entries (Redis' default LIMIT):
# a big backlog is cut in short steps instead of one long blocking command.
MAX_CALLS_PER_ROUND = 100


@dataclass(frozen=True, order=True)
class StreamId:
    """A stream entry id `ms-seq`, compared numerically (as strings "10-0" < "9-0")."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, text: str) -> StreamId:
        match = _STREAM_ID.fullmatch(text)
        if match is None:
            raise ValueError(f"not a stream id: {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def next(self) -> StreamId:
        """The smallest id above this one."""
        return StreamId(self.ms, self.seq + 1) if self.seq < MAX_SEQ else StreamId(self.ms + 1, 0)

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


@dataclass(frozen=True)
class GroupState:
    """What one consumer group still needs: its delivery cursor and its oldest unacked entry."""

    name: str
    last_delivered: StreamId
    oldest_pending: StreamId | None


def safe_min_id(groups: Sequence[GroupState]) -> StreamId | None:
    """The lowest id any group may still need; every entry below it is consumed by all groups.

    Per group: entries up to last-delivered-id were delivered; those not pending were acked.
    So the group needs its oldest pending entry, or else whatever comes after the cursor.
    None without groups: a group created later from "0" would expect every entry.
    """
    return min((_needed_from(g) for g in groups), default=None)


def _needed_from(group: GroupState) -> StreamId:
    after = group.last_delivered.next()
    # min() with the cursor too: an entry pending above it exists only after XGROUP SETID back.
    return after if group.oldest_pending is None else min(group.oldest_pending, after)


async def group_states(client: Redis, stream: str) -> list[GroupState] | None:
    """The stream's groups, read in one MULTI so cursor and pending list are consistent.

    None when the set of groups changed between the two reads (try again next round).
    """
    try:
        names = [g["name"] for g in await client.xinfo_groups(stream)]
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return []
        raise
    if not names:
        return []
    async with client.pipeline(transaction=True) as pipe:
        pipe.xinfo_groups(stream)
        for name in names:
            pipe.xpending(stream, name)
        infos, *pendings = await pipe.execute()
    if [g["name"] for g in infos] != names:
        return None
    return [_group_state(info, pending) for info, pending in zip(infos, pendings, strict=True)]


def _group_state(info: dict[str, Any], pending: dict[str, Any]) -> GroupState:
    oldest = StreamId.parse(pending["min"]) if pending["pending"] else None
    return GroupState(info["name"], StreamId.parse(info["last-delivered-id"]), oldest)


async def trim_stream(client: Redis, stream: str, *, approximate: bool = True) -> int:
    """Trim entries every group has consumed; return how many were removed.

    `approximate` (XTRIM MINID ~) removes whole macro nodes only, so it trims less than the
    exact form, never more: safe, cheaper, and a few consumed entries may stay.
    `client` must decode responses (`decode_responses=True`).
    """
    groups = await group_states(client, stream)
    bound = None if groups is None else safe_min_id(groups)
    if bound is None:
        return 0
    removed = 0
    for _ in range(MAX_CALLS_PER_ROUND if approximate else 1):
        # The bound stays valid between calls: groups only move forward.
        step = int(await client.xtrim(stream, minid=str(bound), approximate=approximate))
        removed += step
        if step == 0:
            break
    return removed


class StreamTrimmer(TaskiqMiddleware):
    """Trims the served streams from inside worker processes; never raises into taskiq."""

    def __init__(
        self,
        redis_url: str,
        streams: Sequence[str],
        *,
        interval: float = DEFAULT_INTERVAL,
        approximate: bool = True,
    ) -> None:
        super().__init__()
        self.redis_url, self.streams = redis_url, list(streams)
        self.interval, self.approximate = interval, approximate
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        # Clients (the scheduler, `syncd run`) load the same broker but consume nothing.
        if self.broker.is_worker_process and self._task is None:
            self._task = asyncio.create_task(self._run(), name="syncd-stream-trimmer")

    async def shutdown(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        try:
            client = Redis.from_url(
                self.redis_url, decode_responses=True, socket_timeout=30, socket_connect_timeout=5
            )
        except Exception:
            logger.exception("stream trimmer: bad Redis URL, not trimming")
            return
        try:
            while True:
                # Jitter: several workers serving the same streams do not trim in lockstep.
                await asyncio.sleep(self.interval * random.uniform(0.75, 1.25))  # noqa: S311
                await self.trim_all(client)
        finally:
            await client.aclose()

    async def trim_all(self, client: Redis) -> int:
        """One round over every served stream; failures are logged, never raised."""
        total = 0
        for stream in self.streams:
            try:
                removed = await trim_stream(client, stream, approximate=self.approximate)
            except Exception as exc:
                logger.warning("stream trimmer: cannot trim %s: %r", stream, exc)
                continue
            logger.debug("stream trimmer: removed %d consumed entries from %s", removed, stream)
            total += removed
        return total
