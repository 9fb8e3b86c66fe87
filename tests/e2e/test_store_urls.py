"""Malformed store URLs through the real `syncd` command: one `error:` line, exit 1, no
traceback, and no piece of the password anywhere — not in the CLI's line, not in the
daemon's log, not in its /healthz."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, Cli
from tests.e2e.test_sync_cli import taskfile
from tests.e2e.test_watch import wait_for, watching
from tests.services import store_env
from tests.unit.test_database_url import assert_hidden

PG_FORM = "expected postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/DBNAME"
REDIS_FORM = "expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]"

# (URL, its password, how the one error line starts)
BAD_DATABASE_URLS = [
    (
        "postgresql+psycopg://postgres:Hunter@2secret@127.0.0.1/db",
        "Hunter@2secret",
        "error: invalid database URL postgresql+psycopg://***@127.0.0.1/db: the password "
        "seems to contain an unencoded '@': percent-encode it as %40",
    ),
    (
        "postgresql+psycopg://postgres:pa@ss:w0rd@127.0.0.1/db",
        "pa@ss:w0rd",
        "error: invalid database URL postgresql+psycopg://***@127.0.0.1/db: the password "
        "seems to contain an unencoded '@': percent-encode it as %40",
    ),
    (
        "postgresql+psycopg://postgres:s3cr3tpw@127.0.0.1:abc/db",
        "s3cr3tpw",
        "error: invalid database URL: the port 'abc' is not a number",
    ),
    (
        "postgres://postgres:s3cr3tpw@127.0.0.1/db?password=an0th3r@s3cr3t",
        "an0th3r@s3cr3t",
        "error: invalid database URL postgresql+psycopg://***@: the password seems to contain",
    ),
    (
        "mysql://postgres:s3cr3tpw@127.0.0.1/db",
        "s3cr3tpw",
        "error: unsupported database URL mysql://***@127.0.0.1/db",
    ),
]
BAD_REDIS_URLS = [
    (
        "redis://:s3cr3tpw@127.0.0.1:abc/0",
        "s3cr3tpw",
        "error: invalid Redis URL: the port 'abc' is not a number",
    ),
    (
        "redis://:s3cr/3tpw@127.0.0.1:6379/0",
        "s3cr/3tpw",
        "error: invalid Redis URL redis://***: an '@' follows the host",
    ),
    (
        "redis://:s3cr[3tpw@127.0.0.1:6379/0",
        "s3cr[3tpw",
        "error: invalid Redis URL redis://127.0.0.1:6379/0: redis-py cannot use it",
    ),
    (
        "http://:s3cr3tpw@127.0.0.1:6379/0",
        "s3cr3tpw",
        "error: invalid Redis URL: it does not start with redis://, rediss:// or unix://",
    ),
]


@pytest.fixture
def taskdefs(tmp_path: Path) -> Path:
    root = tmp_path / "taskdefs"
    root.mkdir()
    (root / "a.yaml").write_text(taskfile({"name": "a"}))
    return root


def cli_with(database_url: str, redis_url: str, taskdefs: Path) -> Cli:
    return Cli(store_env(database_url, redis_url), taskdefs, redis_url)


def assert_one_error_line(cli: Cli, args: list[str], password: str, start: str) -> str:
    """The error line, checked: alone, from a clean exit 1, with no piece of `password`."""
    proc = cli.run(*args)  # Cli.run fails on a traceback

    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.rstrip("\n")], proc.stderr
    assert proc.stderr.startswith(start), proc.stderr
    assert "internal error" not in proc.stderr
    assert_hidden(proc.stdout + proc.stderr, password)
    return proc.stderr.rstrip("\n")


@pytest.mark.parametrize(("url", "password", "start"), BAD_DATABASE_URLS)
def test_a_bad_database_url_is_one_clean_error(
    url: str, password: str, start: str, redis_url: str, taskdefs: Path
) -> None:
    cli = cli_with(url, redis_url, taskdefs)

    line = assert_one_error_line(cli, ["sync", str(taskdefs)], password, start)

    assert line.endswith(PG_FORM)


@pytest.mark.parametrize(
    "args", [["migrate"], ["status", "{taskdefs}/"], ["history"], ["pause", "a"]]
)
def test_every_command_that_uses_postgresql_says_the_same(
    args: list[str], redis_url: str, taskdefs: Path
) -> None:
    url, password, start = BAD_DATABASE_URLS[0]
    cli = cli_with(url, redis_url, taskdefs)

    assert_one_error_line(cli, [a.format(taskdefs=taskdefs) for a in args], password, start)


def test_the_flag_is_checked_like_the_environment(
    database_url: str, redis_url: str, taskdefs: Path
) -> None:
    url, password, start = BAD_DATABASE_URLS[0]
    cli = cli_with(database_url, redis_url, taskdefs)

    assert_one_error_line(cli, ["plan", str(taskdefs), "--database-url", url], password, start)


@pytest.mark.parametrize(("url", "password", "start"), BAD_REDIS_URLS)
def test_a_bad_redis_url_is_one_clean_error(
    url: str, password: str, start: str, database_url: str, taskdefs: Path
) -> None:
    cli = cli_with(database_url, url, taskdefs)

    line = assert_one_error_line(cli, ["sync", str(taskdefs)], password, start)

    assert line.endswith(REDIS_FORM)


@pytest.mark.parametrize("args", [["pause", "a"], ["watch", "{taskdefs}"]])
def test_every_command_that_uses_redis_says_the_same(
    args: list[str], database_url: str, taskdefs: Path
) -> None:
    url, password, start = BAD_REDIS_URLS[0]
    cli = cli_with(database_url, url, taskdefs)

    assert_one_error_line(cli, [a.format(taskdefs=taskdefs) for a in args], password, start)


def test_the_daemon_reports_a_bad_database_url_without_the_password(
    redis_url: str, taskdefs: Path
) -> None:
    url, password, start = BAD_DATABASE_URLS[0]
    cli = cli_with(url, redis_url, taskdefs)
    reason = "last reconcile error: store_unavailable: " + start.removeprefix("error: ")

    with watching(cli) as watcher:

        def refused() -> bool:
            return "invalid" in watcher.health()[1].get("reason", "")

        wait_for(refused, 30, "the first reconcile to fail")
        status, body = watcher.health()
        assert watcher.stop() == 0

    assert status == 503
    assert body["reason"].startswith(reason), body
    assert f"reconcile failed: {start.removeprefix('error: ')}" in watcher.log()
    assert "Traceback" not in watcher.log()
    assert_hidden(str(body) + watcher.log(), password)


@pytest.mark.parametrize("command", [("status",), ("validate",)])
def test_a_bad_setting_is_one_line_that_never_echoes_its_value(
    cli: Cli, command: tuple[str, ...]
) -> None:
    env = {
        **cli.env,
        "SYNCD_MAX_DELETES": "abc-hunter2",
        "SYNCD_WORKER_CONCURRENCY": "9\n::error file=a.yaml::forged",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "syncd.cli", *command]
        + ([str(cli.taskdefs)] if command == ("validate",) else []),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: invalid settings: ")
    assert "SYNCD_MAX_DELETES" in line
    assert "SYNCD_WORKER_CONCURRENCY" in line
    assert "hunter2" not in line
    assert "forged" not in line
