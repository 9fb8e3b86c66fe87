"""Operator commands end to end: pause / resume (Redis status only, kept by sync) and run
(enqueues one message with the task's configured labels and parameters)."""

from __future__ import annotations

import json

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


def config_id(cli: Cli, name: str) -> int:
    url = cli.env["SYNCD_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT id FROM task_configs WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


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
