"""File tasks stay inside the operator's allowed roots, end to end, whatever the taskdef
strings or the disk say: a real `taskiq worker` whose policy allows `allowed/` only, with
victims next to it in `outside/`.

Each test reproduces what users found (deletes through `..` and planted directory links,
an output written over a file elsewhere, a counter or CSV read elsewhere and echoed into
task_executions) and checks on disk that nothing outside the root was deleted or written,
and in the records and the worker's log that nothing read there (or in a file that is
not CSV) was echoed. Paths outside the root are synced under a wider policy (`syncd
validate` would refuse them) so that the worker's own checks are what stops them; a
pattern no policy accepts is sent as a message directly, as someone writing to Redis could.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.conftest import REPO, Cli
from tests.e2e.test_worker import wait_for, worker
from tests.integration.test_confine import old_file

SECRET = "DB_PASSWORD=hunter2"
PASSWD = f"root:x:0:0\n{SECRET}:x:1:1\n"

# Sends one message for a synced task with other parameters (argv: task type, config id,
# task name, JSON parameters), with the labels `syncd run` gives it.
SEND = """
import asyncio, json, sys
from taskiq.kicker import AsyncKicker
from syncd.core.keys import queue_stream
from syncd.core.settings import Settings
from worker.broker import make_broker
from worker.tasks import registry

async def main() -> None:
    task_type, config_id, name, params = sys.argv[1:]
    queue = registry[task_type].queue
    labels = {"config_id": int(config_id), "task_name": name, "priority": 5, "queue": queue,
              "queue_name": queue_stream(queue), "max_retries": 1, "retry_on_error": False,
              "manual": True}
    broker = make_broker(registry, Settings())
    await broker.startup()
    try:
        await AsyncKicker(task_type, broker, labels).kiq(**json.loads(params))
    finally:
        await broker.shutdown()

if __name__ == "__main__":
    asyncio.run(main())
