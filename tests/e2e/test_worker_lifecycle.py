"""A worker's life with real `taskiq worker` processes: it stops cleanly within its grace,
hands back what it could not finish, and a message that keeps killing its worker is
dead-lettered instead of looping forever."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path

import psycopg

from tests.e2e.conftest import Cli
from tests.e2e.test_worker import executions, wait_for, worker


def busy_task(seconds: float) -> str:
    return (
        "version: 1\ntasks:\n"
        "  - {name: long, task_type: diagnostics.busy, timeout_seconds: 60,"
        f" parameters: {{seconds: {seconds}}}}}\n"
    )


def started(log: Path, task_type: str) -> bool:
    return f"Executing task {task_type}" in log.read_text(errors="replace")


def listening(log: Path) -> bool:
    return "Listening started" in log.read_text(errors="replace")


def test_sigterm_hands_a_long_attempt_to_the_next_worker(cli: Cli, tmp_path: Path) -> None:
    grace = 2.0
    cli.env["SYNCD_SHUTDOWN_GRACE_SECONDS"] = str(grace)
    cli.write("a.yaml", busy_task(4))
    cli.run("sync", str(cli.taskdefs), check=True)
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    with worker(cli, first) as proc:
        wait_for(lambda: listening(first), 20, "the first worker to listen")
        cli.run("run", "long", check=True)
        wait_for(lambda: started(first, "diagnostics.busy"), 20, "the attempt to start")
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)  # the whole group, as systemd or Docker would
        code = proc.wait(grace + 10)
        took = time.monotonic() - sent
    text = first.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert took <= grace + 2, f"the worker took {took:.1f} s to stop"
    assert "handed back 1 unfinished message" in text, text[-3000:]
    assert executions(cli) == []  # the stopped attempt has no outcome

    with worker(cli, second):
        wait_for(lambda: len(executions(cli)) >= 1, 30, "the attempt to run again")
        time.sleep(1.0)  # no second record may follow
        rows = executions(cli)
    assert rows == [("long", 1, True, None)]
    assert started(second, "diagnostics.busy")


def test_an_attempt_that_finishes_within_the_grace_is_recorded(cli: Cli, tmp_path: Path) -> None:
    cli.env["SYNCD_SHUTDOWN_GRACE_SECONDS"] = "10"
    cli.write("a.yaml", busy_task(1.5))
    cli.run("sync", str(cli.taskdefs), check=True)
    log = tmp_path / "worker.log"
    with worker(cli, log) as proc:
        wait_for(lambda: listening(log), 20, "the worker to listen")
        cli.run("run", "long", check=True)
        wait_for(lambda: started(log, "diagnostics.busy"), 20, "the attempt to start")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0
    assert executions(cli) == [("long", 1, True, None)]
    assert "handed back" not in log.read_text(errors="replace")


def test_a_message_that_kills_its_process_is_dead_lettered(cli: Cli, tmp_path: Path) -> None:
    cli.env["SYNCD_MAX_DELIVERIES"] = "2"
    cli.write(
        "a.yaml",
        """
        version: 1
        tasks:
          - {name: crash, task_type: diagnostics.exit, max_retries: 3, parameters: {code: 9}}
          - {name: after, task_type: diagnostics.busy, parameters: {seconds: 0}}
        """,
    )
    cli.run("sync", str(cli.taskdefs), check=True)
    log = tmp_path / "worker.log"
    with worker(cli, log) as proc:
        cli.run("run", "crash", check=True)
        wait_for(lambda: len(executions(cli)) >= 1, 30, "the dead letter", lambda: executions(cli))
        cli.run("run", "after", check=True)
        wait_for(lambda: len(executions(cli)) >= 2, 30, "the next task", lambda: executions(cli))
        time.sleep(1.5)  # it must not be delivered again
        rows = executions(cli)
        assert proc.poll() is None  # the worker lives on
    text = log.read_text(errors="replace")
    # Dead-lettered means failed for good: no retry, whatever max_retries says.
    assert rows == [
        ("crash", 1, False, "DeadLettered: worker died 2 times running it"),
        ("after", 1, True, None),
    ], text[-3000:]
    assert text.count("delivering it again") == 2


def test_a_message_whose_worker_was_killed_is_claimed_and_counted(cli: Cli, tmp_path: Path) -> None:
    cli.env["SYNCD_IDLE_TIMEOUT_SECONDS"] = "10"
    cli.env["SYNCD_MAX_DELIVERIES"] = "1"
    cli.write("a.yaml", busy_task(30))
    cli.run("sync", str(cli.taskdefs), check=True)
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    with worker(cli, first) as proc:
        cli.run("run", "long", check=True)
        wait_for(lambda: started(first, "diagnostics.busy"), 20, "the attempt to start")
        os.killpg(proc.pid, signal.SIGKILL)  # the worker dies: no hand-back, no record
        proc.wait(10)
    killed = time.monotonic()
    with worker(cli, second):
        wait_for(lambda: len(executions(cli)) >= 1, 40, "the claimed message", lambda: ())
        waited = time.monotonic() - killed
        rows = executions(cli)
    assert rows == [("long", 1, False, "DeadLettered: worker died 1 time running it")]
    assert waited >= 9, "claimed before the idle timeout"
    assert "its worker died (1 delivery(ies) without an outcome)" in second.read_text()


def attempt_times(cli: Cli) -> list[tuple[int, bool, datetime, datetime]]:
    url = cli.env["SYNCD_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT attempt, is_success, started_at, completed_at FROM task_executions"
            " ORDER BY attempt"
        ).fetchall()


def test_retries_wait_longer_each_time_within_the_jitter(cli: Cli, tmp_path: Path) -> None:
    cli.write(
        "a.yaml",
        """
        version: 1
        tasks:
          - name: flaky
            task_type: diagnostics.fail
            max_retries: 3
            retry_backoff_seconds: 1
            retry_backoff_max_seconds: 4
        """,
    )
    cli.run("sync", str(cli.taskdefs), check=True)
    with worker(cli, tmp_path / "worker.log"):
        cli.run("run", "flaky", check=True)
        wait_for(lambda: len(attempt_times(cli)) >= 4, 30, "four attempts", lambda: ())
        time.sleep(1.0)
        rows = attempt_times(cli)
    assert [(n, ok) for n, ok, _, _ in rows] == [(1, False), (2, False), (3, False), (4, False)]
    gaps = [(rows[i + 1][2] - rows[i][3]).total_seconds() for i in range(3)]
    # Steps 1, 2, 4 s, each jittered into [half, full]; a due retry is moved within 0.5 s.
    for gap, step in zip(gaps, (1.0, 2.0, 4.0), strict=True):
        assert step / 2 - 0.05 <= gap <= step + 0.8, gaps
    assert gaps[0] < gaps[2], gaps


def test_a_waiting_retry_survives_a_worker_restart(cli: Cli, tmp_path: Path) -> None:
    cli.write(
        "a.yaml",
        """
        version: 1
        tasks:
          - {name: flaky, task_type: diagnostics.fail, max_retries: 1,
             retry_backoff_seconds: 4, retry_backoff_max_seconds: 4}
        """,
    )
    cli.run("sync", str(cli.taskdefs), check=True)
    with worker(cli, tmp_path / "first.log"):
        cli.run("run", "flaky", check=True)
        wait_for(lambda: len(attempt_times(cli)) >= 1, 30, "the first attempt", lambda: ())
    # No worker runs now: the retry waits in Redis.
    waiting = cli.redis().zcard("syncd-queue:default:delayed")
    with worker(cli, tmp_path / "second.log"):
        wait_for(lambda: len(attempt_times(cli)) >= 2, 30, "the retry", lambda: ())
        rows = attempt_times(cli)
    assert waiting == 1
    assert [(n, ok) for n, ok, _, _ in rows] == [(1, False), (2, False)]
    gap = (rows[1][2] - rows[0][3]).total_seconds()
    assert 2 - 0.05 <= gap <= 4 + 0.8
