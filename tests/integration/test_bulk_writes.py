"""The bulk writes of a cold sync on real servers: COPY into `task_configs` stores exactly
what one INSERT per row stores, and the pipelined Redis write ends as one op at a time
would, with few commands."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, cast

import pytest
import redis
from redis.client import Monitor
from sqlalchemy import Engine, insert, text

from schemas.tables import MANAGED_BY_SYNCD, task_configs
from syncd.adapters.postgres import DbStore
from syncd.adapters.redis import (
    UNREADABLE,
    DeleteStatus,
    PutSchedule,
    RedisOp,
    RedisStore,
    RemoveSchedule,
    SetStatus,
    op_commands,
    ops_commands,
)
from syncd.core.errors import StoreRefused
from syncd.core.keys import KeyLayout, schedule_id
from syncd.core.model import DesiredTask, TaskConfig
from syncd.core.payloads import build_schedule, index_key
from tests.integration.rows import desired

# Every character COPY's text format escapes, quotes and backslashes JSON escapes, and text
# outside ASCII (two-byte, three-byte, astral, combining, right-to-left).
AWKWARD = (
    "tab\there\nnew line\r\\N \\ back\\slash \"quoted\" 'single' "
    "\u00e9 \u4e2d\u6587 \U0001f680 e\u0301 \u200frtl\u200e \x7f"
)
AWKWARD_VALUES: list[dict[str, Any]] = [
    {"description": AWKWARD},
    {"description": "\\N"},  # COPY's NULL marker, as text
    {"description": ""},
    {"parameters": {AWKWARD: AWKWARD, "nested": {"list": [AWKWARD, 1, None, True]}}},
    {"parameters": {"big": 10**18, "float": 0.1, "huge": 1e20, "tiny": 5e-324, "neg": -0.0}},
    {"parameters": {"json": '{"a": "\\"b\\""}', "backslash_u": "\\u0041", "slash": "a/b"}},
    {"parameters": {"empty": {}, "list": [], "text": "", "zero": 0}},
    {
        "schedule_config": {
            "cron": "*/5 * * * MON-FRI",
            "timezone": "America/Argentina/Buenos_Aires",
        }
    },
    {"timeout_seconds": None, "max_retries": 0, "enabled": False, "priority": 10},
    {"retry_backoff_seconds": 0.25, "retry_backoff_max_seconds": 1e6, "max_retries": 2**31 - 1},
]


def insert_one_by_one(sql: Engine, tasks: list[DesiredTask], revision: str | None) -> None:
    """The reference: one plain INSERT per row, values bound by SQLAlchemy."""
    with sql.begin() as conn:
        for task in tasks:
            values = {
                "name": task.name,
                **task.config.field_values(),
                "content_hash": task.config.content_hash(),
                "source_file": task.source,
                "source_line": task.line,
                "git_revision": revision,
                "managed_by": MANAGED_BY_SYNCD,
            }
            conn.execute(insert(task_configs).values(values))


def stored(sql: Engine, prefix: str) -> list[tuple[Any, ...]]:
    """Every column but the id, the name, its hash and the times, as the server prints
    them, ordered by name (the hash covers the name: it is checked against the config)."""
    skipped = ("id", "name", "content_hash", "created_at")
    columns = [c.name for c in task_configs.c if c.name not in skipped]
    shown = ", ".join(f"{c}::text" for c in columns)
    query = text(f"SELECT {shown} FROM task_configs WHERE name LIKE :p ORDER BY name")  # noqa: S608
    with sql.connect() as conn:
        return [tuple(row) for row in conn.execute(query, {"p": f"{prefix}%"})]


def test_copy_stores_what_one_insert_per_row_stores(store: DbStore, sql: Engine) -> None:
    awkward_source = "team/tab\there/new\nline\\x.yaml"
    cases = [(f"{i:02d}", desired("", **values)) for i, values in enumerate(AWKWARD_VALUES)]
    cases.append(("zz", desired("", source=awkward_source)))
    copied = [replace(t, config=replace(t.config, name=f"copy-{n}")) for n, t in cases]
    reference = [replace(t, config=replace(t.config, name=f"ref-{n}")) for n, t in cases]

    ids = store.apply(copied, [], [], "rev\t\\1")
    insert_one_by_one(sql, reference, "rev\t\\1")

    assert stored(sql, "copy-") == stored(sql, "ref-")
    rows, _ = store.read_rows()
    for task in copied:
        row = rows[task.name]
        assert row.id == ids[task.name]
        assert row.config == task.config
        assert row.stored_hash == task.config.content_hash()
        assert (row.source_file, row.source_line, row.git_revision) == (
            task.source,
            task.line,
            "rev\t\\1",
        )


def test_new_ids_follow_the_order_of_the_creates(store: DbStore) -> None:
    tasks = [desired(f"t{i:03d}") for i in range(300)]
    ids = store.apply(tasks, [], [], None)
    assert [ids[t.name] for t in tasks] == list(range(1, 301))
    more = store.apply([desired("later")], [], [], None)
    assert more == {"later": 301}


@pytest.mark.parametrize(
    "bad",
    [
        {"description": "nul\x00here"},
        {"parameters": {"text": "nul\x00here"}},
        {"name": "x" * 201},
        {"priority": 11},
    ],
    ids=["nul-in-text", "nul-in-json", "name-too-long", "priority-check"],
)
def test_a_refused_value_writes_nothing_and_is_named(
    store: DbStore, sql: Engine, bad: dict[str, Any]
) -> None:
    good, refused = desired("good"), desired(bad.pop("name", "bad"), **bad)

    with pytest.raises(StoreRefused):
        store.apply([good, refused], [], [], None)

    with sql.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM task_configs")).scalar_one() == 0
    assert set(store.refused_rows([good, refused], [], None)) == {refused.name}


# -- Redis ----------------------------------------------------------------------------------

LAYOUT = KeyLayout(prefix="bulkone", status_prefix="bulkone-status:")
REFERENCE = KeyLayout(prefix="bulkref", status_prefix="bulkref-status:")


def config(i: int) -> TaskConfig:
    kind = i % 3
    if kind == 0:
        return TaskConfig(f"t{i}", "reports.build", "cron", {"cron": "0 3 * * *"})
    if kind == 1:
        return TaskConfig(f"t{i}", "feeds.poll", "interval", {"interval": 60 + i})
    return TaskConfig(
        f"t{i}", "ops.once", "date", {"at": f"2031-01-0{1 + i % 9}T10:0{i % 10}:00+00:00"}
    )


def put_op(layout: KeyLayout, i: int, current: tuple[str, ...] = ()) -> PutSchedule:
    payload = build_schedule(i, config(i), "default", revision="r1")
    assert payload is not None
    key = index_key(layout, payload)
    assert key is not None
    return PutSchedule(payload, key, current)


def mixed_ops(layout: KeyLayout, seed: int) -> list[RedisOp]:
    """Statuses, puts (new, listed right, listed wrong or twice), removals, deletions."""
    chooser = random.Random(seed)
    ops: list[RedisOp] = []
    for _ in range(600):
        i = chooser.randrange(40)
        right = index_key(layout, put_op(layout, i).payload) or ""
        choice = chooser.randrange(7)
        if choice == 0:
            ops.append(SetStatus(i, chooser.choice(["active", "paused", "inactive"])))
        elif choice == 1:
            ops.append(DeleteStatus(i))
        elif choice == 2:
            ops.append(put_op(layout, i))
        elif choice == 3:
            ops.append(put_op(layout, i, (right,)))
        elif choice == 4:
            ops.append(put_op(layout, i, (layout.cron_key, layout.interval_key, right)))
        elif choice == 5:
            ops.append(RemoveSchedule(schedule_id(i), (right,)))
        else:
            ops.append(put_op(layout, i, (right, right)))
    return ops


def state(client: redis.Redis, layout: KeyLayout) -> dict[str, Any]:
    """Every key of a layout, as a comparable value with the layout's prefixes taken out."""
    found: dict[str, Any] = {}
    for pattern in (f"{layout.prefix}:*", f"{layout.status_prefix}*"):
        for raw_key in client.scan_iter(match=pattern):
            key = bytes(raw_key).decode()
            if key == layout.version_key:
                continue
            kind = client.type(key)
            value = client.lrange(key, 0, -1) if kind == b"list" else client.get(key)
            neutral = key.replace(layout.status_prefix, "S:").replace(layout.prefix, "P")
            found[neutral] = value
    return found


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_pipelined_write_ends_as_one_op_at_a_time(
    redis_url: str, raw: redis.Redis, seed: int
) -> None:
    with RedisStore.from_url(redis_url, LAYOUT) as bulk:
        bulk.apply(mixed_ops(LAYOUT, seed), chunk_size=37)
    for op in mixed_ops(REFERENCE, seed):
        pipe = raw.pipeline(transaction=True)
        for command in op_commands(REFERENCE, op):
            pipe.execute_command(*command)
        pipe.execute()

    assert state(raw, LAYOUT) == state(raw, REFERENCE)
    assert state(raw, LAYOUT)  # something was written


