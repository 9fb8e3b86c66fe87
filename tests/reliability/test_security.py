"""Security: nothing that reads Redis unpickles (a live pickle payload never runs, and no module
imports a code-running deserialiser); names cannot escape their keys; parameters that look
like Redis protocol or SQL are data that round-trips exactly; SQL is built only from bound
parameters (an AST scan of every `text(`/`execute(` call in syncd/ and worker/)."""

from __future__ import annotations

import ast
import asyncio
import json
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest
import redis

from syncd.adapters.redis import UNREADABLE, RedisStore
from syncd.cli.common import catalog
from syncd.core.keys import KeyLayout
from syncd.core.model import Execution
from syncd.core.settings import Settings
from syncd.load.loader import load_taskdefs
from tests.e2e.conftest import REPO
from tests.reliability.convergence import assert_converged, libpq_url
from tests.reliability.support import Stores, run_syncd
from worker.broker import make_broker
from worker.recording import PostgresSink
from worker.schedule_source import SyncdScheduleSource
from worker.tasks import registry

PACKAGES = ("syncd", "worker", "schemas")


def yaml_string(value: str) -> str:
    """A double-quoted YAML scalar holding exactly `value`: what is not plainly printable
    (controls, line and paragraph separators, BOM, NEL) as a \\u or \\U escape."""
    out = []
    for char in value:
        if char in '\\"':
            out.append("\\" + char)
        elif char.isprintable() and char not in "\u2028\u2029\ufeff\x85":
            out.append(char)
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def interval_tasks(values: dict[str, str]) -> str:
    """One diagnostics.fail task per value, the value as parameter and (up to the 2,000
    characters allowed) description."""
    body = "".join(
        f"  - name: {name}\n"
        "    task_type: diagnostics.fail\n"
        "    schedule: {interval: 600}\n"
        f"    description: {yaml_string(value[:2000])}\n"
        f"    parameters: {{message: {yaml_string(value)}}}\n"
        for name, value in values.items()
    )
    return "version: 1\ntasks:\n" + body


def sync_ok(stores: Stores, root: Path) -> None:
    proc = run_syncd(stores.env, "sync", str(root))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def row_values(database_url: str) -> dict[str, tuple[str, dict[str, Any]]]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute("SELECT name, description, parameters FROM task_configs").fetchall()
    return {name: (description, parameters) for name, description, parameters in rows}


def table_count(database_url: str) -> int:
    with psycopg.connect(libpq_url(database_url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
            "'information_schema')"
        ).fetchone()
    assert row is not None
    return int(row[0])


# -- pickle ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exploit:
    """Unpickling this creates `marker`: proof that code ran."""

    marker: str

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (Path(self.marker),))


@pytest.fixture
def exploit(tmp_path: Path) -> Iterator[tuple[bytes, Path]]:
    marker = tmp_path / "pickle-ran-code"
    payload = pickle.dumps(Exploit(str(marker)))
    # The payload is live: unpickling it in another process creates the marker.
    unpickle = "import pickle, sys; pickle.loads(bytes.fromhex(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", unpickle, payload.hex()], check=True, cwd=REPO)
    assert marker.exists()
    marker.unlink()
    yield payload, marker
    assert not marker.exists(), "a reader of Redis unpickled the payload"


def test_nothing_that_reads_redis_unpickles(
    stores: Stores, tmp_path: Path, exploit: tuple[bytes, Path]
) -> None:
    payload, marker = exploit
    root = tmp_path / "taskdefs"
    root.mkdir()
    (root / "a.yaml").write_text(interval_tasks({"one": "x", "two": "y"}))
    sync_ok(stores, root)
    layout = KeyLayout()
    with redis.Redis.from_url(stores.redis_url) as client:
        real = sorted(k.decode() for k in client.scan_iter(layout.data_pattern))
        client.set(real[0], payload)  # a real schedule replaced by a pickle
        client.set(layout.data_key("task_999999"), payload)  # and a stray one, listed
        client.rpush(layout.interval_key, "task_999999")
        client.set(layout.status_key(int(real[1].rsplit("_", 1)[1])), payload)
        client.set(layout.version_key, payload)
    # syncd's own reader
    with RedisStore.from_url(stores.redis_url) as store:
        schedules = store.read_schedules()
        store.read_statuses()
    assert schedules["task_999999"].payload == UNREADABLE
    # the CLI's readers: plan (drift: the pickles are to be replaced) and status
    plan = run_syncd(stores.env, "plan", str(root), "--detailed-exitcode")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    status = run_syncd(stores.env, "status")
    assert status.returncode == 0, status.stderr
    assert "Traceback" not in plan.stderr + status.stderr
    # the scheduler's reader, and the worker's message decoding
    assert len(asyncio.run(scheduler_view(stores.redis_url))) == 1  # only the intact one
    broker = make_broker(registry, Settings(redis_url=stores.redis_url))
    with pytest.raises(UnicodeDecodeError):  # not JSON (not even UTF-8): refused, not unpickled
        broker.formatter.loads(payload)
    assert "pickle" not in type(broker.serializer).__name__.lower()
    assert not marker.exists()
    sync_ok(stores, root)  # and a sync repairs it all
    assert_converged(root, stores.database_url, stores.redis_url)


