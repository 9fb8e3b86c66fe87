"""Live updates: one poller for the whole process, and a hub of server-sent event streams.

Every `poll_seconds` the poller asks each store one cheap question: Redis, in one
pipelined round trip, the version key and every task's status key (MGETs of 1,000 keys);
PostgreSQL, the highest execution id (the end of the primary key) and, only when it
moved, the rows above the last one seen. Differences become events:

    event: status     {"name", "config_id", "status", "row"}
    event: execution  {"execution": <as in history --format json>, "row"}

`row` is the task's new task-list row (`TaskBoard`), so a page updates a line without
asking for anything. A moved version key means syncd wrote the stores (a sync, a pause):
the board plans again at its next read. The poller idles while nobody has read the board
or held a stream for a while, so an unused console costs nothing.

Ids are handed out when a row is inserted and become visible at commit, so a transaction
that commits late with a lower id is not announced; the pages read the table itself, so
this costs a page a live line, never a wrong one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Engine

from syncd.adapters.redis import client_from_url, translate_errors
from syncd.api.board import TaskBoard
from syncd.api.errors import TooManyStreams
from syncd.api.queries import executions_after, max_execution_id
from syncd.core.errors import SyncdError
from syncd.core.keys import KeyLayout
from syncd.core.model import Execution
from syncd.views.history import execution_json

log = logging.getLogger("syncd.api")

MGET_CHUNK = 1000
IDLE_AFTER_SECONDS = 120.0  # no reader and no stream for this long: stop polling
KEEPALIVE_SECONDS = 15.0  # a comment line, so proxies keep the stream and a gone client shows
QUEUE_SIZE = 500  # events one slow stream may fall behind before it is told to reload
EXECUTIONS_PER_POLL = 200


@dataclass(frozen=True)
class Event:
    kind: str  # "status" | "execution" | "reload"
    data: dict[str, Any]
    id: int = 0

    def encode(self) -> str:
        # json.dumps writes no newline, so the data is one `data:` line.
        return f"id: {self.id}\nevent: {self.kind}\ndata: {json.dumps(self.data)}\n\n"


@dataclass(eq=False)
class Stream:
    """One client's queue of events, fed from the poller's thread."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    overflowed: bool = False

    def offer(self, event: Event) -> None:
        """Called on the stream's loop: queue it, or tell the client it fell behind."""
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True


