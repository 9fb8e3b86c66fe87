"""`syncd status`, `syncd explain`, `syncd history` against real PostgreSQL and Redis, and the
pull-request view `syncd plan --against REF --format markdown` in a real git repository."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.e2e.conftest import Cli
from tests.gitrepo import git

TASKS = """
version: 1
tasks:
  - name: active-task
    task_type: diagnostics.noop
    schedule: {cron: "30 2 * * *", timezone: Europe/Berlin}
  - name: paused-task
    task_type: diagnostics.noop
    schedule: {interval: 60}
  - name: manual-task
    task_type: diagnostics.noop
  - name: drifted-task
    task_type: diagnostics.noop
    schedule: {interval: 300}
  - name: changed-task
    task_type: diagnostics.noop
    schedule: {cron: "0 0 * * 0"}
  - name: once-task
    task_type: diagnostics.noop
    schedule: {at: 2020-01-01T00:00:00Z}
"""
FROZEN = """
version: 1
tasks:
  - name: frozen-task
    task_type: diagnostics.noop
    schedule: {interval: 120}
"""


def db_url(cli: Cli) -> str:
    return cli.env["SYNCD_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")


def ids(cli: Cli) -> dict[str, int]:
    with psycopg.connect(db_url(cli)) as conn:
        return dict(conn.execute("SELECT name, id FROM task_configs").fetchall())


def record(cli: Cli, name: str, ago: timedelta, *, ok: bool, error: str | None = None) -> None:
    """One finished attempt, as the worker's recorder would insert it."""
    started = datetime.now(UTC) - ago
    with psycopg.connect(db_url(cli)) as conn:
        conn.execute(
            "INSERT INTO task_executions (config_id, task_id, attempt, is_success, started_at,"
            " completed_at, duration_seconds, error_message)"
            " VALUES ((SELECT id FROM task_configs WHERE name = %s), %s, 1, %s, %s, %s, 2.5, %s)",
            (name, f"{name}-{ago.total_seconds()}", ok, started, started + timedelta(seconds=2.5),
             error),
        )  # fmt: skip


@pytest.fixture
def live(cli: Cli) -> Cli:
    """Every state at once: active, paused, inactive, drift, changed in git, expired, frozen."""
    cli.write("main.yaml", TASKS)
    cli.write("frozen.yaml", FROZEN)
    cli.run("sync", str(cli.taskdefs), check=True)
    cli.run("pause", "paused-task", check=True)
    cli.redis().delete(f"syncd:data:task_{ids(cli)['drifted-task']}")
    cli.write("main.yaml", TASKS.replace('cron: "0 0 * * 0"', 'cron: "0 6 * * 1"'))
    cli.write("frozen.yaml", "version: 1\ntasks:\n  - name: frozen-task\n    task_type: [oops\n")
    return cli


def status_json(cli: Cli, *args: str) -> dict[str, dict[str, Any]]:
    proc = cli.run("status", *args, "--format", "json", check=True)
    return {item["name"]: item for item in json.loads(proc.stdout)}


def test_status_shows_every_state_and_agrees_with_plan(live: Cli) -> None:
    found = status_json(live, str(live.taskdefs))
    assert {n: (t["status"], t["sync_state"]) for n, t in found.items()} == {
        "active-task": ("active", "in sync"),
        "paused-task": ("paused", "in sync"),
        "manual-task": ("inactive", "in sync"),
        "drifted-task": ("active", "drift"),
        "changed-task": ("active", "changed in git"),
        "once-task": ("inactive", "expired"),
        "frozen-task": ("active", "frozen"),
    }
    assert found["drifted-task"]["sync_detail"] == [
        {"code": "schedule_missing", "message": "schedule missing from Redis"}
    ]
    assert found["changed-task"]["sync_detail"] == [
        {"code": "git_update", "message": "update: schedule_config"}
    ]
    # The live schedule is still the applied one until a sync.
    assert found["changed-task"]["schedule"] == {
        "kind": "cron", "enabled": True, "expression": "0 0 * * 0", "timezone": "UTC",
    }  # fmt: skip
    next_sunday = datetime.fromisoformat(found["changed-task"]["next_fire"])
    assert (next_sunday.weekday(), next_sunday.hour, next_sunday.minute) == (6, 0, 0)
    berlin = datetime.fromisoformat(found["active-task"]["next_fire"])
    assert berlin > datetime.now(UTC)
    assert found["paused-task"]["next_fire"] is None
    assert found["paused-task"]["next_fire_note"] == "paused"
    assert found["manual-task"]["schedule"] == {"kind": "manual", "enabled": True}
    plan = live.plan_json()
    changed = {c["name"] for c in plan["changes"] if c["action"] != "noop"}
    assert changed == {n for n, t in found.items() if t["sync_state"] == "changed in git"}


