"""The convergence checker of the reliability tests: do the stores hold EXACTLY what the YAML says?

Reads PostgreSQL (psycopg, not syncd's adapter) and Redis (raw commands) independently and
compares them with the taskdefs as `syncd.load.loader` reads them: every managed row and its fields,
source and hash; every schedule payload against `syncd.core.payloads.build_schedule` (labelled
with the git revision its row holds); each schedule
id listed once, in the right index list only; every status key; nothing else under the prefix.
Returns a list of discrepancies (empty: converged), so tests can also prove it catches each.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis

from schemas.tables import MANAGED_BY_SYNCD
from syncd.cli.common import catalog
from syncd.core.keys import KeyLayout, schedule_id
from syncd.core.model import CONFIG_FIELDS, DEFAULT_QUEUE, TaskConfig
from syncd.core.payloads import build_schedule, index_key
from syncd.load.loader import LoadedTask, load_taskdefs

LAYOUT = KeyLayout()
# Keys a running system may hold outside the schedule prefix and the status keys: the
# leader lease, the worker streams, the schedulers' fire claims, the test claim keys.
OTHER_KEY_PREFIXES = ("syncd-leader:", "syncd-queue:", "syncd-fire:")


def libpq_url(database_url: str) -> str:
    """The SQLAlchemy URL as psycopg wants it."""
    return database_url.replace("postgresql+psycopg://", "postgresql://", 1)


@dataclass(frozen=True)
class Expected:
    """What the stores must hold for one taskdefs directory."""

    tasks: dict[str, LoadedTask]
    queues: dict[str, str]
    now: datetime

    def config(self, name: str) -> TaskConfig:
        return self.tasks[name].config

    def payload(
        self, config_id: int, name: str, revision: str | None = None
    ) -> dict[str, Any] | None:
        config = self.config(name)
        at = config.at_time()
        if not config.is_scheduled or (at is not None and at <= self.now):
            return None
        queue = self.queues.get(config.task_type, DEFAULT_QUEUE)
        return build_schedule(config_id, config, queue, revision=revision)

    def status(self, name: str) -> str:
        config = self.config(name)
        at = config.at_time()
        return "active" if config.is_scheduled and not (at and at <= self.now) else "inactive"


def expected_from(taskdefs: Path, now: datetime | None = None) -> Expected:
    """The desired state; a test tree must be valid (an invalid one is a broken test)."""
    tasks = catalog()
    loaded = load_taskdefs(taskdefs, tasks.params, now=now, policy=tasks.policy)
    if loaded.errors:
        raise AssertionError(f"test taskdefs are invalid: {[str(p) for p in loaded.errors]}")
    return Expected({t.name: t for t in loaded.tasks}, dict(tasks.queues), now or datetime.now(UTC))


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.problems.append(message)


def read_rows(database_url: str) -> list[dict[str, Any]]:
    columns = ", ".join(
        ("id", "name", *CONFIG_FIELDS, "managed_by", "content_hash", "source_file", "source_line",
         "git_revision")
    )  # fmt: skip
    with psycopg.connect(libpq_url(database_url)) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {columns} FROM task_configs ORDER BY id")  # noqa: S608 - constants
        names = [d.name for d in cur.description or ()]
        return [dict(zip(names, record, strict=True)) for record in cur.fetchall()]


def check_rows(expected: Expected, rows: list[dict[str, Any]], report: Report) -> dict[str, int]:
    """Rows equal the YAML exactly; returns name -> id of the rows that should be there."""
    ids: dict[str, int] = {}
    for name, count in Counter(r["name"] for r in rows).items():
        if count > 1:
            report.add(f"row {name!r} appears {count} times")
    for row in rows:
        name = row["name"]
        if name not in expected.tasks:
            report.add(f"row {name!r} (id {row['id']}) is not in the taskdefs")
            continue
        ids[name] = row["id"]
        task = expected.tasks[name]
        wanted = task.config.field_values()
        for column in CONFIG_FIELDS:
            if row[column] != wanted[column]:
                report.add(
                    f"row {name!r}: {column} is {row[column]!r}, expected {wanted[column]!r}"
                )
        if row["managed_by"] != MANAGED_BY_SYNCD:
            report.add(f"row {name!r}: managed_by is {row['managed_by']!r}")
        if row["content_hash"] != task.config.content_hash():
            report.add(f"row {name!r}: content_hash does not match its configuration")
        if (row["source_file"], row["source_line"]) != (task.source, task.line):
            report.add(
                f"row {name!r}: source is {row['source_file']}:{row['source_line']}, "
                f"expected {task.source}:{task.line}"
            )
    for name in sorted(set(expected.tasks) - set(ids)):
        report.add(f"task {name!r} has no row")
    return ids


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def check_redis(
    expected: Expected,
    ids: dict[str, int],
    client: redis.Redis,
    report: Report,
    *,
    layout: KeyLayout = LAYOUT,
    other_prefixes: Iterable[str] = (),
    revisions: Mapping[str, str | None] | None = None,
) -> None:
    """`revisions`: each task's row revision, which its payload must carry (None: none)."""
    prefix = f"{layout.prefix}:"
    keys = sorted(_text(k) for k in client.scan_iter(match="*", count=1000))
    wanted_lists: dict[str, list[str]] = {}
    wanted_data: dict[str, dict[str, Any]] = {}
    wanted_status: dict[str, str] = {}
    for name, config_id in ids.items():
        payload = expected.payload(config_id, name, (revisions or {}).get(name))
        if payload is not None:
            sid = schedule_id(config_id)
            wanted_data[layout.data_key(sid)] = payload
            list_key = index_key(layout, payload)
            assert list_key is not None
            wanted_lists.setdefault(list_key, []).append(sid)
        wanted_status[layout.status_key(config_id)] = expected.status(name)
    for key in keys:
        if key.startswith(layout.status_prefix):
            if key not in wanted_status:
                report.add(f"status key {key} belongs to no task")
        elif key.startswith(prefix):
            if key != layout.version_key and key not in wanted_data and key not in wanted_lists:
                report.add(f"unexpected key {key} under the prefix")
        elif not key.startswith((*OTHER_KEY_PREFIXES, *other_prefixes)):
            report.add(f"unexpected key {key} outside the prefix")
    _check_data(client, wanted_data, report)
    _check_lists(client, keys, wanted_lists, report, layout)
    _check_statuses(client, wanted_status, report)


