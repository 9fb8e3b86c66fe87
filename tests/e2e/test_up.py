"""`syncd up` (what `make run` starts): the bundled taskdefs fire and are recorded, Ctrl-C
or SIGTERM stops every child, and unreachable stores give advice instead of a traceback."""

from __future__ import annotations

import os
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


def descendants(root: int) -> set[int]:
    """Every live process below `root`, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_runs_the_bundled_taskdefs_until_sigterm(cli: Cli, tmp_path: Path) -> None:
    grace = 3.0
    env = dict(cli.env, SYNCD_SHUTDOWN_GRACE_SECONDS=str(grace))
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "up", "taskdefs", "--http-port", str(free_port())],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a shell gives `make run`
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and ("heartbeat", True) not in recorded(cli):
                time.sleep(0.5)
            assert ("heartbeat", True) in recorded(cli), log.read_text()[-3000:]
            processes = descendants(proc.pid)
            # daemon, scheduler, taskiq's main process, its worker, the worker's forkserver
            assert len(processes) >= 5, processes
        finally:
            sent = time.monotonic()
            os.killpg(proc.pid, signal.SIGTERM)
            code = proc.wait(60)
            took = time.monotonic() - sent
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert took <= grace + 2, f"stopping took {took:.1f} s"
    left = {pid for pid in processes if alive(pid)}
    assert not left, f"left running: {left}"
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