def test_status_text_table_and_one_task(live: Cli) -> None:
    proc = live.run("status", str(live.taskdefs), check=True)
    assert "warning: 1 taskdef error(s)" in proc.stderr
    header, *lines = proc.stdout.splitlines()
    assert header.split() == ["NAME", "SCHEDULE", "STATUS", "SYNC", "NEXT", "FIRE", "(UTC)",
                              "LAST", "RUN"]  # fmt: skip
    rows = {line.split()[0]: line for line in lines if line and not line.startswith(" ")}
    assert "every 60s" in rows["paused-task"]
    assert "paused" in rows["paused-task"]
    assert "— (paused)" in rows["paused-task"]
    assert "cron 30 2 * * * (Europe/Berlin)" in rows["active-task"]
    assert "frozen" in rows["frozen-task"]
    assert "drift" in rows["drifted-task"]
    assert "  drifted-task: schedule missing from Redis" in lines

    one = live.run("status", "paused-task", str(live.taskdefs), check=True).stdout.splitlines()
    assert len([line for line in one if line.startswith("paused-task")]) == 1
    assert len(one) == 2  # header and the row: nothing to explain when in sync
    assert list(status_json(live, "drifted-task", str(live.taskdefs))) == ["drifted-task"]

    missing = live.run("status", "no-such-task", str(live.taskdefs))
    assert missing.returncode == 1
    assert "no task named 'no-such-task'" in missing.stderr


def test_status_shows_the_last_run(live: Cli) -> None:
    record(live, "active-task", timedelta(hours=2), ok=True)
    record(live, "active-task", timedelta(hours=1), ok=False, error="ValueError: boom\ntrace")
    found = status_json(live, str(live.taskdefs))
    last = found["active-task"]["last_run"]
    assert last["success"] is False
    assert last["duration_seconds"] == 2.5
    assert last["error_message"].startswith("ValueError: boom")
    assert found["manual-task"]["last_run"] is None
    record(live, "paused-task", timedelta(seconds=10), ok=True)
    text = live.run("status", str(live.taskdefs), check=True).stdout
    assert re.search(r"active-task .* FAILED \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(2\.500s\)", text)


def test_explain_shows_taskdef_row_schedule_plan_and_executions(live: Cli) -> None:
    config_id = ids(live)["drifted-task"]
    for minutes in range(12):
        error = None if minutes % 3 else f"TimeoutError: run {minutes}\nTraceback: …"
        record(live, "drifted-task", timedelta(minutes=minutes + 1), ok=not error, error=error)
    proc = live.run("explain", "drifted-task", str(live.taskdefs), check=True)
    out = proc.stdout
    assert f"{live.taskdefs}/main.yaml:11" in out
    assert f"id {config_id}, content_hash " in out
    assert "source main.yaml:11" in out
    assert f"status key schedule:status:{config_id} = active" in out
    assert f"data key syncd:data:task_{config_id}: (missing)" in out
    assert "index list(s): syncd:interval" in out
    assert "drift: schedule missing from Redis" in out
    assert "last 10 execution(s):" in out
    runs = [line for line in out.splitlines() if line.strip().startswith("attempt ")]
    assert len(runs) == 10
    assert "FAILED" in runs[0]
    assert runs[0].rstrip().endswith("TimeoutError: run 0")  # first line of the error only
    assert "Traceback" not in out

    active = live.run("explain", "active-task", str(live.taskdefs), check=True).stdout
    assert f'"schedule_id": "task_{ids(live)["active-task"]}"' in active
    assert "index list(s): syncd:cron" in active
    assert re.search(r"UTC = \d{4}-\d\d-\d\d 02:30 CES?T", active)  # next fires, local time

    frozen = live.run("explain", "frozen-task", str(live.taskdefs), check=True).stdout
    assert "frozen.yaml:3 (last applied; the file has errors now)" in frozen
    assert "frozen: frozen.yaml has errors" in frozen