def test_a_corrupted_version_key_does_not_wedge_sync(stores: Stores, tmp_path: Path) -> None:
    """Regression (found by this suite): junk in syncd:version failed every later sync
    (INCRBY on a non-integer), and sync never repaired that key."""
    root = tmp_path / "taskdefs"
    root.mkdir()
    (root / "a.yaml").write_text(interval_tasks({"one": "x"}))
    sync_ok(stores, root)
    with redis.Redis.from_url(stores.redis_url) as client:
        client.set(KeyLayout().version_key, b"not a number")
        client.delete(KeyLayout().interval_key)  # drift, so the next sync has work to do
    sync_ok(stores, root)
    assert_converged(root, stores.database_url, stores.redis_url)


def test_bytes_that_are_not_utf8_stop_neither_scheduler_nor_sync(
    stores: Stores, tmp_path: Path
) -> None:
    """Regression: RPUSH <prefix>:interval $'\\xff\\xfe' failed every later sync, and the
    scheduler's reads, with a UnicodeError."""
    root = tmp_path / "taskdefs"
    root.mkdir()
    (root / "a.yaml").write_text(interval_tasks({"one": "x"}))
    sync_ok(stores, root)
    layout = KeyLayout()
    with redis.Redis.from_url(stores.redis_url) as client:
        client.rpush(layout.interval_key, b"\xff\xfe")
        client.rpush(layout.time_key(datetime(2020, 1, 1, tzinfo=UTC)), b"\xff")
    fired = asyncio.run(scheduler_view(stores.redis_url))
    assert [t.labels["config_id"] for t in fired] != []  # the real schedule still fires
    sync_ok(stores, root)
    with redis.Redis.from_url(stores.redis_url) as client:
        assert b"\xff\xfe" not in client.lrange(layout.interval_key, 0, -1)
    assert_converged(root, stores.database_url, stores.redis_url)


async def scheduler_view(url: str) -> list[Any]:
    source = SyncdScheduleSource(url)
    await source.startup()
    try:
        return list(await source.get_schedules())
    finally:
        await source.shutdown()