def _check_data(client: redis.Redis, wanted: dict[str, dict[str, Any]], report: Report) -> None:
    keys = sorted(wanted)
    values = client.mget(keys) if keys else []
    for key, raw in zip(keys, values, strict=True):
        if raw is None:
            report.add(f"schedule {key} is missing")
            continue
        try:
            found = json.loads(raw)
        except ValueError:
            report.add(f"schedule {key} is not JSON: {raw[:80]!r}")
            continue
        if found != wanted[key]:
            diff = sorted(k for k in {*found, *wanted[key]} if found.get(k) != wanted[key].get(k))
            report.add(f"schedule {key} differs from build_schedule in {diff}")


def _check_lists(
    client: redis.Redis,
    keys: list[str],
    wanted: dict[str, list[str]],
    report: Report,
    layout: KeyLayout,
) -> None:
    list_keys = {layout.cron_key, layout.interval_key, *wanted}
    list_keys |= {k for k in keys if k.startswith(f"{layout.prefix}:time:")}
    listed_in: dict[str, list[str]] = {}
    for key in sorted(list_keys):
        if client.type(key) not in (b"list", "list", b"none", "none"):
            report.add(f"index {key} is not a list")
            continue
        entries = [_text(e) for e in client.lrange(key, 0, -1)]
        for sid, count in Counter(entries).items():
            if count > 1:
                report.add(f"{sid} is listed {count} times in {key}")
            listed_in.setdefault(sid, []).append(key)
    for key, sids in wanted.items():
        for sid in sids:
            if key not in listed_in.get(sid, []):
                report.add(f"{sid} is not listed in {key}")
    owner = {sid: key for key, sids in wanted.items() for sid in sids}
    for sid, lists in listed_in.items():
        for key in lists:
            if owner.get(sid) != key:
                report.add(f"{sid} is listed in {key}, where it does not belong")


def _check_statuses(client: redis.Redis, wanted: dict[str, str], report: Report) -> None:
    keys = sorted(wanted)
    values = client.mget(keys) if keys else []
    for key, raw in zip(keys, values, strict=True):
        found = None if raw is None else _text(raw)
        if found != wanted[key]:
            report.add(f"status {key} is {found!r}, expected {wanted[key]!r}")


def check_convergence(
    taskdefs: Path,
    database_url: str,
    redis_url: str,
    *,
    layout: KeyLayout = LAYOUT,
    now: datetime | None = None,
    other_prefixes: Iterable[str] = (),
) -> list[str]:
    """Every way the stores differ from the taskdefs; [] when they match exactly."""
    expected = expected_from(taskdefs, now)
    report = Report()
    rows = read_rows(database_url)
    ids = check_rows(expected, rows, report)
    revisions = {row["name"]: row["git_revision"] for row in rows}
    with redis.Redis.from_url(redis_url) as client:
        check_redis(
            expected,
            ids,
            client,
            report,
            layout=layout,
            other_prefixes=other_prefixes,
            revisions=revisions,
        )
    return report.problems


def assert_converged(taskdefs: Path, database_url: str, redis_url: str, **kwargs: Any) -> None:
    problems = check_convergence(taskdefs, database_url, redis_url, **kwargs)
    shown = "\n  ".join(problems[:40])
    assert not problems, f"{len(problems)} discrepancies, first ones:\n  {shown}"