"""


@dataclass
class Site:
    allowed: Path  # the worker policy's only root
    outside: Path  # victims: nothing here may be deleted, written or echoed
    strict: Path  # policy file: allowed/ only (the worker's)
    wide: Path  # policy file: the whole test directory (to sync paths outside allowed/)

    def snapshot(self) -> dict[str, tuple[str, bytes | str, int]]:
        """Every entry outside the root: its kind, content or link target, and mtime."""
        found: dict[str, tuple[str, bytes | str, int]] = {}
        for path in sorted(self.outside.rglob("*")):
            info = path.lstat()
            if path.is_symlink():
                found[str(path)] = ("link", os.readlink(path), info.st_mtime_ns)
            elif path.is_dir():
                found[str(path)] = ("dir", "", info.st_mtime_ns)
            else:
                found[str(path)] = ("file", path.read_bytes(), info.st_mtime_ns)
        return found


def write_policy(path: Path, root: Path) -> Path:
    path.write_text(f"version: 1\npaths:\n  allow: ['{root}']\n")
    return path


@pytest.fixture
def site(cli: Cli, tmp_path: Path) -> Site:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    cli.env["SYNCD_DIAGNOSTICS"] = "1"
    strict = write_policy(tmp_path / "strict-policy.yaml", allowed)
    wide = write_policy(tmp_path / "wide-policy.yaml", tmp_path)
    cli.env["SYNCD_POLICY"] = str(strict)
    return Site(allowed, outside, strict, wide)


Record = dict[str, Any]


def records(cli: Cli) -> dict[str, Record]:
    """The last attempt of each task, by name."""
    url = cli.env["SYNCD_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.name, e.is_success, e.error_message, e.error_traceback, e.result "
            "FROM task_executions e JOIN task_configs c ON c.id = e.config_id "
            "ORDER BY e.completed_at"
        ).fetchall()
    keys = ("ok", "error", "traceback", "result")
    return {name: dict(zip(keys, rest, strict=True)) for name, *rest in rows}


def config_id(cli: Cli, name: str) -> int:
    url = cli.env["SYNCD_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT id FROM task_configs WHERE name = %s", (name,)).fetchone()
    assert row is not None, name
    return int(row[0])


def send(cli: Cli, task_type: str, name: str, params: dict[str, Any]) -> None:
    """A message for the synced task `name`, with parameters `syncd sync` would refuse."""
    args = [task_type, str(config_id(cli, name)), name, json.dumps(params)]
    proc = subprocess.run(
        [sys.executable, "-c", SEND, *args],
        cwd=REPO,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def sync(cli: Cli, policy: Path, body: str) -> None:
    cli.write("a.yaml", body)
    env = {**cli.env, "SYNCD_POLICY": str(policy)}
    proc = subprocess.run(
        [sys.executable, "-m", "syncd.cli", "sync", str(cli.taskdefs)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def run_all(cli: Cli, names: list[str], policy: Path) -> None:
    env = cli.env
    cli.env = {**env, "SYNCD_POLICY": str(policy)}
    try:
        for name in names:
            cli.run("run", name, check=True)
    finally:
        cli.env = env


def await_records(cli: Cli, names: list[str]) -> dict[str, Record]:
    wait_for(
        lambda: set(names) <= set(records(cli)), 60, f"records of {names}", lambda: records(cli)
    )
    return records(cli)


def run_and_record(cli: Cli, names: list[str], policy: Path, log: Path) -> dict[str, Record]:
    """Start a worker (under the strict policy of cli.env), run `names`, wait for records."""
    with worker(cli, log):
        run_all(cli, names, policy)
        return await_records(cli, names)


def assert_nothing_echoed(found: dict[str, Record], log: Path) -> None:
    for name, record in found.items():
        for key in ("error", "traceback", "result"):
            assert "hunter2" not in json.dumps(record[key]), (name, key, record[key])
    assert "hunter2" not in log.read_text(errors="replace")


def failed(found: dict[str, Record], name: str, says: str) -> None:
    record = found[name]
    assert record["ok"] is False, (name, record)
    assert says in (record["error"] or ""), (name, record["error"])


def test_cleanups_delete_nothing_outside_the_root(cli: Cli, site: Site, tmp_path: Path) -> None:
    clean = site.allowed / "clean"
    old_file(clean / "a.tmp")
    old_file(clean / "sub" / "b.tmp")
    old_file(site.outside / "victim" / "important.txt", "important\n")
    old_file(site.outside / "victim2" / "file.txt", "precious\n")
    (site.outside / "empty").mkdir()
    (clean / "link2").symlink_to(site.outside / "victim2")
    (clean / "link-empty").symlink_to(site.outside / "empty")
    (clean / "gone" / "deeper").mkdir(parents=True)
    before = site.snapshot()

    # `..` in a pattern is refused when the taskdefs are checked...
    bad = tmp_path / "bad-taskdefs"
    bad.mkdir()
    (bad / "a.yaml").write_text(
        "version: 1\ntasks:\n  - name: climb\n    task_type: cleanup.temp_files\n"
        f"    parameters: {{path: '{clean}', pattern: '../victim/*'}}\n"
    )
    refused = cli.run("validate", str(bad))
    assert refused.returncode == 1
    assert "may not contain `..`" in refused.stdout + refused.stderr

    sync(
        cli,
        site.strict,
        f"""
        version: 1
        tasks:
          - name: sweep
            task_type: cleanup.temp_files
            parameters: {{path: "{clean}", pattern: "*/*", older_than_days: 1}}
          - name: sweep-link
            task_type: cleanup.temp_files
            parameters: {{path: "{clean}/link2", older_than_days: 1}}
          - name: climb
            task_type: cleanup.temp_files
            parameters: {{path: "{clean}", pattern: "*.log", older_than_days: 1}}
          - name: prune
            task_type: cleanup.empty_dirs
            parameters: {{path: "{clean}"}}
        """,
    )
    log = tmp_path / "worker.log"
    with worker(cli, log):
        run_all(cli, ["sweep", "sweep-link"], site.strict)
        # ... and by the worker, for a message that never went through them.
        send(cli, "cleanup.temp_files", "climb", {"path": str(clean), "pattern": "../victim/*"})
        await_records(cli, ["sweep", "sweep-link", "climb"])
        run_all(cli, ["prune"], site.strict)
        found = await_records(cli, ["sweep", "sweep-link", "climb", "prune"])

    assert site.snapshot() == before
    assert found["sweep"]["result"] == {"removed": 1, "bytes_freed": 4, "dry_run": False}
    assert not (clean / "sub" / "b.tmp").exists()  # it did clean inside the root
    assert (clean / "a.tmp").exists()  # `*/*` is two components deep
    failed(found, "sweep-link", f"{clean}/link2 is a symbolic link; links are not followed")
    failed(found, "climb", "may not contain `..`")
    assert found["prune"]["ok"], found["prune"]
    assert not (clean / "gone").exists()
    assert (clean / "link-empty").is_symlink()


def test_csv_summary_reads_and_writes_inside_the_root_only(
    cli: Cli, site: Site, tmp_path: Path
) -> None:
    conf = site.outside / "anything.conf"  # stands for /etc/anything.conf
    conf.write_text("keep me\n")
    (site.outside / "passwd").write_text(PASSWD)  # stands for /etc/passwd
    sales = site.allowed / "sales.csv"
    sales.write_text("amount\n1\n2.5\n")
    (site.allowed / "leak.csv").write_text(PASSWD)
    (site.allowed / "passwd.csv").symlink_to(site.outside / "passwd")
    (site.allowed / "out").mkdir()
    (site.allowed / "out" / "summary.json").symlink_to(conf)
    (site.allowed / "outlink").symlink_to(site.outside)
    before = site.snapshot()
    column = "root:x:0:0"
    sync(
        cli,
        site.wide,
        f"""
        version: 1
        tasks:
          - name: to-etc
            task_type: data.csv_summary
            parameters: {{source: "{sales}", column: amount, output: "{conf}"}}
          - name: read-passwd
            task_type: data.csv_summary
            parameters: {{source: "{site.outside}/passwd", column: "{column}"}}
          - name: out-via-link
            task_type: data.csv_summary
            parameters:
              {{source: "{sales}", column: amount, output: "{site.allowed}/out/summary.json"}}
          - name: out-via-dir-link
            task_type: data.csv_summary
            parameters:
              {{source: "{sales}", column: amount, output: "{site.allowed}/outlink/x.json"}}
          - name: in-via-link
            task_type: data.csv_summary
            parameters: {{source: "{site.allowed}/passwd.csv", column: "{column}"}}
          - name: leak
            task_type: data.csv_summary
            parameters: {{source: "{site.allowed}/leak.csv", column: "{column}"}}
        """,
    )
    names = ["to-etc", "read-passwd", "out-via-link", "out-via-dir-link", "in-via-link", "leak"]
    log = tmp_path / "worker.log"
    found = run_and_record(cli, names, site.wide, log)

    assert site.snapshot() == before
    failed(found, "to-etc", f"'{conf}' is outside the allowed roots")
    failed(found, "read-passwd", f"'{site.outside}/passwd' is outside the allowed roots")
    summary = {"rows": 2, "sum": 3.5, "min": 1.0, "max": 2.5, "mean": 1.75}
    assert found["out-via-link"]["result"] == summary
    written = site.allowed / "out" / "summary.json"
    assert not written.is_symlink()
    assert json.loads(written.read_text()) == summary
    failed(found, "out-via-dir-link", f"{site.allowed}/outlink is a symbolic link")
    failed(found, "in-via-link", f"{site.allowed}/passwd.csv is a symbolic link")
    failed(found, "leak", f"row 1: column '{column}' is not a number")
    assert_nothing_echoed(found, log)


def test_the_flaky_counter_never_reads_outside_the_root(
    cli: Cli, site: Site, tmp_path: Path
) -> None:
    secret = site.outside / "secret.env"
    secret.write_text(f"{SECRET}\nAPI_KEY=abc\n")
    (site.allowed / "counter-link").symlink_to(secret)
    garbled = site.allowed / "garbled"
    garbled.write_text(f"{SECRET}\n")
    counter = site.allowed / "counter"
    before = site.snapshot()
    sync(
        cli,
        site.wide,
        f"""
        version: 1
        tasks:
          - name: secret
            task_type: diagnostics.flaky
            parameters: {{counter_file: "{secret}", failures: 0}}
          - name: linked
            task_type: diagnostics.flaky
            parameters: {{counter_file: "{site.allowed}/counter-link", failures: 0}}
          - name: garbled
            task_type: diagnostics.flaky
            parameters: {{counter_file: "{garbled}", failures: 0}}
          - name: counting
            task_type: diagnostics.flaky
            parameters: {{counter_file: "{counter}", failures: 0}}
        """,
    )
    names = ["secret", "linked", "garbled", "counting"]
    log = tmp_path / "worker.log"
    found = run_and_record(cli, names, site.wide, log)

    assert site.snapshot() == before
    failed(found, "secret", f"'{secret}' is outside the allowed roots")
    failed(found, "linked", f"{site.allowed}/counter-link is a symbolic link")
    failed(found, "garbled", f"counter_file does not hold a number ({garbled})")
    assert found["counting"]["result"] == {"calls": 1}
    assert counter.read_text() == "1"
    assert garbled.read_text() == f"{SECRET}\n"
    assert (site.allowed / "counter-link").is_symlink()
    assert_nothing_echoed(found, log)