CODE_RUNNING_MODULES = frozenset(
    {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve", "jsonpickle"}
)
UNSAFE_YAML = frozenset(
    {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}
)
UNSAFE_NAMES = frozenset({"PickleSerializer", "Loader", "UnsafeLoader", "FullLoader", "CLoader"})


def deserialiser_findings(source: str, filename: str) -> list[str]:
    """Imports of code-running deserialisers, unsafe YAML loaders, taskiq's PickleSerializer."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if _root(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and _root(node.module):
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.ImportFrom) and any(a.name in UNSAFE_NAMES for a in node.names):
            found.append(f"{where}: from {node.module} import an unsafe loader/serializer")
        elif isinstance(node, ast.Attribute) and node.attr in UNSAFE_NAMES:
            found.append(f"{where}: uses {node.attr}")
        elif isinstance(node, ast.Call) and _is_unsafe_call(node):
            found.append(f"{where}: {ast.unparse(node)[:80]}")
    return found


def _root(module: str) -> bool:
    return module.split(".", maxsplit=1)[0] in CODE_RUNNING_MODULES


def _is_unsafe_call(node: ast.Call) -> bool:
    func = node.func
    if (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id == "yaml"
        and func.attr in UNSAFE_YAML
    ):
        return True
    names = {"__import__", "import_module"}
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    first = node.args[0] if node.args else None
    return (
        called in names
        and isinstance(first, ast.Constant)
        and isinstance(first.value, str)
        and _root(first.value)
    )


def python_files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((REPO / package).rglob("*.py"))


def test_no_module_imports_a_code_running_deserialiser() -> None:
    findings = [
        f
        for path in python_files()
        for f in deserialiser_findings(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert not findings, findings


@pytest.mark.parametrize(
    "source",
    [
        "import pickle",
        "import pickle as p",
        "from pickle import loads",
        "import dill",
        "from marshal import loads",
        "import shelve",
        "import importlib\nimportlib.import_module('pickle')",
        "__import__('cloudpickle')",
        "import yaml\nyaml.load(text)",
        "import yaml\nyaml.unsafe_load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.Loader)",
        "from taskiq.serializers import PickleSerializer",
        "import taskiq.serializers\ns = taskiq.serializers.PickleSerializer()",
    ],
)
def test_the_deserialiser_scan_catches(source: str) -> None:
    assert deserialiser_findings(source, "fake.py")


def test_the_deserialiser_scan_allows_the_safe_forms() -> None:
    safe = (
        "import yaml, json\nyaml.safe_load(t)\nyaml.load(t, Loader=yaml.CSafeLoader)\njson.loads(t)"
    )
    assert deserialiser_findings(safe, "fake.py") == [
        "fake.py:3: yaml.load(t, Loader=yaml.CSafeLoader)"
    ]  # yaml.load is flagged whatever the loader: syncd has no reason to call it


# -- names and parameters cannot escape their keys ------------------------------------------

BAD_NAMES = (
    "a:b",
    "task_1:data",
    "syncd:data:task_1",
    "*",
    "a*",
    "a?",
    "[ab]",
    "a\nb",
    "a\r\nSET x y",
    "a b",
    "a\tb",
    "../x",
    "a/b",
    "-leading-dash",
    ".hidden",
    "ünïcode",
    "x" * 201,
)


def test_names_that_could_escape_their_keys_are_rejected(stores: Stores, tmp_path: Path) -> None:
    root = tmp_path / "taskdefs"
    root.mkdir()
    (root / "good.yaml").write_text(interval_tasks({"good": "ok"}))
    for index, name in enumerate(BAD_NAMES):
        (root / f"bad-{index:02d}.yaml").write_text(
            f"version: 1\ntasks:\n  - name: {yaml_string(name)}\n    task_type: diagnostics.noop\n"
        )
    tasks = catalog()
    loaded = load_taskdefs(root, tasks.params, now=datetime.now(UTC), policy=tasks.policy)
    assert [t.name for t in loaded.tasks] == ["good"]
    for index in range(len(BAD_NAMES)):
        path = str(root / f"bad-{index:02d}.yaml")
        mine = [p for p in loaded.errors if p.path == path]
        assert mine, f"{BAD_NAMES[index]!r} was not rejected"
        assert all(p.line == 3 and ".name:" in p.message for p in mine), mine
    proc = run_syncd(stores.env, "sync", str(root))
    assert proc.returncode == 1  # the broken files are reported, the good one applied
    assert "Traceback" not in proc.stderr
    assert set(row_values(stores.database_url)) == {"good"}
    with redis.Redis.from_url(stores.redis_url) as client:
        keys = {k.decode() for k in client.scan_iter("*")}
    assert len(keys) == 4, keys  # good's schedule and status, the interval list, the version


RESP_STRINGS = {
    "resp-array": "*3\r\n$3\r\nSET\r\n$8\r\ninjected\r\n$1\r\n1\r\n",
    "resp-inline": "\r\nSET injected 1\r\nFLUSHALL\r\n",
    "key-pattern": "syncd:data:*",
    "status-key": "schedule:status:1",
    "shell": "$(redis-cli SET injected 1); `touch /tmp/x`",
    "lua": "redis.call('SET', 'injected', '1')",
    "big": "\r\n*1\r\n$8\r\nFLUSHALL\r\n" * 5000,
    "unicode": "\u2028\u2029\ufeff\U0001f600\\u0000",
}


def test_redis_protocol_strings_in_parameters_are_only_data(stores: Stores, tmp_path: Path) -> None:
    root = tmp_path / "taskdefs"
    root.mkdir()
    (root / "a.yaml").write_text(interval_tasks(RESP_STRINGS))
    sync_ok(stores, root)
    # Exactly the expected keys and payloads (assert_converged also rejects any other key).
    assert_converged(root, stores.database_url, stores.redis_url)
    ids = _ids(stores.database_url)
    with redis.Redis.from_url(stores.redis_url) as client:
        assert client.get("injected") is None
        assert client.dbsize() == 2 * len(RESP_STRINGS) + 2  # data + status each, list, version
        for name, value in RESP_STRINGS.items():
            raw = client.get(f"syncd:data:task_{ids[name]}")
            assert raw is not None
            assert json.loads(raw)["kwargs"] == {"message": value}
    assert run_syncd(stores.env, "plan", str(root), "--detailed-exitcode").returncode == 0


def _ids(database_url: str) -> dict[str, int]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute("SELECT name, id FROM task_configs").fetchall()
    return {str(name): int(config_id) for name, config_id in rows}


# -- SQL only through bound parameters --------------------------------------------------------

SQL_STRINGS = {
    "drop": "'; DROP TABLE task_configs; --",
    "drop-executions": '"); DROP TABLE task_executions; --',
    "tautology": "1' OR '1'='1",
    "dollar-quote": "$$; DROP TABLE task_configs; $$",
    "escape-string": "E'\\x27; DROP TABLE task_configs; --",
    "backslash": "\\'; DELETE FROM task_configs; --",
    "format-markers": "%s %(name)s %% {} {0} {name}",
    "bind-markers": ":name :1 ? $1 @p",
    "comment": "/* */ -- ; COMMIT; DROP TABLE task_configs;",
    "jsonb": '{"a": 1}\'::jsonb; DROP TABLE task_configs; --',
}


def test_sql_injection_strings_round_trip_exactly(stores: Stores, tmp_path: Path) -> None:
    tables = table_count(stores.database_url)
    root = tmp_path / "taskdefs"
    root.mkdir()
    (root / "a.yaml").write_text(interval_tasks(SQL_STRINGS))
    sync_ok(stores, root)
    stored = row_values(stores.database_url)
    assert stored == {name: (value, {"message": value}) for name, value in SQL_STRINGS.items()}
    assert table_count(stores.database_url) == tables
    assert_converged(root, stores.database_url, stores.redis_url)
    # The recorder's statement too (errors and results are task-controlled text).
    records = [
        Execution(
            config_id=None,
            task_id=f"sql-{name}",
            attempt=1,
            is_success=False,
            started_at=datetime.now(UTC),
            completed_at=datetime.now(UTC),
            duration_seconds=0.1,
            result={"echo": value},
            error_message=value,
            error_traceback=value,
        )
        for name, value in SQL_STRINGS.items()
    ]
    asyncio.run(write_records(stores.database_url, records))
    with psycopg.connect(libpq_url(stores.database_url)) as conn:
        rows = conn.execute(
            "SELECT task_id, error_message, error_traceback, result FROM task_executions"
        ).fetchall()
    assert {r[0]: r[1:] for r in rows} == {
        f"sql-{name}": (value, value, {"echo": value}) for name, value in SQL_STRINGS.items()
    }
    assert table_count(stores.database_url) == tables


async def write_records(database_url: str, records: list[Execution]) -> None:
    sink = PostgresSink(database_url)
    try:
        await sink.write(records)
    finally:
        await sink.close()


def test_a_value_postgresql_cannot_store_is_a_taskdef_error(stores: Stores, tmp_path: Path) -> None:
    """Regression (found by this suite): a NUL passed validation, then every sync failed as
    if PostgreSQL were down, valid files included."""
    root = tmp_path / "taskdefs"
    root.mkdir()
    (root / "good.yaml").write_text(interval_tasks({"good": "ok"}))
    (root / "bad.yaml").write_text(interval_tasks({"bad": "a\0b"}))
    proc = run_syncd(stores.env, "sync", str(root))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "bad.yaml:" in proc.stderr, proc.stderr  # reported against the file...
    assert "good" in row_values(stores.database_url)  # ...and the valid file still applies


# -- the AST scan: SQL strings are literals, never built ------------------------------------

SQL_SINKS = frozenset({"text", "execute", "executemany", "exec_driver_sql", "executescript"})
# (file, function): why a non-literal SQL argument there is safe.
SQL_ALLOWED: dict[tuple[str, str], str] = {
    # psycopg's sql.SQL(...).format(sql.Identifier(name)) quotes the identifier itself:
    # the documented safe way to put a database name in CREATE DATABASE.
    ("syncd/adapters/migrate.py", "ensure_database"): "sql.SQL composition with sql.Identifier",
    # The bulk row paths speak psycopg directly (tuples and COPY, no ORM rows): their
    # statements are module constants composed from the table's own name and columns
    # (sql.Identifier, sql.Literal), never from a value read or written.
    ("syncd/adapters/postgres.py", "read_rows"): "constant sql.SQL of the table's columns",
    ("syncd/adapters/postgres.py", "_insert_rows"): "constant sql.SQL of the table's columns",
}


def _bindings(tree: ast.AST) -> dict[str, list[ast.expr]]:
    """Every value each name is bound to by a plain assignment anywhere under `tree`."""
    bound: dict[str, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    bound.setdefault(target.id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            bound.setdefault(node.target.id, []).append(node.value)
    return bound


# Roots of SQLAlchemy Core expressions: select(...).where(...) and friends build bound SQL.
CONSTRUCTORS = frozenset(
    {"select", "insert", "update", "delete", "text", "union", "union_all", "exists", "func"}
)
RANK = {"literal": 0, "construct": 0, "composed": 1, "unknown": 2, "built": 3}
Function = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass
class Scope:
    """What a SQL argument can be resolved against: names, and the module's functions."""

    bound: dict[str, list[ast.expr]]
    functions: dict[str, Function]
    module: dict[str, list[ast.expr]]


def _root_name(expr: ast.expr) -> str | None:
    while isinstance(expr, ast.Attribute | ast.Call | ast.Subscript):
        expr = expr.func if isinstance(expr, ast.Call) else expr.value
    return expr.id if isinstance(expr, ast.Name) else None


def _worst(verdicts: list[str]) -> str:
    return max(verdicts, key=RANK.__getitem__) if verdicts else "unknown"


def verdict(arg: ast.expr, scope: Scope, depth: int = 0) -> str:
    """How a SQL argument was made: "literal", "construct" (SQLAlchemy Core), "composed"
    (psycopg sql.SQL(...).format), "built" (f-string, %, +, .format, join) or "unknown"."""
    if depth > 6:
        return "unknown"
    if isinstance(arg, ast.Name):
        # Every binding counts; `query = query.where(...)` refines itself and is neutral.
        values = [v for v in scope.bound.get(arg.id, []) if _root_name(v) != arg.id]
        return _worst([verdict(v, scope, depth + 1) for v in values])
    if isinstance(arg, ast.Call):
        return _call_verdict(arg, scope, depth)
    return _string_verdict(arg)


def _string_verdict(arg: ast.expr) -> str:
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str | bytes):
        return "literal"
    if isinstance(arg, ast.JoinedStr):
        return "built" if any(isinstance(v, ast.FormattedValue) for v in arg.values) else "literal"
    return "built" if isinstance(arg, ast.BinOp) else "unknown"


