"""The worker's recording middleware: one `task_executions` row per finished attempt.

Added to the broker by `worker.app`. Hooks only build records and buffer them; a
background task writes them in batches through a sink, retries through database outages
and spools to a local JSONL file on shutdown. It never raises into taskiq: an exception
in a hook would make taskiq redeliver the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.exceptions import NoResultError

from syncd.core.model import Execution
from syncd.core.settings import Settings
from worker.labels import label_number
from worker.recording.records import (
    TASK_ID_CHARS,
    Attempt,
    TaskLabels,
    attempt_number,
    clean_text,
    config_id_label,
    error_message,
    format_traceback,
    json_result,
    record_json,
)
from worker.recording.sink import ExecutionSink, PostgresSink
from worker.recording.spool import Spool, default_spool_path

logger = logging.getLogger("worker.recorder")

# Attempts whose post_execute never came (another middleware raised first) must not pile up.
MAX_IN_FLIGHT = 10_000
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
# The flusher writes once no record came for this long (or the batch is full, or it waited
# `flush_interval`): bursts make few big statements, the end of a burst is written soon.
QUIET_SECONDS = 0.02


@dataclass(frozen=True)
class RecorderStats:
    written: int  # records whose batch the sink accepted (duplicates and rejects included)
    flush_failures: int
    buffered: int
    spooled: int  # records appended to the spool file


class ExecutionRecorder(TaskiqMiddleware):
    """Records every finished attempt; add it last so its hooks run first after the task."""

    def __init__(
        self,
        sink: ExecutionSink,
        *,
        spool_path: Path | None = None,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        max_buffered: int = 100_000,
        write_timeout: float = 30.0,
        shutdown_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.sink = sink
        self.spool = Spool(spool_path or default_spool_path())
        self._batch_size, self._flush_interval = batch_size, flush_interval
        self._max_buffered, self._write_timeout = max_buffered, write_timeout
        self._shutdown_timeout = shutdown_timeout
        # By message object: a middleware may replace or change the message's labels.
        self._in_flight: dict[int, Attempt] = {}
        self._buffer: deque[Execution] = deque()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._stopping = self._closed = self._spilled = self._sealed = False
        # Claimed spool files, deleted once `_done` (records taken off the buffer) reaches n.
        self._claims: list[tuple[int, list[Path]]] = []
        self._done = self._written = self._failures = self._spooled = 0
        self._last_record = 0.0

    @property
    def stats(self) -> RecorderStats:
        return RecorderStats(self._written, self._failures, len(self._buffer), self._spooled)

    # taskiq hooks: each one catches everything, an exception here would redeliver the task.

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        try:
            now, number = _now(), attempt_number(message)
            self._in_flight[id(message)] = Attempt(message, number, now, time.monotonic())
            if len(self._in_flight) > MAX_IN_FLIGHT:
                self._in_flight.pop(next(iter(self._in_flight)))
        except Exception:
            logger.exception("recorder: pre_execute failed")
        return message

    def on_error(
        self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException
    ) -> None:
        # Kept as raised: a middleware running after this one may replace result.error.
        try:
            attempt = self._in_flight.get(id(message))
            if attempt is not None and attempt.message is message:
                attempt.error = exception
        except Exception:
            logger.exception("recorder: on_error failed")

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        if self._sealed or isinstance(self._raised(message, result), NoResultError):
            # No outcome: its message was sent again (a dead child) or is being handed back.
            self._in_flight.pop(id(message), None)
            return
        try:
            self._enqueue(self._build(message, result))
        except Exception:
            logger.exception("recorder: could not record task %s", message.task_id)

    def _raised(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> BaseException | None:
        attempt = self._in_flight.get(id(message))
        seen = attempt.error if attempt is not None and attempt.message is message else None
        return seen or result.error

    async def startup(self) -> None:
        # Clients (kickers, the scheduler) load the same broker but run no tasks.
        if not self.broker.is_worker_process:
            return
        try:
            self._reclaim()
        except Exception:
            logger.exception("recorder: could not read the spool %s", self.spool.path)
        self._flusher = asyncio.create_task(self._run(), name="syncd-recorder-flush")

    def seal(self) -> None:
        """Record nothing more: the worker is handing back the attempts still running."""
        self._sealed = True

    async def shutdown(self) -> None:
        await self.stop(self._shutdown_timeout)

    async def stop(self, timeout: float) -> None:
        """Write what is buffered within `timeout`, spool the rest, close the sink."""
        self._stopping = True
        self._wake.set()
        try:
            await self._drain(timeout)
            left, self._buffer = list(self._buffer), deque()
            if left:
                self._spill(left)
        except Exception:
            logger.exception("recorder: shutdown failed")
        finally:
            self._closed = True
            await self.sink.close()

    # building and buffering

    def _take(self, message: TaskiqMessage, completed: datetime) -> Attempt:
        attempt = self._in_flight.pop(id(message), None)
        if attempt is not None and attempt.message is message:
            return attempt
        # pre_execute not seen (or its message replaced by a later middleware): still
        # recorded, without start or duration; the labels are the best guess of the attempt.
        return Attempt(message, attempt_number(message), completed, None)

    def _build(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> Execution:
        completed = _now()
        attempt = self._take(message, completed)
        elapsed = None if attempt.clock is None else round(time.monotonic() - attempt.clock, 3)
        error = (attempt.error or result.error) if result.is_err else None
        timeout = label_number(message.labels, "timeout")
        task = TaskLabels.of(message.labels)
        return Execution(
            config_id=config_id_label(message.labels),
            task_id=clean_text(message.task_id, TASK_ID_CHARS),
            attempt=attempt.number,
            is_success=not result.is_err,
            started_at=attempt.started_at,
            completed_at=completed,
            duration_seconds=elapsed,
            result=None if result.is_err else json_result(result.return_value),
            error_message=None if error is None else error_message(error, timeout, elapsed),
            error_traceback=None if error is None else format_traceback(error),
            task_name=task.task_name,
            config_hash=task.config_hash,
            git_revision=task.git_revision,
        )

    def _enqueue(self, record: Execution) -> None:
        if self._closed or len(self._buffer) >= self._max_buffered:
            # No fsync per record while the buffer is full: that would stall the event loop
            # at the moment the worker is busiest; the OS still has it if the process dies.
            self._spill([record], durable=self._closed)
            return
        self._buffer.append(record)
        self._last_record = time.monotonic()
        # The first record wakes an idle flusher; a full batch cuts its lingering short.
        if len(self._buffer) in (1, self._batch_size):
            self._wake.set()

    def _spill(self, records: Sequence[Execution], durable: bool = True) -> None:
        try:
            self.spool.append(records, durable)
        except Exception:
            # Last resort: the records go to the log, where an operator can still find them.
            rows = [record_json(r) for r in records]
            logger.exception("recorder: cannot spool %s, records lost: %s", self.spool.path, rows)
            return
        self._spooled += len(records)
        self._spilled = True
        # Every claimed record is now committed, in the buffer or spooled again.
        if not self._buffer:
            self._release_claims(force=True)

    # the spool

    def _reclaim(self) -> None:
        self._spilled = False
        pending = {path for _, paths in self._claims for path in paths}
        claimed = self.spool.claim(skip=pending)
        records = [record for path in claimed for record in Spool.read(path)]
        self._buffer.extend(records)
        if claimed:
            self._claims.append((self._done + len(self._buffer), claimed))
            logger.info("recorder: re-queued %d spooled record(s)", len(records))

    def _release_claims(self, force: bool = False) -> None:
        keep = []
        for done_at, paths in self._claims:
            if force or self._done >= done_at:
                for path in paths:
                    path.unlink(missing_ok=True)
            else:
                keep.append((done_at, paths))
        self._claims = keep

    # the flusher

    async def _run(self) -> None:
        delay = BACKOFF_FIRST
        while not (self._stopping and not self._buffer):
            await self._wait_for_work()
            try:
                flushed = await self._flush_once()
                if flushed and self._spilled and not self._buffer:
                    self._reclaim()  # the outage is over: take spilled records back
            except Exception:
                logger.exception("recorder: flush loop error")
                flushed = False
            if flushed:
                delay = BACKOFF_FIRST
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    async def _wait_for_work(self) -> None:
        """Sleep until there is something to write, then linger while records keep coming
        (for at most `flush_interval`, or until a batch is full): a burst goes out in few
        statements, and its last records, or a lone one, QUIET_SECONDS after they came."""
        if not self._buffer and not self._stopping:
            self._wake.clear()
            if self._spilled:  # the spool is retried every interval, record or not
                await self._wait_for_wake(BACKOFF_MAX)
            else:
                await self._wake.wait()
        deadline = time.monotonic() + self._flush_interval
        while len(self._buffer) < self._batch_size and not self._stopping:
            wake_at = min(deadline, self._last_record + QUIET_SECONDS)
            now = time.monotonic()
            if now >= wake_at:
                return
            self._wake.clear()
            await self._wait_for_wake(wake_at - now)

    async def _wait_for_wake(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _flush_once(self) -> bool:
        if not self._buffer:
            return True
        batch = list(itertools.islice(self._buffer, self._batch_size))
        try:
            await asyncio.wait_for(self.sink.write(batch), self._write_timeout)
        except Exception as exc:
            self._failures += 1
            logger.warning("recorder: writing %d record(s) failed: %r", len(batch), exc)
            return False
        # Only now do the records leave memory; new ones were appended at the other end.
        for _ in batch:
            self._buffer.popleft()
        self._done += len(batch)
        self._written += len(batch)
        self._release_claims()
        return True

    async def _drain(self, timeout: float) -> None:
        if self._flusher is None and self._buffer:
            self._flusher = asyncio.create_task(self._run(), name="syncd-recorder-drain")
        if self._flusher is None:
            return
        with contextlib.suppress(TimeoutError):
            # On the deadline wait_for cancels the flusher; what is left gets spooled.
            await asyncio.wait_for(self._flusher, timeout)


def _now() -> datetime:
    return datetime.now(UTC)


def recorder_from_settings(settings: Settings, **options: Any) -> ExecutionRecorder:
    """The recorder a worker adds to its broker: PostgreSQL and the spool from settings."""
    options = {"spool_path": settings.recorder_spool, **options}
    return ExecutionRecorder(PostgresSink(settings.database_url), **options)
