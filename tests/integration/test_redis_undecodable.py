"""Bytes that are not UTF-8 under syncd's keys, on a real Redis: read as strays, never a crash.

Anyone can write such bytes (`RPUSH syncd:interval $'\\xff\\xfe'`). They are read in the
same bulk round trips as everything else, planned as stray schedules, removed by the next
sync as the exact bytes they are, and shown escaped; valid schedules are left intact.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from syncd.adapters.migrate import migrate
from syncd.adapters.redis import PutSchedule, RedisStore, RemoveSchedule
from syncd.cli.common import catalog
from syncd.core.keys import KeyLayout
from syncd.core.settings import Settings
from syncd.reconcile import Outcome, Stores, reconcile_once
from tests.conftest import WriteTaskdef
from tests.e2e.conftest import REPO
from tests.services import store_env

LAYOUT = KeyLayout(prefix="synctest")
SYNCD = KeyLayout()  # the layout `syncd sync` uses
JUNK_ID = b"\xff\xfe"
# (key, member) of every index list entry injected: an interval, a cron and a one-shot
# list, and a one-shot list whose own name is not UTF-8.
JUNK_ENTRIES = (
    (b"%b:interval", JUNK_ID),
    (b"%b:cron", b"task_\xff"),
    (b"%b:time:2030-01-01T00:00", b"\xc3("),
    (b"%b:time:\xff", b"task_77"),
)
JUNK_DATA_KEY = b"%b:data:\xfe\xff"
# `\xff\xfe` as a view shows it: escaped, whichever escape it uses.
ESCAPED_JUNK = re.compile(r"\\(x|udc)ff\\(x|udc)fe")
TASKS = """
version: 1
tasks:
  - name: every-minute
    task_type: diagnostics.noop
    schedule: {interval: 60}
  - name: nightly
    task_type: diagnostics.noop
    schedule: {cron: "0 3 * * *"}