def _call_verdict(call: ast.Call, scope: Scope, depth: int) -> str:
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in {"format", "format_map"}:
        receiver = func.value
        is_sql = isinstance(receiver, ast.Call) and ast.unparse(receiver.func) == "sql.SQL"
        return "composed" if is_sql else "built"
    if isinstance(func, ast.Attribute) and func.attr in {"join", "replace", "__mod__"}:
        return "built"
    if (wrapped := _wrapped(call)) is not None:
        return verdict(wrapped, scope, depth + 1) if wrapped else "unknown"
    root = _root_name(func)
    if root in CONSTRUCTORS:
        return "construct"
    helper = scope.functions.get(root or "")
    if helper is None:
        return "unknown"
    # A helper of the same module: judged by everything it returns.
    inner = Scope({**scope.module, **_bindings(helper)}, scope.functions, scope.module)
    returns = [n.value for n in ast.walk(helper) if isinstance(n, ast.Return) and n.value]
    return _worst([verdict(v, inner, depth + 1) for v in returns])


def _wrapped(call: ast.Call) -> ast.expr | Literal[False] | None:
    """What a wrapper call's SQL is judged by: `x` of `sql.SQL(x)`, and `stmt` of
    `str(stmt.compile(...))` (the SQL text of a compiled statement is as safe as the
    statement: every value stays a bound parameter). False for a wrapper without an
    argument, None when `call` is no wrapper."""
    name = ast.unparse(call.func)
    if name == "sql.SQL":
        return call.args[0] if call.args else False
    if name == "str" and len(call.args) == 1:
        return _compiled(call.args[0])
    return None