def test_explain_unknown_task_fails(live: Cli) -> None:
    proc = live.run("explain", "nope", str(live.taskdefs))
    assert proc.returncode == 1
    assert "no task named 'nope'" in proc.stderr


def test_history_filters_and_orders_newest_first(live: Cli) -> None:
    record(live, "active-task", timedelta(days=3), ok=False, error="old failure")
    record(live, "active-task", timedelta(hours=5), ok=True)
    record(live, "active-task", timedelta(minutes=20), ok=False, error="Boom\nsecond line")
    record(live, "paused-task", timedelta(minutes=10), ok=True)

    def history(*args: str) -> list[dict[str, Any]]:
        proc = live.run("history", *args, "--format", "json", check=True)
        result: list[dict[str, Any]] = json.loads(proc.stdout)
        return result

    everything = history()
    assert [e["name"] for e in everything] == ["paused-task", "active-task", "active-task",
                                               "active-task"]  # fmt: skip
    completed = [e["completed_at"] for e in everything]
    assert completed == sorted(completed, reverse=True)
    # JSON output shows user text by the same rule as the terminal: escaped, on one line.
    assert [e["error_message"] for e in history("active-task", "--failed")] == [
        "Boom\\nsecond line", "old failure",
    ]  # fmt: skip
    assert len(history("--since", "1h")) == 2
    assert len(history("--since", "2d")) == 3
    assert len(history("--since", "30m", "--failed")) == 1
    since = (datetime.now(UTC) - timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%S")
    assert len(history("active-task", "--since", since)) == 2
    assert [e["name"] for e in history("--limit", "1")] == ["paused-task"]

    text = live.run("history", "active-task", check=True).stdout.splitlines()
    assert text[0].split()[:3] == ["COMPLETED", "(UTC)", "TASK"]
    assert "FAILED" in text[1]
    assert text[1].rstrip().endswith("Boom")
    assert "2.500s" in text[1]

    bad = live.run("history", "--since", "yesterday")
    assert bad.returncode == 2
    assert "neither a duration" in bad.stderr
    assert live.run("history", "no-such-task").returncode == 1


# ---------------------------------------------------------------- plan --against in git

BERLIN_TASK = """
version: 1
tasks:
  - name: report
    task_type: diagnostics.noop
    schedule: {{cron: "{cron}", timezone: Europe/Berlin}}
    priority: {priority}
"""


def fire_table(markdown: str) -> list[list[str]]:
    start = markdown.index("| # |")
    lines = markdown[start:].split("\n\n", maxsplit=1)[0].splitlines()
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_plan_against_a_git_ref_lists_fire_times_before_and_after(cli: Cli) -> None:
    repo = cli.taskdefs.parent
    cli.write("reports.yaml", BERLIN_TASK.format(cron="30 2 * * *", priority=5))
    git(repo, "init", "-q")
    git(repo, "add", "taskdefs")
    git(repo, "commit", "-q", "-m", "base")
    cli.write("reports.yaml", BERLIN_TASK.format(cron="15 7 * * 1-5", priority=5))

    proc = cli.run("plan", str(cli.taskdefs), "--against", "HEAD", "--format", "markdown")
    assert proc.returncode == 0, proc.stderr
    md = proc.stdout
    assert "Next 5 fire times (from " in md
    header, _, *rows = fire_table(md)
    assert header == ["#", "before, UTC", "before, Europe/Berlin", "after, UTC",
                      "after, Europe/Berlin"]  # fmt: skip
    assert [row[0] for row in rows] == ["1", "2", "3", "4", "5"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", row[1]) for row in rows)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d 02:30 CES?T", row[2]) for row in rows)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d 07:15 CES?T", row[4]) for row in rows)
    weekdays = {datetime.strptime(row[4][:10], "%Y-%m-%d").weekday() for row in rows}
    assert weekdays <= {0, 1, 2, 3, 4}
    utc_times = [datetime.strptime(row[3], "%Y-%m-%d %H:%M UTC") for row in rows]
    assert utc_times == sorted(utc_times)

    cli.write("reports.yaml", BERLIN_TASK.format(cron="30 2 * * *", priority=8))
    unscheduled = cli.run("plan", str(cli.taskdefs), "--against", "HEAD", "--format", "markdown")
    assert "priority" in unscheduled.stdout
    assert "fire times" not in unscheduled.stdout  # no schedule change, no fire times
