"""Every blocking attempt is bounded: a real `taskiq worker` against a tarpit and an endless line.

A slow remote (an HTTP server that answers one byte at a time, forever) must cost only
its own attempts: each is stopped at its deadline, its connection closed, and a task of
another type sent after them still starts at once. An attempt that allocates without
bound fails with a memory error; the worker lives on and runs the next task.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from tests.e2e.conftest import Cli
from tests.e2e.test_worker import wait_for, worker
from tests.integration.test_runner import endless_line

DRIP_SECONDS = 0.2  # a byte this often: far under any socket timeout, and a closed
# socket is seen within 0.2 s
TARPIT_LIFETIME = 40.0  # the server gives up by itself after this long


@dataclass
class Tarpit:
    """Accepts connections and drips a never-ending HTTP response; notes each one's life."""

    server: socket.socket
    lives: list[tuple[float, float]] = field(default_factory=list)  # (opened, closed)
    open_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"

    def serve(self, stop: threading.Event) -> None:
        self.server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._drip, args=(conn, stop), daemon=True).start()

    def _drip(self, conn: socket.socket, stop: threading.Event) -> None:
        opened = time.monotonic()
        with self.lock:
            self.open_count += 1
        try:
            # Byte by byte, status line included: a per-socket timeout never fires.
            response = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
            for byte in response:
                if stop.is_set() or time.monotonic() - opened > TARPIT_LIFETIME:
                    break
                conn.sendall(bytes([byte]))
                time.sleep(DRIP_SECONDS)
        except OSError:
            pass  # the client went away: that is what we measure
        finally:
            conn.close()
            with self.lock:
                self.lives.append((opened, time.monotonic()))


@contextmanager
def tarpit() -> Iterator[Tarpit]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(32)
    pit = Tarpit(server)
    stop = threading.Event()
    thread = threading.Thread(target=pit.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        yield pit
    finally:
        stop.set()
        thread.join(5)
        server.close()


Row = tuple[str | None, int, bool, str | None, datetime, datetime]


def executions(cli: Cli) -> list[Row]:
    url = cli.env["SYNCD_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT c.name, e.attempt, e.is_success, e.error_message, e.started_at, "
            "e.completed_at FROM task_executions e LEFT JOIN task_configs c "
            "ON c.id = e.config_id ORDER BY e.completed_at"
        ).fetchall()


def test_a_tarpit_costs_only_its_own_attempts(cli: Cli, tmp_path: Path) -> None:
    clean_me = tmp_path / "clean-me"
    clean_me.mkdir()
    with tarpit() as pit:
        hooks = "".join(
            f"  - {{name: hook-{i}, task_type: notification.webhook, timeout_seconds: 3,"
            f" parameters: {{url: '{pit.url}', timeout_seconds: 30}}}}\n"
            for i in range(7)
        )
        cli.write(
            "a.yaml",
            "version: 1\ntasks:\n" + hooks + f"  - {{name: cleanup, task_type: cleanup.temp_files,"
            f" parameters: {{path: '{clean_me}', dry_run: true}}}}\n",
        )
        cli.run("sync", str(cli.taskdefs), check=True)
        with worker(cli, tmp_path / "worker.log") as proc:
            for i in range(7):
                cli.run("run", f"hook-{i}", check=True)
            wait_for(lambda: pit.open_count >= 2, 20, "the first webhooks to connect")
            cli.run("run", "cleanup", check=True)
            sent = datetime.now(UTC)  # `syncd run` returns once the message is on the stream
            wait_for(
                lambda: len(executions(cli)) >= 8,
                30,
                "every attempt recorded",
                lambda: executions(cli),
            )
            time.sleep(1.0)  # no second record of any attempt may follow
            rows = executions(cli)
            assert proc.poll() is None  # the worker is alive
        wait_for(lambda: len(pit.lives) >= pit.open_count, 10, "every connection closed")

    cleanup = [r for r in rows if r[0] == "cleanup"]
    assert [(ok, error) for _, _, ok, error, _, _ in cleanup] == [(True, None)]
    started_after = (cleanup[0][4] - sent).total_seconds()
    assert started_after < 1.0, f"the cleanup started {started_after:.2f} s after it was sent"
    hooks_rows = [r for r in rows if r[0] and r[0].startswith("hook-")]
    assert sorted(r[0] for r in hooks_rows) == [f"hook-{i}" for i in range(7)]  # once each
    outcomes = [(ok, err) for _, _, ok, err, _, _ in hooks_rows]
    assert all(not ok and "timed out after 3 s" in (err or "") for ok, err in outcomes), outcomes
    longest = max(closed - opened for opened, closed in pit.lives)
    assert longest <= 3 + 2, f"a connection outlived its 3 s deadline: {longest:.1f} s"
    history = cli.run("history", "hook-0", check=True).stdout.splitlines()
    assert history[1].split()[4] == "TIMEOUT"


def test_an_attempt_over_its_memory_limit_fails_and_the_worker_lives_on(
    cli: Cli, tmp_path: Path
) -> None:
    clean_me = tmp_path / "clean-me"
    clean_me.mkdir()
    cli.write(
        "a.yaml",
        f"""
        version: 1
        tasks:
          - name: hog
            task_type: data.csv_summary
            parameters: {{source: "{endless_line(tmp_path)}", column: amount}}
          - name: after
            task_type: cleanup.temp_files
            parameters: {{path: "{clean_me}", dry_run: true}}
        """,
    )
    cli.run("sync", str(cli.taskdefs), check=True)
    cli.env["SYNCD_TASK_MEMORY_MB"] = "256"
    with worker(cli, tmp_path / "worker.log") as proc:
        cli.run("run", "hog", check=True)
        wait_for(lambda: len(executions(cli)) >= 1, 30, "the hog's record")
        cli.run("run", "after", check=True)
        wait_for(lambda: len(executions(cli)) >= 2, 30, "the next task's record")
        assert proc.poll() is None
    rows = {name: (ok, error) for name, _, ok, error, _, _ in executions(cli)}
    assert rows["hog"] == (False, "MemoryLimitExceeded: exceeded its memory limit of 256 MiB")
    assert rows["after"] == (True, None)
    status = cli.run("status", "hog", str(cli.taskdefs), check=True).stdout
    assert "MEMORY" in status