def _compiled(expr: ast.expr) -> ast.expr | None:
    """`X` of an `X.compile(...)` call, else None."""
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
        return expr.func.value if expr.func.attr == "compile" else None
    return None


@dataclass(frozen=True)
class SqlCall:
    file: str
    function: str
    line: int
    code: str
    verdict: str


def sql_calls(source: str, filename: str) -> list[SqlCall]:
    """Every call of a SQL sink (`text(`, `.execute(`...) with an argument, judged."""
    tree = ast.parse(source, filename)
    constants: list[ast.stmt] = [n for n in tree.body if isinstance(n, ast.Assign | ast.AnnAssign)]
    module = _bindings(ast.Module(body=constants, type_ignores=[]))
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, Function)}
    found: dict[tuple[int, int], SqlCall] = {}
    for owner in [tree, *functions.values()]:  # functions last: the innermost owner wins
        scope = Scope(
            {**module, **_bindings(owner)} if owner is not tree else module, functions, module
        )
        for node in ast.walk(owner):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in SQL_SINKS:
                found[(node.lineno, node.col_offset)] = SqlCall(
                    filename,
                    getattr(owner, "name", "<module>"),
                    node.lineno,
                    ast.unparse(node)[:100],
                    verdict(node.args[0], scope),
                )
    return [found[k] for k in sorted(found)]


