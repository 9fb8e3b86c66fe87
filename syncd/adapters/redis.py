"""syncd's schedules and statuses in Redis: bulk reads, pipelined small atomic writes.

The reconcile reads every schedule and status through `RedisStore` and hands it the
plan's writes as `RedisOp`s; `pause` and `resume` use it to set a status.
It does not decide what to write, never unpickles anything, and lets no redis exception out.

Keys and list entries that are not UTF-8 are read as str with surrogateescape (the plan
sees them as strays) and sent back as the very same bytes, so a sync can remove them.
`client_from_url` is the one way to a client from a URL: it refuses a malformed URL, and
messages name Redis by `location`, which shows nothing of the user info or the query.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from itertools import islice
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.client import Pipeline
from redis.retry import Retry

from syncd.adapters.urls import HostPortProblem, split_host_port
from syncd.core.errors import StoreUnavailable
from syncd.core.keys import STATUSES, KeyLayout, schedule_id
from syncd.core.model import ScheduleRecord

SCAN_COUNT = 5000
MGET_CHUNK = 1000
# Ops per MULTI/EXEC: a transaction runs alone in Redis, so a scheduler polling meanwhile
# waits for at most one of them (about a millisecond at this size).
TRANSACTION_OPS = 1000
# Transactions sent before the first reply is read: the round trips of a bulk write.
WINDOW_TRANSACTIONS = 10
UNREADABLE: dict[str, Any] = {"__unreadable__": True}
URL_FORM = "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]"
SCHEMES = ("redis", "rediss", "unix")  # redis-py's, lower case only
DEFAULT_PORT = 6379

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST_END = re.compile(r"[/?#]")
_AT_AFTER_HOST = (
    "an '@' follows the host: percent-encode '/', '?' and '#' in the password "
    "(%2F, %3F, %23) and any '@' outside it (%40)"
)
_UNUSABLE = (
    "redis-py cannot use it: percent-encode '[', ']' and '%' in the password, "
    "and check the options in its query"
)


@dataclass(frozen=True)
class PutSchedule:
    """Register or replace a schedule: afterwards its id is listed once, in `index_key`."""

    payload: dict[str, Any]  # ScheduledTask JSON (core.payloads.build_schedule)
    index_key: str  # the list it must be in (core.payloads.index_key)
    current_lists: tuple[str, ...] = ()  # lists the id is in now (may repeat)

    @property
    def schedule_id(self) -> str:
        return str(self.payload["schedule_id"])


@dataclass(frozen=True)
class RemoveSchedule:
    """Delete a schedule's data and every index entry naming it."""

    schedule_id: str
    current_lists: tuple[str, ...] = ()


@dataclass(frozen=True)
class SetStatus:
    config_id: int
    status: str  # active | paused | inactive

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")


@dataclass(frozen=True)
class DeleteStatus:
    config_id: int


RedisOp = PutSchedule | RemoveSchedule | SetStatus | DeleteStatus


@dataclass(frozen=True)
class SomeState:
    """The version token and what Redis holds for some config ids, read in one transaction."""

    version: str | None
    payloads: dict[str, dict[str, Any]]  # schedule id -> payload (only those present)
    statuses: dict[int, str]  # config id -> raw status (only those present)


@dataclass(frozen=True)
class VersionedWrite:
    """What `apply_versioned` found: `kept` is False when another writer replaced the
    version token between `expected` and one of these transactions; `version` is the
    token the last of them left (`expected` when there was nothing to write)."""

    kept: bool
    version: str | None