def test_runs_of_puts_and_statuses_become_one_mset(raw: redis.Redis) -> None:
    ops: list[RedisOp] = [SetStatus(i, "active") for i in range(3)]
    ops += [put_op(LAYOUT, i) for i in range(3)]
    ops.append(put_op(LAYOUT, 3, (LAYOUT.interval_key,)))  # moves: LREM, flushed before
    ops.append(SetStatus(3, "paused"))

    commands = ops_commands(LAYOUT, ops)

    assert [c[0] for c in commands] == ["MSET", "RPUSH", "RPUSH", "RPUSH", "SET", "LREM",
                                        "RPUSH", "MSET"]  # fmt: skip
    assert len(commands[0]) == 1 + 2 * 6  # three statuses and three data keys


# What a new connection sends before any command of the code under test.
CONNECTION_SETUP = frozenset({"SELECT", "CLIENT", "HELLO", "AUTH", "PING"})


def commands_seen(client: redis.Redis, work: Callable[[], None]) -> Counter[str]:
    """How many commands of each name Redis ran in this test's database during `work`,
    as MONITOR reports them (per database, so other clients of the server do not count)."""
    db = int(client.connection_pool.connection_kwargs.get("db", 0))
    sentinel = uuid.uuid4().hex
    seen: Counter[str] = Counter()

    def run() -> None:
        work()
        client.echo(sentinel)

    monitor_of = cast(Callable[[], Monitor], client.monitor)  # unannotated in redis-py
    with monitor_of() as monitor, ThreadPoolExecutor(1) as pool:
        done = pool.submit(run)
        while True:
            command = monitor.next_command()
            if command["db"] != db:
                continue
            if sentinel in command["command"]:
                break
            name = command["command"].split(" ", 1)[0].upper()
            if name not in CONNECTION_SETUP:
                seen[name] += 1
        done.result()
    return seen