def unsafe_sql(calls: list[SqlCall]) -> list[SqlCall]:
    return [
        c
        for c in calls
        if c.verdict in ("built", "unknown")
        or (c.verdict == "composed" and (c.file, c.function) not in SQL_ALLOWED)
    ]


def test_sql_is_never_built_from_strings() -> None:
    calls = [
        call
        for path in python_files()
        if path.parts[len(REPO.parts)] in ("syncd", "worker")
        for call in sql_calls(path.read_text(), path.relative_to(REPO).as_posix())
    ]
    assert calls, "the scan found no SQL call at all: it is broken"
    assert not unsafe_sql(calls), unsafe_sql(calls)
    composed = {(c.file, c.function) for c in calls if c.verdict == "composed"}
    assert composed <= set(SQL_ALLOWED), composed


@pytest.mark.parametrize(
    "source",
    [
        "conn.execute(f'SELECT * FROM t WHERE name = {name}')",
        "conn.execute('SELECT * FROM t WHERE name = %s' % name)",
        "conn.execute('SELECT * FROM t WHERE name = ' + name)",
        "conn.execute('SELECT * FROM t WHERE name = {}'.format(name))",
        "q = f'DELETE FROM t WHERE id = {i}'\nconn.execute(q)",
        "def f(x):\n    q = 'SELECT ' + x\n    return conn.exec_driver_sql(q)",
        "text(f'SELECT {column} FROM t')",
        "sa.text('SELECT ' + column)",
        "conn.execute(' '.join(parts))",
        "conn.execute(sql.SQL('DROP TABLE {}').format(sql.Identifier(n)))",  # not allow-listed
        "conn.execute(query_from_somewhere)",
        "conn.execute(str(statement_from_somewhere.compile()))",
        "q = str(f'SELECT {column}'.compile())\nconn.execute(q)",
    ],
)
def test_the_sql_scan_catches(source: str) -> None:
    source = textwrap.dedent(source)
    assert unsafe_sql(sql_calls(source, "fake.py")), source


def test_the_sql_scan_allows_literals_and_constructs() -> None:
    source = textwrap.dedent(
        """
        INSERT = "INSERT INTO t VALUES (%s)"
        def f(conn, x):
            conn.execute(INSERT, (x,))
            conn.execute("SELECT 1 FROM t WHERE a = %s", (x,))
            conn.execute(select(t.c.id).where(t.c.name == x))
            stmt = delete(t).where(t.c.id == x)
            conn.execute(stmt)
            compiled = str(insert(t).values(a=x).compile(dialect=dialect))
            conn.execute(compiled, {"a": x})
            sa.text("''")
        """
    )
    assert unsafe_sql(sql_calls(source, "fake.py")) == []