class RedisStore:
    """Schedules (taskiq-redis ListRedisScheduleSource layout, JSON) and status keys.

    `client` must return bytes (no `decode_responses`); `from_url` builds a suitable one.
    """

    def __init__(self, client: redis.Redis, layout: KeyLayout, url_for_messages: str = "") -> None:
        self._client = client
        self._layout = layout
        self._url = url_for_messages or _describe_client(client)

    @classmethod
    def from_url(cls, url: str, layout: KeyLayout | None = None) -> RedisStore:
        """A store with bounded timeouts and a few quick retries, so a dead Redis fails fast."""
        client, shown = client_from_url(
            url,
            socket_connect_timeout=5,
            socket_timeout=30,
            health_check_interval=30,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
        )
        return cls(client, layout or KeyLayout(), shown)

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def ping(self) -> None:
        with self._translated():
            self._client.ping()

    def close(self) -> None:
        with self._translated():
            self._client.close()

    # -- reads ---------------------------------------------------------------------

    def read_schedules(self) -> dict[str, ScheduleRecord]:
        """Every schedule id under the prefix, with its data and each list entry naming it.

        Bulk, not a snapshot: a one-shot the scheduler fires meanwhile may show half-deleted.
        """
        with self._translated():
            listed = self._read_lists()
            payloads = self._read_data()
        ids = dict.fromkeys([*listed, *payloads])
        return {
            sid: ScheduleRecord(sid, payloads.get(sid), tuple(listed.get(sid, ()))) for sid in ids
        }

    def read_statuses(self) -> dict[int, str]:
        """Raw status value per config id; keys with a non-integer suffix are ignored."""
        with self._translated():
            keys = self._scan(self._layout.status_pattern)
            values = self._mget(keys)
        statuses: dict[int, str] = {}
        for key, value in zip(keys, values, strict=True):
            config_id = _status_config_id(self._layout, key)
            if config_id is not None and value is not None:
                statuses[config_id] = value.decode("utf-8", "replace")
        return statuses

    def get_status(self, config_id: int) -> str | None:
        with self._translated():
            value = cast(bytes | None, self._client.get(self._layout.status_key(config_id)))
        return None if value is None else value.decode("utf-8", "replace")

    def _read_lists(self) -> dict[str, list[str]]:
        """schedule id -> list keys naming it, once per occurrence (one round trip + SCAN)."""
        layout = self._layout
        time_keys = sorted(self._scan(layout.time_pattern, kind="list"))
        list_keys = [layout.cron_key, layout.interval_key, *time_keys]
        pipe = self._client.pipeline(transaction=False)
        for key in list_keys:
            pipe.lrange(_raw(key), 0, -1)
        listed: dict[str, list[str]] = {}
        for key, entries in zip(list_keys, pipe.execute(), strict=True):
            for entry in cast(list[bytes], entries):
                listed.setdefault(_text(entry), []).append(key)
        return listed

    def _read_data(self) -> dict[str, dict[str, Any]]:
        keys = self._scan(self._layout.data_pattern)
        values = self._mget(keys)
        return {
            self._layout.schedule_id_of_data_key(key): _parse_payload(value)
            for key, value in zip(keys, values, strict=True)
            if value is not None
        }

    def _scan(self, pattern: str, kind: str | None = None) -> list[str]:
        found = self._client.scan_iter(match=pattern, count=SCAN_COUNT, _type=kind)
        return list(dict.fromkeys(_text(key) for key in cast(Iterator[bytes], found)))

    def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of `keys` in order: MGETs of MGET_CHUNK keys, all in one round trip."""
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(keys), MGET_CHUNK):
            pipe.mget([_raw(key) for key in keys[start : start + MGET_CHUNK]])
        chunks = cast(list[list[bytes | None]], pipe.execute())
        return [value for chunk in chunks for value in chunk]

    # -- writes --------------------------------------------------------------------

    def apply(
        self,
        ops: Iterable[RedisOp],
        chunk_size: int = TRANSACTION_OPS,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Run `ops` in order, `chunk_size` per MULTI/EXEC; `on_progress(done)` after each.

        The transactions are pipelined, `WINDOW_TRANSACTIONS` per round trip: Redis runs
        one transaction at a time (so a scheduler waits at most one small EXEC), while the
        client never waits for a reply between two of them. `ops` is read one window at
        a time, so a generator of ops is never held whole. A crash or lost connection
        leaves each transaction all-or-nothing, and every op is idempotent, so a retried
        window ends the same. Redis does not roll back a command that fails inside EXEC
        (e.g. WRONGTYPE): the rest of that window applies, then this raises.
        """
        self.apply_versioned(ops, None, chunk_size, on_progress)

    def apply_versioned(
        self,
        ops: Iterable[RedisOp],
        expected: str | None,
        chunk_size: int = TRANSACTION_OPS,
        on_progress: Callable[[int], None] | None = None,
    ) -> VersionedWrite:
        """`apply`, telling whether anyone else wrote meanwhile.

        Each transaction reads the version token before replacing it, so a caller that
        knows the token its own last write left (`expected`) learns whether another
        writer came between it and these writes, or between two of them."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        pending = iter(ops)
        done, kept, version = 0, True, expected
        while chunks := _next_window(pending, chunk_size):
            tokens = [uuid.uuid4().hex for _ in chunks]
            with self._translated():
                found = self._run_transactions(chunks, tokens)
            for chunk, before, token in zip(chunks, found, tokens, strict=True):
                kept, version = kept and before == version, token
                done += len(chunk)
                if on_progress is not None:
                    on_progress(done)
        return VersionedWrite(kept, version)

    def _run_transactions(
        self, chunks: Sequence[Sequence[RedisOp]], tokens: Sequence[str]
    ) -> list[str | None]:
        """One round trip: per chunk MULTI, GET the version, the chunk's commands, SET the
        version to its token, EXEC. Returns the token each transaction found."""
        pipe = self._client.pipeline(transaction=False)
        version_key = self._layout.version_key
        for chunk, token in zip(chunks, tokens, strict=True):
            _send(pipe, ("MULTI",))
            _send(pipe, ("GET", version_key))
            for command in ops_commands(self._layout, chunk):
                _send(pipe, command)
            # Schedulers poll this key: unchanged means their cached list is current. A
            # fresh token, not INCR: junk written to the key must not wedge every sync.
            _send(pipe, ("SET", version_key, token))
            _send(pipe, ("EXEC",))
        # Error replies to MULTI, a queued command or EXEC (EXECABORT) raise here; a
        # command that failed inside EXEC is an error object in EXEC's reply.
        found: list[str | None] = []
        for reply in pipe.execute():
            if isinstance(reply, list):
                _raise_first_error(reply)
                found.append(_token(reply[0]))
        return found

    def read_version(self) -> str | None:
        """The token the last write left (None before any)."""
        with self._translated():
            return _token(self._client.get(self._layout.version_key))

    def read_some(self, config_ids: Sequence[int]) -> SomeState:
        """The version token, and the data and status keys of `config_ids`, in one
        MULTI/EXEC: what a caller keeping its own view needs to re-plan a few tasks."""
        layout = self._layout
        sids = [schedule_id(config_id) for config_id in config_ids]
        with self._translated():
            pipe = self._client.pipeline(transaction=True)
            pipe.get(layout.version_key)
            for start in range(0, len(sids), MGET_CHUNK):
                pipe.mget([layout.data_key(sid) for sid in sids[start : start + MGET_CHUNK]])
                chunk = config_ids[start : start + MGET_CHUNK]
                pipe.mget([layout.status_key(config_id) for config_id in chunk])
            replies = pipe.execute()
        data: list[bytes | None] = []
        status: list[bytes | None] = []
        for index, reply in enumerate(replies[1:]):
            (data if index % 2 == 0 else status).extend(cast(list[bytes | None], reply))
        payloads = {
            sid: _parse_payload(raw) for sid, raw in zip(sids, data, strict=True) if raw is not None
        }
        statuses = {
            cid: raw.decode("utf-8", "replace")
            for cid, raw in zip(config_ids, status, strict=True)
            if raw is not None
        }
        return SomeState(_token(replies[0]), payloads, statuses)

    def set_status(self, config_id: int, status: str) -> None:
        self.apply([SetStatus(config_id, status)])

    def _translated(self) -> AbstractContextManager[None]:
        return translate_errors(f"Redis at {self._url}")


@contextmanager
def translate_errors(where: str) -> Iterator[None]:
    """Re-raise any redis-py error as StoreUnavailable naming `where` (never the password)."""
    try:
        yield
    except redis.RedisError as exc:
        raise StoreUnavailable(f"{where}: {exc}") from exc


Command = tuple[str | bytes | int, ...]


def ops_commands(layout: KeyLayout, ops: Iterable[RedisOp]) -> list[Command]:
    """The Redis commands of `ops`, with the same effect as running them one by one.

    Runs of status sets and of schedule puts that need no LREM become one MSET and one
    RPUSH per list (ids in op order), which is what a bulk write is made of: fewer
    commands for the client to pack and for Redis to parse and queue. Commands on
    distinct keys commute, each key keeps the order of its writes, and anything that
    deletes or scans a list (DEL, LREM) first flushes what is pending, so the order of
    operations on every key is the op order.
    """
    commands: list[Command] = []
    pairs: list[str | bytes] = []  # MSET key, value, key, value...
    pushes: dict[str, list[bytes]] = {}  # list key -> ids to append, in order

    def flush() -> None:
        if pairs:
            commands.append(("MSET", *pairs))
            pairs.clear()
        commands.extend(("RPUSH", _raw(key), *ids) for key, ids in pushes.items())
        pushes.clear()

    for op in ops:
        if isinstance(op, SetStatus):
            pairs += (layout.status_key(op.config_id), op.status)
        elif isinstance(op, PutSchedule) and not _relists(op):
            sid = op.schedule_id
            pairs += (_raw(layout.data_key(sid)), payload_json(op.payload))
            if op.current_lists != (op.index_key,):
                pushes.setdefault(op.index_key, []).append(_raw(sid))
        else:
            flush()
            commands += op_commands(layout, op)
    flush()
    return commands


def payload_json(payload: dict[str, Any]) -> bytes:
    """The stored form of a schedule: compact JSON (ASCII: non-ASCII is escaped)."""
    return _COMPACT.encode(payload).encode("ascii")


_COMPACT = json.JSONEncoder(separators=(",", ":"))
# json.loads without its per-call set-up: the decoder of every schedule a sync reads.
_DECODE_JSON = json.JSONDecoder().decode


def _relists(op: PutSchedule) -> bool:
    """Whether the put must take its id out of lists first (found listed, not just right)."""
    return bool(op.current_lists) and op.current_lists != (op.index_key,)


def op_commands(layout: KeyLayout, op: RedisOp) -> list[Command]:
    """The commands of one op.

    Every key and entry goes out as bytes (`_raw`): one read back from Redis may hold
    surrogates, which the hiredis command packer refuses to encode.
    """
    if isinstance(op, PutSchedule):
        sid = op.schedule_id
        data: Command = ("SET", _raw(layout.data_key(sid)), payload_json(op.payload))
        # LREM scans a whole list, so it is sent only for the lists the read under the
        # sync lock found the id in: nothing else adds to the index lists (the scheduler
        # only removes one-shots it sent), so a list the read did not find it in does not
        # hold it now. Updates (already listed once in the right list) and new schedules
        # (listed nowhere) cost no scan, and bulk writes stay linear instead of quadratic.
        if op.current_lists == (op.index_key,):
            return [data]
        removals = [("LREM", _raw(key), 0, _raw(sid)) for key in sorted(set(op.current_lists))]
        return [data, *removals, ("RPUSH", _raw(op.index_key), _raw(sid))]
    if isinstance(op, RemoveSchedule):
        lists = {*op.current_lists, layout.cron_key, layout.interval_key}
        removals = [("LREM", _raw(key), 0, _raw(op.schedule_id)) for key in sorted(lists)]
        return [("DEL", _raw(layout.data_key(op.schedule_id))), *removals]
    if isinstance(op, SetStatus):
        return [("SET", layout.status_key(op.config_id), op.status)]
    return [("DEL", layout.status_key(op.config_id))]


def _next_window(ops: Iterator[RedisOp], chunk_size: int) -> list[list[RedisOp]]:
    """The next transactions' ops (up to WINDOW_TRANSACTIONS chunks); empty at the end."""
    chunks: list[list[RedisOp]] = []
    while len(chunks) < WINDOW_TRANSACTIONS and (chunk := list(islice(ops, chunk_size))):
        chunks.append(chunk)
    return chunks


