"""Operator commands end to end: pause / resume (Redis status only, kept by sync) and run
(enqueues one message with the task's configured labels and parameters), each audited
as the person at the terminal."""

from __future__ import annotations

import getpass
import json
import socket
from typing import Any

import psycopg
from taskiq.labels import LabelType

from tests.e2e.conftest import Cli

TASKS = """
version: 1
tasks:
  - name: tick
    task_type: diagnostics.noop
    schedule: {interval: 60}
  - name: manual
    task_type: notification.log
    parameters: {message: hi}
    max_retries: 2
    retry_backoff_seconds: 0.5
    timeout_seconds: 30
    priority: 7
"""


CLI_ACTOR = f"cli:{getpass.getuser()}@{socket.gethostname()}"


def query(cli: Cli, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    url = cli.env["SYNCD_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def config_id(cli: Cli, name: str) -> int:
    (row,) = query(cli, "SELECT id FROM task_configs WHERE name = %s", name)
    return int(row[0])


def audit_rows(cli: Cli) -> list[tuple[Any, ...]]:
    """(action, task_name, result, detail) of every audit entry, oldest first; each one
    checked to come from this terminal's user."""
    rows = query(
        cli,
        "SELECT actor, origin, address, action, task_name, result, detail "
        "FROM audit_log ORDER BY id",
    )
    assert {row[:3] for row in rows} <= {(CLI_ACTOR, "cli", None)}
    return [row[3:] for row in rows]


def test_pause_resume_round_trip_and_sync_keeps_the_pause(cli: Cli) -> None:
    cli.write("a.yaml", TASKS)
    cli.run("sync", str(cli.taskdefs), check=True)
    key = f"schedule:status:{config_id(cli, 'tick')}"
    paused = cli.run("pause", "tick", check=True)
    assert "paused tick (was active)" in paused.stdout
    assert cli.redis().get(key) == "paused"
    cli.run("sync", str(cli.taskdefs), check=True)
    assert cli.redis().get(key) == "paused"
    assert cli.run("resume", "tick", check=True).stdout.strip() == "resumed tick: active"
    assert cli.redis().get(key) == "active"


def test_pause_refuses_manual_and_unknown_tasks(cli: Cli) -> None:
    cli.write("a.yaml", TASKS)
    cli.run("sync", str(cli.taskdefs), check=True)
    manual = cli.run("pause", "manual")
    assert manual.returncode == 1
    assert "nothing to pause" in manual.stderr
    unknown = cli.run("pause", "nope")
    assert unknown.returncode == 1
    assert "no task named 'nope'" in unknown.stderr


def test_run_enqueues_one_message_with_the_configured_labels(cli: Cli) -> None:
    cli.write("a.yaml", TASKS)
    cli.run("sync", str(cli.taskdefs), check=True)
    proc = cli.run("run", "manual", check=True)
    assert proc.stdout.startswith("enqueued manual as task ")
    entries = cli.redis().xrange("syncd-queue:notifications")
    assert len(entries) == 1
    message = json.loads(entries[0][1]["data"])
    assert message["task_name"] == "notification.log"
    assert message["kwargs"] == {"message": "hi"}
    labels = message["labels"]  # taskiq sends label values as strings
    assert labels["config_id"] == str(config_id(cli, "manual"))
    assert labels["max_retries"] == "3"  # 2 retries = 3 attempts in taskiq's counting
    assert labels["timeout"] == "30"
    assert labels["priority"] == "7"
    assert labels["manual"] == "True"
    assert (labels["retry_backoff"], labels["retry_backoff_max"]) == ("0.5", "600.0")
    # Typed as floats, so the worker reads them back as numbers.
    assert message["labels_types"]["retry_backoff"] == LabelType.FLOAT
    assert message["labels_types"]["retry_backoff_max"] == LabelType.FLOAT
    assert cli.run("run", "nope").returncode == 1


def test_pause_resume_and_run_each_write_one_audit_row(cli: Cli) -> None:
    cli.write("a.yaml", TASKS)
    cli.run("sync", str(cli.taskdefs), check=True)
    assert audit_rows(cli) == []  # sync is no operator action
    cli.run("pause", "tick", check=True)
    cli.run("resume", "tick", check=True)
    task_id = cli.run("run", "manual", check=True).stdout.split()[-1]
    assert audit_rows(cli) == [
        ("pause", "tick", "ok", "was active"),
        ("resume", "tick", "ok", "now active"),
        ("run", "manual", "ok", f"task id {task_id}"),
    ]
    explained = cli.run("explain", "tick", str(cli.taskdefs), check=True).stdout
    audit = explained.split("audit (operator actions, newest first):\n", 1)[1].splitlines()
    assert [line.split()[2:5] for line in audit] == [
        ["resume", "ok", "by"],
        ["pause", "ok", "by"],
    ]
    assert all(f"by {CLI_ACTOR} (cli)" in line for line in audit)


def test_refused_actions_are_audited_too(cli: Cli) -> None:
    cli.write("a.yaml", TASKS)
    cli.run("sync", str(cli.taskdefs), check=True)
    assert cli.run("pause", "manual").returncode == 1
    assert cli.run("pause", "nope").returncode == 1
    assert cli.run("run", "nope").returncode == 1
    manual, unknown, unknown_run = audit_rows(cli)
    assert manual[:3] == ("pause", "manual", "refused")
    assert "nothing to pause" in manual[3]
    assert unknown == ("pause", "nope", "refused", "no task named 'nope'")
    assert unknown_run[:3] == ("run", "nope", "refused")
    assert unknown_run[3] == "no task named 'nope' (run `syncd sync` first?)"


def test_an_action_stands_when_its_audit_row_cannot_be_written(cli: Cli) -> None:
    cli.write("a.yaml", TASKS)
    cli.run("sync", str(cli.taskdefs), check=True)
    query(cli, "DROP TABLE audit_log")
    paused = cli.run("pause", "tick", check=True)
    assert "paused tick (was active)" in paused.stdout
    assert "audit entry not written (pause 'tick' by cli:" in paused.stderr
    assert cli.redis().get(f"schedule:status:{config_id(cli, 'tick')}") == "paused"
