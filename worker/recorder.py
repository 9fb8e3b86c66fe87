"""The worker's recording middleware: one `task_executions` row per finished attempt.

Added to the broker by the worker's broker module (`recorder_from_settings`). Hooks only build
records and buffer them; a background task writes them in batches, retries through database
outages and spools to a local JSONL file on shutdown. It never raises into taskiq (DESIGN §8).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import itertools
import json
import logging
import os
import re
import tempfile
import time
import traceback
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult

from syncd.db_store import parse_url
from syncd.settings import Settings

logger = logging.getLogger(__name__)

SPOOL_ENV = "SYNCD_RECORDER_SPOOL"
MAX_RESULT_BYTES = 64 * 1024
RESULT_PREVIEW_CHARS = 1000
MAX_TRACEBACK_CHARS = 20 * 1024
MAX_MESSAGE_CHARS = 4 * 1024
TASK_ID_CHARS = 64  # task_executions.task_id is String(64)
# Attempts whose post_execute never came (another middleware raised first) must not pile up.
MAX_IN_FLIGHT = 10_000
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
# "\u0000" escapes not preceded by an odd number of backslashes: PostgreSQL's jsonb refuses them.
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


@dataclass(frozen=True)
class ExecutionRecord:
    """One finished attempt, exactly as it is inserted (every field already bounded and clean)."""

    config_id: int | None
    task_id: str
    attempt: int
    is_success: bool
    started_at: datetime
    completed_at: datetime
    duration_seconds: float | None
    result: Any
    error_message: str | None
    error_traceback: str | None

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies the result for nothing.
        row = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        row["started_at"] = self.started_at.isoformat()
        row["completed_at"] = self.completed_at.isoformat()
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> ExecutionRecord:
        times = {k: datetime.fromisoformat(row[k]) for k in ("started_at", "completed_at")}
        return cls(**{**row, **times})


@dataclass(frozen=True)
class RecorderStats:
    written: int  # records whose batch the sink accepted (duplicates and rejects included)
    flush_failures: int
    buffered: int
    spooled: int  # records appended to the spool file


class ExecutionSink(Protocol):
    """Where records go. `write` returns once every record is stored (or permanently refused)."""

    async def write(self, records: Sequence[ExecutionRecord]) -> None: ...

    async def close(self) -> None: ...


# --- building a record --------------------------------------------------------------------


def clean_text(text: str, limit: int, keep_tail: bool = False) -> str:
    """Bounded, and storable by PostgreSQL: no NUL, no lone surrogate (either fails a batch)."""
    if len(text) > limit:
        cut = len(text) - limit
        text = f"[{cut} chars cut]\n" + text[-limit:] if keep_tail else text[:limit]
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def json_result(value: Any) -> Any:
    """The task's return value as a JSON value: non-JSON values stringified, big ones cut."""
    try:
        text = json.dumps(value, default=str, allow_nan=False, ensure_ascii=False)
    except Exception:  # NaN, circular, non-str keys, a __str__ that raises
        text = json.dumps(_safe_repr(value), ensure_ascii=False)
    text = _NUL_ESCAPE.sub(r"\1\\ufffd", text).encode("utf-8", "replace").decode("utf-8")
    size = len(text.encode("utf-8"))
    if size > MAX_RESULT_BYTES:
        return {"truncated": True, "bytes": size, "preview": text[:RESULT_PREVIEW_CHARS]}
    return json.loads(text)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)[: MAX_RESULT_BYTES // 2]
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def error_message(exc: BaseException, timeout: float | None, elapsed: float | None) -> str:
    # taskiq's `timeout` label raises a bare TimeoutError (anyio.fail_after); a TimeoutError
    # before the deadline came from the task itself and keeps its own message.
    if isinstance(exc, TimeoutError) and _reached(elapsed, timeout):
        return f"TimeoutError: timed out after {timeout:g} s"
    text = str(exc)
    name = type(exc).__name__
    return clean_text(f"{name}: {text}" if text else name, MAX_MESSAGE_CHARS)


def _reached(elapsed: float | None, timeout: float | None) -> bool:
    # 10 ms of slack for clock granularity; elapsed starts in pre_execute, before the deadline.
    return elapsed is not None and timeout is not None and elapsed >= timeout - 0.01


def format_traceback(exc: BaseException) -> str:
    # The tail holds the raising frame and the final exception: keep that end.
    text = "".join(traceback.format_exception(exc))
    return clean_text(text, MAX_TRACEBACK_CHARS, keep_tail=True)


def _label_number(labels: dict[str, Any], name: str) -> float | None:
    try:
        return float(labels[name])
    except (KeyError, TypeError, ValueError):
        return None


def _config_id(labels: dict[str, Any]) -> int | None:
    number = _label_number(labels, "config_id")
    return int(number) if number is not None and number.is_integer() else None


def attempt_number(message: TaskiqMessage) -> int:
    # SimpleRetryMiddleware re-kicks with the same task_id and counts earlier tries in _retries.
    return int(_label_number(message.labels, "_retries") or 0) + 1


@dataclass
class _Attempt:
    """What pre_execute and on_error learn about one running attempt, for post_execute."""

    message: TaskiqMessage
    number: int
    started_at: datetime
    clock: float | None
    error: BaseException | None = None


# --- the spool file -----------------------------------------------------------------------


def default_spool_path() -> Path:
    """$SYNCD_RECORDER_SPOOL, else a per-user file under the temp dir (not shared with others)."""
    configured = os.environ.get(SPOOL_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"syncd-recorder-{os.getuid()}" / "spool.jsonl"


class Spool:
    """Records that could not be written yet, as JSON lines; safe for several worker processes.

    Appends and claims hold one lock file, so a claim (rename to a private name) never races
    an append. Claimed files are deleted only after their records committed; until then any
    process may read them again, which is harmless because inserts are idempotent.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def append(self, records: Sequence[ExecutionRecord], durable: bool = True) -> None:
        lines = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records)
        with self._locked(), open(self.path, "a", encoding="utf-8") as spool:
            spool.write(lines)
            spool.flush()
            if durable:
                os.fsync(spool.fileno())

    def claim(self, skip: set[Path]) -> list[Path]:
        """Take the spool file over under a private name; return every claimed file not in skip."""
        with self._locked():
            if self.path.exists():
                self.path.rename(
                    self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.claimed")
                )
        return sorted(set(self.path.parent.glob(f"{self.path.name}.*.claimed")) - skip)

    @staticmethod
    def read(path: Path) -> list[ExecutionRecord]:
        records = []
        with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as spool:
            for number, line in enumerate(spool, 1):
                try:
                    records.append(ExecutionRecord.from_json(json.loads(line)))
                except (ValueError, TypeError, KeyError):  # a line cut short by a crash
                    logger.warning("skipping unreadable line %d of %s", number, path)
        return records


# --- the PostgreSQL sink ------------------------------------------------------------------

# One statement, one jsonb parameter, whatever the batch size (as syncd.db_store does).
# The LEFT JOIN stores NULL for a config deleted meanwhile instead of failing the batch on
# the foreign key; ON CONFLICT makes a re-sent record (retried flush, redelivery) a no-op.
INSERT_SQL = """
INSERT INTO task_executions (config_id, task_id, attempt, is_success, started_at,
    completed_at, duration_seconds, result, error_message, error_traceback)
SELECT c.id, r.task_id, r.attempt, r.is_success, r.started_at,
    r.completed_at, r.duration_seconds, r.result, r.error_message, r.error_traceback
FROM jsonb_to_recordset(%s::jsonb) AS r(config_id bigint, task_id text, attempt integer,
    is_success boolean, started_at timestamptz, completed_at timestamptz,
    duration_seconds numeric, result jsonb, error_message text, error_traceback text)
LEFT JOIN task_configs AS c ON c.id = r.config_id
ON CONFLICT (task_id, attempt) DO NOTHING
"""
# Errors about the data itself: retrying cannot help, so the record is isolated and refused.
_REFUSED = (psycopg.DataError, psycopg.IntegrityError)


class PostgresSink:
    """Writes batches over one psycopg connection, reconnecting after any failure."""

    def __init__(self, database_url: str, connect_timeout: int = 5) -> None:
        url = parse_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._connect_timeout = connect_timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.inserted = 0
        self.refused = 0

    async def write(self, records: Sequence[ExecutionRecord]) -> None:
        try:
            try:
                await self._insert(records)
            except _REFUSED:
                # Find the bad record(s) one statement each, so the others still get in. A
                # lone record gets a second try too: a config deleted between the join and the
                # foreign key check fails once, then joins to NULL.
                await self._insert_one_by_one(records)
        except BaseException:
            # Broken, cancelled mid-statement or of unknown state: never reuse it.
            await self.close()
            raise

    async def _insert(self, records: Sequence[ExecutionRecord]) -> None:
        if self._conn is None:
            self._conn = await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,  # one statement per batch: it commits by itself
                connect_timeout=self._connect_timeout,
                application_name="syncd-recorder",
            )
        payload = json.dumps([r.to_json() for r in records], ensure_ascii=False)
        cursor = await self._conn.execute(INSERT_SQL, (payload,))
        self.inserted += max(cursor.rowcount, 0)

    async def _insert_one_by_one(self, records: Sequence[ExecutionRecord]) -> None:
        for record in records:
            try:
                await self._insert([record])
            except _REFUSED:
                self._refuse(record)

    def _refuse(self, record: ExecutionRecord) -> None:
        self.refused += 1
        logger.error("task_executions refused a record, dropped: %s", record.to_json())

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


# --- the middleware -----------------------------------------------------------------------


class ExecutionRecorder(TaskiqMiddleware):
    """Records every finished attempt; add it last so its hooks run first after the task."""

    def __init__(
        self,
        sink: ExecutionSink,
        *,
        spool_path: Path | None = None,
        batch_size: int = 500,
        flush_interval: float = 0.5,
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
        # By message object, not labels: SimpleRetryMiddleware bumps `_retries` in the failed
        # message's own labels (AsyncKicker.with_labels updates the dict in place) before
        # post_execute runs, so the labels then already name the next attempt.
        self._in_flight: dict[int, _Attempt] = {}
        self._buffer: deque[ExecutionRecord] = deque()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._stopping = self._closed = self._spilled = False
        # Claimed spool files, deleted once `_done` (records taken off the buffer) reaches n.
        self._claims: list[tuple[int, list[Path]]] = []
        self._done = self._written = self._failures = self._spooled = 0

    @property
    def stats(self) -> RecorderStats:
        return RecorderStats(self._written, self._failures, len(self._buffer), self._spooled)

    # taskiq hooks: each one catches everything, an exception here would redeliver the task.

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        try:
            now, number = _now(), attempt_number(message)
            self._in_flight[id(message)] = _Attempt(message, number, now, time.monotonic())
            if len(self._in_flight) > MAX_IN_FLIGHT:
                self._in_flight.pop(next(iter(self._in_flight)))
        except Exception:
            logger.exception("recorder: pre_execute failed")
        return message

    def on_error(
        self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException
    ) -> None:
        # The retry middleware then swaps result.error for NoResultError: keep the original.
        try:
            attempt = self._in_flight.get(id(message))
            if attempt is not None and attempt.message is message:
                attempt.error = exception
        except Exception:
            logger.exception("recorder: on_error failed")

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        try:
            self._enqueue(self._build(message, result))
        except Exception:
            logger.exception("recorder: could not record task %s", message.task_id)

    async def startup(self) -> None:
        # Clients (kickers, the scheduler) load the same broker but run no tasks.
        if not self.broker.is_worker_process:
            return
        try:
            self._reclaim()
        except Exception:
            logger.exception("recorder: could not read the spool %s", self.spool.path)
        self._flusher = asyncio.create_task(self._run(), name="syncd-recorder-flush")

    async def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        try:
            await self._drain()
            left, self._buffer = list(self._buffer), deque()
            if left:
                self._spill(left)
        except Exception:
            logger.exception("recorder: shutdown failed")
        finally:
            self._closed = True
            await self.sink.close()

    # building and buffering

    def _take(self, message: TaskiqMessage, completed: datetime) -> _Attempt:
        attempt = self._in_flight.pop(id(message), None)
        if attempt is not None and attempt.message is message:
            return attempt
        # pre_execute not seen (or its message replaced by a later middleware): still
        # recorded, without start or duration; the labels are the best guess of the attempt.
        return _Attempt(message, attempt_number(message), completed, None)

    def _build(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> ExecutionRecord:
        completed = _now()
        attempt = self._take(message, completed)
        elapsed = None if attempt.clock is None else round(time.monotonic() - attempt.clock, 3)
        error = (attempt.error or result.error) if result.is_err else None
        timeout = _label_number(message.labels, "timeout")
        return ExecutionRecord(
            config_id=_config_id(message.labels),
            task_id=clean_text(message.task_id, TASK_ID_CHARS),
            attempt=attempt.number,
            is_success=not result.is_err,
            started_at=attempt.started_at,
            completed_at=completed,
            duration_seconds=elapsed,
            result=None if result.is_err else json_result(result.return_value),
            error_message=None if error is None else error_message(error, timeout, elapsed),
            error_traceback=None if error is None else format_traceback(error),
        )

    def _enqueue(self, record: ExecutionRecord) -> None:
        if self._closed or len(self._buffer) >= self._max_buffered:
            # No fsync per record while the buffer is full: that would stall the event loop
            # at the moment the worker is busiest; the OS still has it if the process dies.
            self._spill([record], durable=self._closed)
            return
        self._buffer.append(record)
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    def _spill(self, records: Sequence[ExecutionRecord], durable: bool = True) -> None:
        try:
            self.spool.append(records, durable)
        except Exception:
            # Last resort: the records go to the log, where an operator can still find them.
            rows = [r.to_json() for r in records]
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
        if self._stopping or len(self._buffer) >= self._batch_size:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._flush_interval)
        self._wake.clear()

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

    async def _drain(self) -> None:
        if self._flusher is None and self._buffer:
            self._flusher = asyncio.create_task(self._run(), name="syncd-recorder-drain")
        if self._flusher is None:
            return
        with contextlib.suppress(TimeoutError):
            # On the deadline wait_for cancels the flusher; what is left gets spooled.
            await asyncio.wait_for(self._flusher, self._shutdown_timeout)


def _now() -> datetime:
    return datetime.now(UTC)


def recorder_from_settings(settings: Settings, **options: Any) -> ExecutionRecorder:
    """The recorder a worker adds to its broker: PostgreSQL from settings, spool from env."""
    return ExecutionRecorder(PostgresSink(settings.database_url), **options)