class EventHub:
    """At most `max_streams` streams; the poller publishes to all of them."""

    def __init__(self, max_streams: int) -> None:
        self._max = max_streams
        self._streams: set[Stream] = set()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    @property
    def active(self) -> int:
        return len(self._streams)

    def open(self) -> Stream:
        with self._lock:
            if len(self._streams) >= self._max:
                raise TooManyStreams(f"all {self._max} event streams are in use; retry later")
            stream = Stream(asyncio.get_running_loop())
            self._streams.add(stream)
            return stream

    def close(self, stream: Stream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        event = Event(kind, data, next(self._ids))
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            try:
                stream.loop.call_soon_threadsafe(stream.offer, event)
            except RuntimeError:  # its loop has closed: the server is stopping
                self.close(stream)


async def event_lines(
    stream: Stream, hub: EventHub, still_allowed: Callable[[], Awaitable[bool]]
) -> AsyncIterator[str]:
    """The text of one SSE response; ends when the client leaves (the server cancels it),
    falls too far behind, or may no longer read (logged out, token revoked, session
    expired: asked every `KEEPALIVE_SECONDS`, busy or not); the last two are told to reload."""
    try:
        yield "retry: 3000\n\n"
        checked = time.monotonic()
        while True:
            if stream.overflowed:
                yield Event("reload", {"reason": "too many events; reload the page"}).encode()
                return
            try:
                line = (await asyncio.wait_for(stream.queue.get(), KEEPALIVE_SECONDS)).encode()
            except TimeoutError:
                line = ": keepalive\n\n"
            if time.monotonic() - checked >= KEEPALIVE_SECONDS:
                if not await still_allowed():
                    yield Event("reload", {"reason": "signed out; reload the page"}).encode()
                    return
                checked = time.monotonic()
            yield line
    finally:
        hub.close(stream)


class Poller:
    """The background thread that turns store changes into board updates and events."""

    def __init__(
        self,
        *,
        board: TaskBoard,
        hub: EventHub,
        engine: Engine,
        redis_url: str,
        layout: KeyLayout,
        interval: float,
    ) -> None:
        self._board = board
        self._hub = hub
        self._engine = engine
        self._client, shown = client_from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
        self._where = f"Redis at {shown}"
        self._layout = layout
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="syncd-poller", daemon=True)
        self._statuses: dict[int, str | None] = {}
        self._version: bytes | None = None
        self._last_id: int | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if not self._is_watched():
                continue
            try:
                self.poll_once()
            except SyncdError as exc:  # a store is away: try again at the next tick
                log.warning("poll failed: %s", exc)
            except Exception:  # a bug must not end live updates for good
                log.exception("poll failed")

    def _is_watched(self) -> bool:
        recently_read = time.monotonic() - self._board.last_used < IDLE_AFTER_SECONDS
        return self._hub.active > 0 or recently_read

    def poll_once(self) -> None:
        ids = self._board.config_ids()
        baseline = self._board.baseline()
        if not ids or baseline is None:
            return
        if self._last_id is None:  # start from what the pages were given
            self._statuses, self._last_id = baseline
        version, statuses = self._read_redis(list(ids))
        changed = {i: s for i, s in statuses.items() if self._statuses.get(i, "") != s}
        self._statuses = statuses
        if version != self._version and self._version is not None:
            self._board.mark_stale()
        self._version = version
        self._announce_statuses(changed, ids)
        self._announce_executions(self._new_executions())
        for row in self._board.tick():
            self._hub.publish("row", {"row": row})

    def _read_redis(self, ids: Sequence[int]) -> tuple[bytes | None, dict[int, str | None]]:
        keys = [self._layout.status_key(i) for i in ids]
        with translate_errors(self._where):
            pipe = self._client.pipeline(transaction=False)
            pipe.get(self._layout.version_key)
            for start in range(0, len(keys), MGET_CHUNK):
                pipe.mget(keys[start : start + MGET_CHUNK])
            version, *chunks = pipe.execute()
        values = [v for chunk in cast(list[list[bytes | None]], chunks) for v in chunk]
        decoded = [None if v is None else v.decode("utf-8", "replace") for v in values]
        return cast(bytes | None, version), dict(zip(ids, decoded, strict=True))

    def _new_executions(self) -> list[Execution]:
        top = max_execution_id(self._engine)
        last = self._last_id or 0
        if top <= last:
            return []
        runs = executions_after(self._engine, last, EXECUTIONS_PER_POLL)
        self._last_id = max([top if len(runs) < EXECUTIONS_PER_POLL else 0,
                             *(r.id or 0 for r in runs)])  # fmt: skip
        return runs

    def _announce_statuses(self, changed: Mapping[int, str | None], ids: Mapping[int, str]) -> None:
        if not changed:
            return
        rows = {row["name"]: row for row in self._board.on_statuses(changed)}
        for config_id, status in changed.items():
            name = ids[config_id]
            row = rows.get(name) or self._board.row(name)  # already current: a plan read it
            data = {"name": name, "config_id": config_id, "status": status, "row": row}
            self._hub.publish("status", data)

    def _announce_executions(self, runs: list[Execution]) -> None:
        if not runs:
            return
        rows = {row["name"]: row for row in self._board.on_executions(runs)}
        for run in runs:
            row = rows.get(run.name or "") or self._board.row(run.name or "")
            data = {"execution": execution_json(run), "row": row}
            self._hub.publish("execution", data)
