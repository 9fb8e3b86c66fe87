"""`syncd token create / list / revoke` end to end: what is printed where, and exit codes."""

from __future__ import annotations

import json
import re

from syncd.adapters.tokens import TokenStore
from tests.e2e.conftest import Cli

TOKEN_LINE = re.compile(r"syncd_[A-Za-z0-9_-]{43}\n")
COLUMNS = re.compile(r"\s{2,}")


def create(cli: Cli, name: str, role: str = "viewer") -> str:
    proc = cli.run("token", "create", name, "--role", role, check=True)
    assert TOKEN_LINE.fullmatch(proc.stdout), proc.stdout  # the token alone, for scripts
    assert "store it now: it is not shown again" in proc.stderr
    assert proc.stdout.strip() not in proc.stderr
    return proc.stdout.strip()


def test_a_created_token_is_printed_once_and_verifies(cli: Cli) -> None:
    token = create(cli, "ci-bot", "operator")
    store = TokenStore.from_url(cli.env["SYNCD_DATABASE_URL"])
    try:
        found = store.verify(token)
    finally:
        store.close()
    assert found is not None
    assert (found.name, found.role) == ("ci-bot", "operator")
    for output in ("text", "json"):
        listed = cli.run("token", "list", "--format", output, check=True).stdout
        assert "ci-bot" in listed
        assert token.removeprefix("syncd_") not in listed


def test_list_as_a_table_and_as_json(cli: Cli) -> None:
    assert cli.run("token", "list", check=True).stdout == "No tokens.\n"
    assert json.loads(cli.run("token", "list", "--format", "json", check=True).stdout) == []
    create(cli, "viewer-1")
    create(cli, "ops", "operator")
    lines = cli.run("token", "list", check=True).stdout.splitlines()
    header, first, second = (COLUMNS.split(line) for line in lines)
    assert header == ["NAME", "ROLE", "CREATED (UTC)", "LAST USED (UTC)", "REVOKED (UTC)"]
    assert first[:2] == ["ops", "operator"]
    assert second[:2] == ["viewer-1", "viewer"]
    assert first[3:] == ["—", "—"]  # never used, not revoked
    listed = json.loads(cli.run("token", "list", "--format", "json", check=True).stdout)
    assert [t["name"] for t in listed] == ["ops", "viewer-1"]
    assert set(listed[0]) == {"name", "role", "created_at", "last_used_at", "revoked_at"}
    assert listed[0]["created_at"].endswith("+00:00")
    assert (listed[0]["last_used_at"], listed[0]["revoked_at"]) == (None, None)


def test_revoke_and_names_that_stay_taken(cli: Cli) -> None:
    create(cli, "deploy")
    duplicate = cli.run("token", "create", "deploy", "--role", "operator")
    assert (duplicate.returncode, duplicate.stdout) == (1, "")
    assert "a token named 'deploy' already exists" in duplicate.stderr
    revoked = cli.run("token", "revoke", "deploy", check=True)
    assert revoked.stdout == "revoked token deploy\n"
    (listed,) = json.loads(cli.run("token", "list", "--format", "json", check=True).stdout)
    assert listed["revoked_at"] is not None
    again = cli.run("token", "revoke", "deploy")
    assert again.returncode == 1
    assert again.stderr == "error: no active token named 'deploy' (`syncd token list`)\n"
    reused = cli.run("token", "create", "deploy", "--role", "viewer")
    assert (reused.returncode, reused.stdout) == (1, "")
    assert "revoked names stay taken" in reused.stderr


def test_bad_names_and_roles_are_one_line_usage_errors(cli: Cli) -> None:
    for name in ("has space", "-dash", "x" * 101, "tab\there", "a/b"):
        proc = cli.run("token", "create", "--role", "viewer", "--", name)
        assert (proc.returncode, proc.stdout) == (2, ""), name
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("error: invalid token name"), proc.stderr
    assert "\t" not in cli.run("token", "create", "tab\there", "--role", "viewer").stderr
    assert cli.run("token", "create", "no-role").returncode == 2
    assert cli.run("token", "create", "root", "--role", "admin").returncode == 2
    assert cli.run("token", "revoke", "ghost").returncode == 1
    assert json.loads(cli.run("token", "list", "--format", "json", check=True).stdout) == []
