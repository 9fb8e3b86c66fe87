"""`syncd up`: everything on one machine, in the foreground, for a first look or a demo.

Checks that PostgreSQL and Redis answer (and says exactly what to do when they don't),
migrates, then runs the daemon (whose first reconcile syncs the taskdefs), the scheduler,
a worker and the console (`syncd serve`) as child processes with prefixed output until
Ctrl-C. With no API token yet, it makes a first operator token and prints it once.
Production runs these processes separately (README: Deployment); this module only
supervises them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from schemas.text import visible
from syncd.adapters.migrate import migrate
from syncd.adapters.pg import one_off_engine, parse_url
from syncd.adapters.redis import RedisStore
from syncd.adapters.tokens import TokenStore
from syncd.cli.options import load_settings
from syncd.core.errors import StoreUnavailable, SyncdError
from syncd.core.settings import Settings
from worker.runner import die_with_parent

# What `syncd up` allows beyond the worker's shutdown grace before it kills what is left.
STOP_MARGIN_SECONDS = 1.5
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
START_REDIS = "redis-server --daemonize yes --port 6379 --save '' --appendonly no"
FIRST_TOKEN_NAME = "console-operator"  # noqa: S105 - a name, not a secret
TOKEN_COMMAND = "syncd token create NAME --role operator"  # noqa: S105 - advice


def prepare_stores(settings: Settings) -> list[str]:
    """Migrate PostgreSQL and ping Redis; one piece of advice per store that does not answer
    (the store's error on one visible line, then what to do)."""
    advice = []
    try:
        migrate(settings.database_url)
    except StoreUnavailable as exc:
        advice.append(
            f"{visible(str(exc))}\n  start PostgreSQL (e.g. `{START_POSTGRES}`) or set "
            "SYNCD_DATABASE_URL=postgresql+psycopg://USER@HOST:PORT/DB"
        )
    try:
        store = RedisStore.from_url(settings.redis_url, settings.layout)
        store.ping()
        store.close()
    except StoreUnavailable as exc:
        advice.append(
            f"{visible(str(exc))}\n  start Redis (e.g. `{START_REDIS}`) or set "
            "SYNCD_REDIS_URL=redis://HOST:PORT/DB"
        )
    return advice


def processes(taskdefs: str, http_port: int, console_port: int = 0) -> dict[str, list[str]]:
    python = sys.executable
    console = [python, "-m", "syncd.cli", "serve", taskdefs, "--port", str(console_port)]
    return {
        "watch": [python, "-m", "syncd.cli", "watch", taskdefs, "--http-port", str(http_port)],
        "scheduler": [python, "-m", "worker.scheduler"],
        "worker": [python, "-m", "taskiq", "worker", "worker.app:broker", "--workers", "1"],
        **({"console": console} if console_port else {}),
    }


def port_is_free(port: int) -> bool:
    """Whether the console could listen on 127.0.0.1:`port` now (a taken port would end
    the console at once, and with it the whole stack)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def first_token(settings: Settings) -> str:
    """How to log in to the console: a new operator token when none is active (printed
    this once), else how to make one; never an existing token (only hashes are kept)."""
    store = TokenStore(one_off_engine(parse_url(settings.database_url)))
    try:
        if any(token.revoked_at is None for token in store.list()):
            return f"log in with an API token (`{TOKEN_COMMAND}` makes another)"
        token = store.create(FIRST_TOKEN_NAME, "operator")
    except SyncdError as exc:
        return f"no API token yet ({visible(str(exc))}); make one with `{TOKEN_COMMAND}`"
    finally:
        store.close()
    return f"first operator token {FIRST_TOKEN_NAME!r} (shown once; log in with it):\n  {token}"


def _pump(name: str, stream: IO[bytes]) -> None:
    for line in stream:
        sys.stdout.write(f"{name:>9} | {line.decode(errors='replace')}")
        sys.stdout.flush()


def supervise(commands: dict[str, list[str]], grace: float) -> int:
    """Run the commands until Ctrl-C (or SIGTERM) or until one exits; stop the rest cleanly.

    Each child leads its own process group and dies with this process (PR_SET_PDEATHSIG):
    a stop reaches a child only through `_stop`, which forwards it, waits for the worker's
    shutdown grace, then kills whole groups; a SIGKILLed `syncd up` leaves nothing behind.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    children = {
        name: subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - no thread runs before the last Popen
        )
        for name, argv in commands.items()
    }
    for name, child in children.items():
        if child.stdout is not None:
            threading.Thread(target=_pump, args=(name, child.stdout), daemon=True).start()
    try:
        while all(child.poll() is None for child in children.values()):
            time.sleep(0.2)
        exited = [n for n, c in children.items() if c.poll() is not None]
        print(f"{', '.join(exited)} exited; stopping the others", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 0
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the stop short
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stop(children.values(), grace + STOP_MARGIN_SECONDS)
    return code


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop(children: Iterable[subprocess.Popen[bytes]], wait: float) -> None:
    running = [c for c in children if c.poll() is None]
    for child in running:
        child.send_signal(signal.SIGINT)  # every child stops cleanly on it (taskiq workers too)
    deadline = time.monotonic() + wait
    for child in running:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)  # anything a child left in its group


def demo_directory() -> None:
    """The bundled taskdefs work on /tmp/syncd-demo; give them something to look at."""
    root = Path("/tmp/syncd-demo")  # noqa: S108 - a demo playground, named in taskdefs/
    root.mkdir(exist_ok=True)
    sales = root / "sales.csv"
    if not sales.exists():
        sales.write_text("day,amount\nmon,120.5\ntue,98\nwed,143.25\n")


def up(taskdefs: str, http_port: int, console_port: int = 0) -> int:
    settings = load_settings()
    advice = prepare_stores(settings)
    if advice:
        for line in advice:
            print(f"error: {line}", file=sys.stderr)
        return 1
    demo_directory()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(
        f"stores ok; starting daemon, scheduler and worker on {taskdefs} (Ctrl-C stops)",
        file=sys.stderr,
    )
    if console_port and not port_is_free(console_port):
        print(
            f"warning: port {console_port} is taken: no console (`--console-port N` picks another)",
            file=sys.stderr,
        )
        console_port = 0
    if console_port:
        print(f"console: http://127.0.0.1:{console_port}/", file=sys.stderr)
        print(first_token(settings), file=sys.stderr, flush=True)
    commands = processes(taskdefs, http_port, console_port)
    return supervise(commands, settings.shutdown_grace_seconds)


def cmd_up(args: argparse.Namespace) -> int:
    return up(args.dir, args.http_port, args.console_port)
