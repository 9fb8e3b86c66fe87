"""`syncd up` (what `make run` starts): the bundled taskdefs fire and are recorded, Ctrl-C
or SIGTERM stops every child, and unreachable stores give advice instead of a traceback."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from tests.e2e.conftest import REPO, Cli


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def recorded(cli: Cli) -> list[tuple[str, bool]]:
    url = cli.env["SYNCD_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT c.name, e.is_success FROM task_executions e JOIN task_configs c "
            "ON c.id = e.config_id"
        ).fetchall()


def test_up_runs_the_bundled_taskdefs_until_sigterm(cli: Cli, tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "up", "taskdefs", "--http-port", str(free_port())],
            cwd=REPO,
            env=cli.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and ("heartbeat", True) not in recorded(cli):
                time.sleep(0.5)
            assert ("heartbeat", True) in recorded(cli), log.read_text()[-3000:]
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text
    for name in ("watch", "scheduler", "worker"):
        assert f"{name:>9} | " in text


def test_up_explains_what_to_do_when_a_store_is_down(cli: Cli) -> None:
    env = dict(cli.env, SYNCD_REDIS_URL="redis://127.0.0.1:1/0")
    proc = subprocess.run(
        [sys.executable, "-m", "syncd.cli", "up", "taskdefs"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "start Redis" in proc.stderr
    assert "SYNCD_REDIS_URL" in proc.stderr
    assert "Traceback" not in proc.stderr