"""


def inject_junk(raw: redis.Redis, prefix: str) -> None:
    for key, member in JUNK_ENTRIES:
        raw.rpush(key % prefix.encode(), member)
    raw.set(JUNK_DATA_KEY % prefix.encode(), b"\x80 not json")


def junk_left(raw: redis.Redis, prefix: str) -> list[bytes]:
    """Every injected key or entry still in Redis."""
    found = [key % prefix.encode() for key in (JUNK_DATA_KEY,) if raw.exists(key % prefix.encode())]
    for key, member in JUNK_ENTRIES:
        if member in raw.lrange(key % prefix.encode(), 0, -1):
            found.append(member)
    return found


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    with RedisStore.from_url(redis_url, LAYOUT) as store:
        yield store


# -- the adapter ---------------------------------------------------------------------------


def test_undecodable_entries_are_read_as_records(store: RedisStore, raw: redis.Redis) -> None:
    inject_junk(raw, LAYOUT.prefix)

    records = store.read_schedules()

    by_bytes = {sid.encode("utf-8", "surrogateescape"): record for sid, record in records.items()}
    assert set(by_bytes) == {JUNK_ID, b"task_\xff", b"\xc3(", b"task_77", b"\xfe\xff"}
    assert by_bytes[JUNK_ID].lists == ("synctest:interval",)
    assert by_bytes[JUNK_ID].payload is None
    assert by_bytes[b"task_77"].lists == ("synctest:time:\udcff",)
    assert by_bytes[b"\xfe\xff"].payload == {"__unreadable__": True}


def test_removing_them_deletes_the_exact_bytes(store: RedisStore, raw: redis.Redis) -> None:
    inject_junk(raw, LAYOUT.prefix)
    keep = {"schedule_id": "task_1", "interval": 60}
    store.apply([PutSchedule(keep, LAYOUT.interval_key)])
    raw.rpush(LAYOUT.interval_key, JUNK_ID)  # after the valid entry too

    strays = [r for sid, r in store.read_schedules().items() if sid != "task_1"]
    store.apply([RemoveSchedule(r.schedule_id, r.lists) for r in strays])

    assert junk_left(raw, LAYOUT.prefix) == []
    assert raw.lrange(LAYOUT.interval_key, 0, -1) == [b"task_1"]
    assert set(store.read_schedules()) == {"task_1"}


def test_a_valid_id_listed_under_an_undecodable_key_is_moved(
    store: RedisStore, raw: redis.Redis
) -> None:
    raw.rpush(b"synctest:time:\xff", b"task_1")
    listed = store.read_schedules()["task_1"].lists
    payload = {"schedule_id": "task_1", "interval": 5}

    store.apply([PutSchedule(payload, LAYOUT.interval_key, listed)])

    assert raw.exists(b"synctest:time:\xff") == 0
    assert store.read_schedules()["task_1"].lists == (LAYOUT.interval_key,)


def test_undecodable_status_keys_and_values_do_not_crash(
    store: RedisStore, raw: redis.Redis
) -> None:
    raw.set(b"schedule:status:\xff", b"active")  # not a config id: ignored, like ":abc"
    raw.set(b"schedule:status:4", b"\xff\xfe")
    raw.set(b"schedule:status:5", b"paused")

    statuses = store.read_statuses()

    assert statuses == {4: "\ufffd\ufffd", 5: "paused"}


# -- a sync ----------------------------------------------------------------------------------


@pytest.fixture
def settings(fresh_database_url: str, redis_url: str) -> Settings:
    migrate(fresh_database_url)
    return Settings(database_url=fresh_database_url, redis_url=redis_url)


def sync(taskdefs: Path, settings: Settings) -> Outcome:
    stores = Stores.open(settings)
    try:
        return reconcile_once(taskdefs, stores, catalog(), datetime.now(UTC))
    finally:
        stores.close()


def schedules_of(raw: redis.Redis) -> dict[str, object]:
    return {
        "interval": raw.lrange(SYNCD.interval_key, 0, -1),
        "cron": raw.lrange(SYNCD.cron_key, 0, -1),
        "data": sorted(raw.scan_iter(match=SYNCD.data_pattern)),
    }


def test_a_sync_removes_undecodable_entries_and_keeps_the_tasks(
    settings: Settings, raw: redis.Redis, taskdefs: Path, write: WriteTaskdef
) -> None:
    write("tasks.yaml", TASKS)
    assert sync(taskdefs, settings).applied is not None
    before = schedules_of(raw)
    inject_junk(raw, SYNCD.prefix)

    repaired = sync(taskdefs, settings)

    assert repaired.plan.summary()["stray_schedules"] == 5
    assert repaired.applied is not None
    assert junk_left(raw, SYNCD.prefix) == []
    assert schedules_of(raw) == before
    assert sync(taskdefs, settings).plan.is_empty


def test_syncd_sync_repairs_them_and_shows_them_escaped(
    settings: Settings, raw: redis.Redis, taskdefs: Path, write: WriteTaskdef
) -> None:
    write("tasks.yaml", TASKS)
    env = store_env(settings.database_url, settings.redis_url)
    first = run_syncd(env, "sync", str(taskdefs))
    assert first.returncode == 0, first.stderr
    raw.rpush(SYNCD.interval_key, JUNK_ID)
    raw.rpush(SYNCD.cron_key, b"task_\xff")

    plan = run_syncd(env, "plan", str(taskdefs), "--format", "json")
    repaired = run_syncd(env, "sync", str(taskdefs))

    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["summary"]["stray_schedules"] == 2
    assert repaired.returncode == 0, repaired.stderr
    assert ESCAPED_JUNK.search(repaired.stdout), repaired.stdout
    assert junk_left(raw, SYNCD.prefix) == []
    assert "No changes" in run_syncd(env, "sync", str(taskdefs)).stdout


def run_syncd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`syncd` as a user runs it; its output must be text (strict UTF-8: no raw bytes)."""
    proc = subprocess.run(
        [sys.executable, "-m", "syncd.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert "Traceback" not in stderr, stderr
    assert "internal error" not in stderr, stderr
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