def _send(pipe: Pipeline, command: Command) -> None:
    # redis-py leaves Pipeline.execute_command unannotated.
    queue = cast(Callable[..., object], pipe.execute_command)
    queue(*command)


def _token(raw: Any) -> str | None:
    return None if raw is None else cast(bytes, raw).decode("utf-8", "surrogateescape")


def _raise_first_error(replies: list[Any]) -> None:
    """Raise the first error inside an EXEC reply (a command that failed when run)."""
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise reply


def _parse_payload(raw: bytes) -> dict[str, Any]:
    """JSON object or the UNREADABLE marker (pickle or other junk is never deserialised)."""
    try:
        value = _DECODE_JSON(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return dict(UNREADABLE)
    return value if isinstance(value, dict) else dict(UNREADABLE)


def _status_config_id(layout: KeyLayout, key: str) -> int | None:
    suffix = key.removeprefix(layout.status_prefix)
    # ASCII only: str.isdigit() accepts '²' (int() fails) and '١٢' (int() gives 12).
    if not (suffix.isascii() and suffix.isdigit()):
        return None
    return layout.config_id_of_status_key(key)


def _text(raw: bytes) -> str:
    # surrogateescape: a key or id that is not UTF-8 is still a str for the plan, and
    # `_raw` turns it back into the exact bytes it was.
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def client_from_url(url: str, **options: Any) -> tuple[redis.Redis, str]:
    """A client for `url` (bytes replies) and `location(url)`, for its messages.

    A URL redis-py cannot use raises StoreUnavailable, never its ValueError: that may
    quote the part of the URL it choked on, password included.
    """
    shown = location(url)
    try:
        client = redis.Redis.from_url(url, **options)
        # redis-py passes query options it does not know on to the connection, which
        # rejects them at the first command: build one now (it does not connect yet).
        pool = client.connection_pool
        pool.connection_class(**pool.connection_kwargs)
    except (ValueError, TypeError) as exc:
        raise _invalid(_UNUSABLE, shown) from exc
    return client, shown


def location(url: str) -> str:
    """Where `url` points, for messages: scheme, host, port and db, or the socket path.

    Nothing from before the host (user, password) or from the query is ever shown;
    a URL whose parts are ambiguous raises StoreUnavailable. Like redis-py, the user info
    ends at the LAST '@' of the host part, so an '@' in the password needs no encoding.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in SCHEMES:
        raise _invalid("it does not start with redis://, rediss:// or unix://")
    if _CONTROL.search(url):
        raise _invalid("it contains a control character (a newline?)")
    end = _HOST_END.search(rest)
    netloc, tail = (rest[: end.start()], rest[end.start() :]) if end else (rest, "")
    if "@" in tail:
        # A '/', '?' or '#' in the password ended the host part early: what follows it
        # may be the rest of the password.
        raise _invalid(_AT_AFTER_HOST, f"{scheme}://***")
    _, at, host_port = netloc.rpartition("@")
    path, _, query = tail.partition("#")[0].partition("?")
    if scheme == "unix":
        return f"unix://{path}"
    host, port = _host_port(host_port, show=bool(at))
    return f"{scheme}://{host or 'localhost'}:{port}/{_db(path, query, show=bool(at))}"


def _host_port(text: str, *, show: bool) -> tuple[str, int]:
    """HOST[:PORT] or [IPV6][:PORT]; `show`: the port may be quoted in a message."""
    try:
        host, ipv6, port = split_host_port(text, show=show)
    except HostPortProblem as exc:
        raise _invalid(str(exc)) from None
    return f"[{host}]" if ipv6 else host, DEFAULT_PORT if port is None else port


def _db(path: str, query: str, *, show: bool) -> str:
    """The database number: redis-py takes `?db=` first, then the path."""
    text = parse_qs(query).get("db", [path.strip("/")])[0] or "0"
    if not (text.isascii() and text.isdigit()):
        quoted = f" {text!r}" if show else ""
        raise _invalid(f"the database number{quoted} is not a number")
    return text


def _invalid(reason: str, shown: str = "") -> StoreUnavailable:
    where = f" {shown}" if shown else ""
    return StoreUnavailable(f"invalid Redis URL{where}: {reason}; expected {URL_FORM}")


def _describe_client(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
