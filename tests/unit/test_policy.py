"""The operator policy: its file is validated like a taskdef, and taskdefs are checked
against it at file:line:col (paths, egress, limits, the number of tasks)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas.kinds import ConfinedPath, EgressURL, GlobPattern, legacy_ipv4, validation_context
from schemas.policy import DEFAULT_POLICY, Policy
from syncd.core.errors import PolicyError
from syncd.load.loader import load_taskdefs
from syncd.load.policy import load_policy
from tests.conftest import WriteTaskdef
from worker.tasks import registry

TYPES = registry.params_models()


def policy(**sections: Any) -> Policy:
    return Policy.model_validate({"version": 1, **sections})


class Kinds(BaseModel):
    path: ConfinedPath = "/srv/app/x"
    pattern: GlobPattern = "*"
    url: EgressURL | None = None


def check(value: dict[str, Any], with_policy: Policy = DEFAULT_POLICY) -> str:
    """The first error message validating `value`, or '' when it is valid."""
    try:
        Kinds.model_validate(value, context=validation_context(with_policy, "demo.task"))
    except ValidationError as exc:
        return str(exc.errors()[0]["msg"])
    return ""


ROOTED = policy(paths={"allow": ["/srv/app"]})


def test_a_path_must_lie_under_an_allowed_root() -> None:
    assert check({"path": "/srv/app/reports"}, ROOTED) == ""
    assert check({"path": "/srv/app"}, ROOTED) == ""
    assert "'/etc' is outside the allowed roots for demo.task (/srv/app)" in check(
        {"path": "/etc"}, ROOTED
    )
    assert "outside" in check({"path": "/srv/application"}, ROOTED)  # a prefix is no parent
    assert "may not contain '..'" in check({"path": "/srv/app/../etc"}, ROOTED)
    assert "not an absolute path" in check({"path": "srv/app"}, ROOTED)


def test_without_a_policy_no_root_is_allowed_and_the_message_says_how() -> None:
    message = check({"path": "/tmp/x"})
    assert "there is none" in message
    assert "paths.allow" in message
    assert "SYNCD_POLICY" in message


@pytest.mark.parametrize("pattern", ["../victim/*", "/etc/*", "a/../../b"])
def test_a_pattern_cannot_climb_out(pattern: str) -> None:
    assert check({"pattern": pattern}, ROOTED) != ""


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://0x7f.1/hook",
        "http://2130706433/hook",
        "http://[::1]/hook",
        "http://localhost./hook",
        "http://app.localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest",
        "http://0.0.0.0/",
        "http://[::ffff:127.0.0.1]/",
    ],
)
def test_internal_addresses_are_refused_by_default(url: str) -> None:
    assert "allow it with egress.allow" in check({"url": url})


def test_listed_addresses_and_public_hosts_are_allowed() -> None:
    local = policy(egress={"allow": ["127.0.0.1", "10.0.0.0/8", "localhost"]})
    assert check({"url": "http://0x7f.1/hook"}, local) == ""
    assert check({"url": "http://10.9.8.7/hook"}, local) == ""
    assert check({"url": "http://localhost./hook"}, local) == ""
    assert check({"url": "https://hooks.example.com/x"}) == ""
    assert check({"url": "https://93.184.216.34/x"}) == ""


def test_address_rules() -> None:
    local = policy(egress={"allow": ["192.168.0.0/16"]})
    assert local.allows_address(ipaddress.ip_address("192.168.4.4"))
    assert not local.allows_address(ipaddress.ip_address("172.16.0.1"))
    assert not DEFAULT_POLICY.allows_address(ipaddress.ip_address("224.0.0.1"))
    assert DEFAULT_POLICY.allows_address(ipaddress.ip_address("8.8.8.8"))


def test_a_policy_file_is_checked_at_file_line_col(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\npaths:\n  allow: [relative/dir]\negres: {}\n")
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    lines = raised.value.lines()
    assert any(line.startswith(f"{path}:3:") and "not an absolute path" in line for line in lines)
    assert any(line.startswith(f"{path}:4:") and "unknown key 'egres'" in line for line in lines)


def test_a_missing_policy_file_is_an_error_not_the_defaults(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path / "nope.yaml")
    assert load_policy(None) == DEFAULT_POLICY


def messages(root: Path, with_policy: Policy) -> list[str]:
    return [str(p) for p in load_taskdefs(root, TYPES, policy=with_policy).problems]


def test_taskdefs_are_checked_against_the_policy(taskdefs: Path, write: WriteTaskdef) -> None:
    path = write(
        "a.yaml",
        """
        version: 1
        tasks:
          - name: clean
            task_type: cleanup.temp_files
            parameters: {path: /etc, pattern: "../victim/*"}
          - name: often
            task_type: notification.log
            schedule: {interval: 1}
            max_retries: 50
            timeout_seconds: 99999
            parameters: {message: hi}
        """,
    )
    found = messages(taskdefs, ROOTED)
    assert f"{path}:5:" in found[0]
    assert "'/etc' is outside the allowed roots" in found[0]
    assert any("may not contain `..`" in m for m in found)
    assert any(
        f"{path}:8:" in m and "interval 1 s is below the minimum of 30 s" in m for m in found
    )
    assert any(f"{path}:9:" in m and "50 retries; at most 10" in m for m in found)
    assert any(f"{path}:10:" in m and "at most 3600 s" in m for m in found)


def test_max_tasks_counts_every_file(taskdefs: Path, write: WriteTaskdef) -> None:
    for name in ("a", "b"):
        write(
            f"{name}.yaml",
            f"version: 1\ntasks:\n  - {{name: {name}, task_type: notification.log,"
            " parameters: {message: hi}}\n",
        )
    assert messages(taskdefs, policy(limits={"max_tasks": 2})) == []
    (only,) = messages(taskdefs, policy(limits={"max_tasks": 1}))
    assert "2 tasks; the operator policy allows at most 1" in only


def test_parameters_size_is_limited(taskdefs: Path, write: WriteTaskdef) -> None:
    write(
        "a.yaml",
        "version: 1\ntasks:\n  - {name: a, task_type: notification.log,"
        f" parameters: {{message: {'x' * 200}}}}}\n",
    )
    (only,) = messages(taskdefs, policy(limits={"max_parameters_bytes": 100}))
    assert "as JSON; at most 100" in only


@given(st.text(alphabet="0123456789abcdefxX.", max_size=24))
def test_legacy_ipv4_forms_parse_as_the_c_resolver_does(text: str) -> None:
    try:
        expected: ipaddress.IPv4Address | None = ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        expected = None
    assert legacy_ipv4(text) == expected