def test_a_cold_write_is_a_few_commands_per_thousand_ops(redis_url: str, raw: redis.Redis) -> None:
    """2,500 statuses then 2,500 new schedules (cron, interval, one-shots), 1,000 ops per
    transaction: one MSET, one RPUSH per list and the version's GET and SET per transaction."""
    ops: list[RedisOp] = [SetStatus(i, "active") for i in range(2500)]
    ops += [put_op(LAYOUT, i) for i in range(2500)]
    lists_per_chunk = [
        len({op.index_key for op in ops[start : start + 1000] if isinstance(op, PutSchedule)})
        for start in range(0, 5000, 1000)
    ]

    with RedisStore.from_url(redis_url, LAYOUT) as store:
        seen = commands_seen(raw, lambda: store.apply(ops, chunk_size=1000))

    assert seen == {
        "MULTI": 5,
        "EXEC": 5,
        "MSET": 5,
        "RPUSH": sum(lists_per_chunk),
        "GET": 5,  # the version key, read and replaced once per transaction
        "SET": 5,
    }
    assert len(RedisStore(raw, LAYOUT).read_schedules()) == 2500


def test_ops_may_come_from_a_generator(redis_url: str) -> None:
    """apply reads its ops a window at a time: a caller may stream them."""

    def ops() -> Iterator[RedisOp]:
        for i in range(2500):
            yield SetStatus(i, "active")

    progress: list[int] = []
    with RedisStore.from_url(redis_url, LAYOUT) as store:
        store.apply(ops(), chunk_size=100, on_progress=progress.append)
        statuses = store.read_statuses()

    assert progress == list(range(100, 2501, 100))
    assert statuses == dict.fromkeys(range(2500), "active")


def test_a_versioned_write_tells_whether_anyone_else_wrote(
    redis_url: str, raw: redis.Redis
) -> None:
    with RedisStore.from_url(redis_url, LAYOUT) as store:
        first = store.apply_versioned([SetStatus(1, "active")], store.read_version())
        assert first.kept
        assert first.version == store.read_version()

        # Our own token, over several transactions of one window and over two windows.
        ops = [SetStatus(i, "paused") for i in range(25)]
        chained = store.apply_versioned(ops, first.version, chunk_size=2)
        assert chained.kept
        assert chained.version == store.read_version()

        raw.set(LAYOUT.version_key, "someone else")
        later = store.apply_versioned([SetStatus(1, "active")], chained.version)
        assert not later.kept
        nothing = store.apply_versioned([], later.version)
        assert (nothing.kept, nothing.version) == (True, later.version)


def test_some_keys_are_read_with_the_version_in_one_transaction(redis_url: str) -> None:
    with RedisStore.from_url(redis_url, LAYOUT) as store:
        store.apply([SetStatus(7, "paused"), SetStatus(8, "active")])
        raw_key = LAYOUT.data_key(schedule_id(7))
        store.apply([])
        some = store.read_some([7, 8, 9])
        assert some.version == store.read_version()
        assert some.statuses == {7: "paused", 8: "active"}
        assert some.payloads == {}
        redis.Redis.from_url(redis_url).set(raw_key, b"\x80not json")
        assert store.read_some([7]).payloads == {schedule_id(7): UNREADABLE}
