"""The worker side end to end: real `taskiq worker` and `python -m worker.scheduler`
processes against real Redis and PostgreSQL, fed by `syncd sync`, recording every attempt in
task_executions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tests.e2e.conftest import REPO, Cli
from worker.delivery import Tally

Rows = list[tuple[str | None, int, bool, str | None]]


@contextmanager
def process(
    cli: Cli, *args: str, log: Path, module: str = "taskiq"
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m module args` (taskiq unless told) with this test's settings; stopped with
    SIGINT (clean) at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO,
            env=cli.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so a hung stop can take the worker's children too
        )
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def worker(cli: Cli, log: Path) -> contextmanager[subprocess.Popen[bytes]]:  # type: ignore[type-arg]
    return process(cli, "worker", "worker.app:broker", "--workers", "1", log=log)


def scheduler(cli: Cli, log: Path) -> contextmanager[subprocess.Popen[bytes]]:  # type: ignore[type-arg]
    return process(cli, log=log, module="worker.scheduler")


def executions(cli: Cli) -> Rows:
    url = cli.env["SYNCD_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT c.name, e.attempt, e.is_success, e.error_message FROM task_executions e "
            "LEFT JOIN task_configs c ON c.id = e.config_id ORDER BY e.completed_at, e.attempt"
        ).fetchall()


def wait_for(
    check: Callable[[], bool], timeout: float, what: str, seen: Callable[[], object] = lambda: None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; saw {seen()}")


def ticker(interval: int) -> str:
    return (
        "version: 1\ntasks:\n"
        f"  - {{name: tick, task_type: diagnostics.noop, schedule: {{interval: {interval}}}}}\n"
    )


def of(rows: Rows, name: str) -> Rows:
    return [r for r in rows if r[0] == name]


def test_outcomes_are_recorded_one_row_per_attempt(cli: Cli, tmp_path: Path) -> None:
    counter = tmp_path / "flaky-count"
    cli.write(
        "a.yaml",
        f"""
        version: 1
        tasks:
          - name: tick
            task_type: diagnostics.noop
            schedule: {{interval: 1}}
          - name: flaky
            task_type: diagnostics.flaky
            parameters: {{counter_file: "{counter}", failures: 2}}
            max_retries: 3
          - name: broken
            task_type: diagnostics.fail
            parameters: {{message: always}}
            max_retries: 2
          - name: slow
            task_type: diagnostics.sleep
            parameters: {{seconds: 30}}
            timeout_seconds: 1
        """,
    )
    cli.run("sync", str(cli.taskdefs), check=True)
    with worker(cli, tmp_path / "worker.log"), scheduler(cli, tmp_path / "scheduler.log"):
        for name in ("flaky", "broken", "slow"):
            cli.run("run", name, check=True)
        wanted = {"tick": 3, "slow": 1, "flaky": 3, "broken": 3}
        wait_for(
            lambda: all(len(of(executions(cli), n)) >= k for n, k in wanted.items()),
            60,
            "all executions recorded",
            lambda: executions(cli),
        )
        time.sleep(2)  # no more attempts may follow
    rows = executions(cli)
    assert [(a, ok) for _, a, ok, _ in of(rows, "flaky")] == [(1, False), (2, False), (3, True)]
    assert [(a, ok) for _, a, ok, _ in of(rows, "broken")] == [(1, False), (2, False), (3, False)]
    assert all("always" in (err or "") for *_, err in of(rows, "broken"))
    ((_, attempt, ok, error),) = of(rows, "slow")
    assert (attempt, ok) == (1, False)
    assert "timed out after 1" in (error or "")
    assert all(ok for _, _, ok, _ in of(rows, "tick"))


def test_pause_stops_executions_and_interval_edit_changes_cadence(cli: Cli, tmp_path: Path) -> None:
    cli.write(
        "a.yaml",
        ticker(5),
    )
    cli.run("sync", str(cli.taskdefs), check=True)
    with worker(cli, tmp_path / "worker.log"), scheduler(cli, tmp_path / "scheduler.log"):
        wait_for(lambda: len(executions(cli)) >= 1, 30, "the first run")
        cli.write(
            "a.yaml",
            ticker(1),
        )
        cli.run("sync", str(cli.taskdefs), check=True)
        start = len(executions(cli))
        # At 1 s the next 4 runs come well before the old 5 s cadence could give them.
        wait_for(lambda: len(executions(cli)) >= start + 4, 8, "the new 1 s cadence")
        cli.run("pause", "tick", check=True)
        time.sleep(1.5)  # a run already sent may still finish
        paused_at = len(executions(cli))
        time.sleep(4)
        assert len(executions(cli)) == paused_at


def test_two_schedulers_never_send_a_fire_twice(cli: Cli, tmp_path: Path) -> None:
    cli.write(
        "a.yaml",
        ticker(2),
    )
    cli.run("sync", str(cli.taskdefs), check=True)
    with (
        worker(cli, tmp_path / "worker.log"),
        scheduler(cli, tmp_path / "s1.log"),
        scheduler(cli, tmp_path / "s2.log"),
    ):
        time.sleep(11)
    times = executions(cli)
    # 11 s at one fire per 2 s: about 5-6 runs; twice that if both schedulers sent.
    assert 3 <= len(times) <= 7, times
    tallies = [Tally.summed((tmp_path / f"s{i}.log").read_text()) for i in (1, 2)]
    due = sum(t.due for t in tallies)
    sent = sum(t.sent for t in tallies)
    assert due >= len(times)  # both tried; the claim let only one through each time
    assert sent >= len(times)  # every run was sent by one of them ...
    assert due == sent + sum(t.taken for t in tallies)  # ... each other fire was taken
    assert sum(t.failed + t.not_active for t in tallies) == 0


def test_recorder_loses_nothing_when_postgres_connections_are_killed(
    cli: Cli, tmp_path: Path
) -> None:
    cli.write("a.yaml", "version: 1\ntasks:\n  - {name: tick, task_type: diagnostics.noop}\n")
    cli.run("sync", str(cli.taskdefs), check=True)
    url = cli.env["SYNCD_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
    with worker(cli, tmp_path / "worker.log"):
        for round_ in range(5):
            for _ in range(5):
                cli.run("run", "tick", check=True)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            time.sleep(0.3 * round_)
        wait_for(lambda: len(executions(cli)) >= 25, 60, "25 records")
    assert len(executions(cli)) == 25
    assert os.path.exists(tmp_path / "worker.log")
