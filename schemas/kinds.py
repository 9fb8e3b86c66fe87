"""Parameter kinds the policy knows: declare a parameter as one and it is confined.

A task's parameter model types a field `ConfinedPath` (a file or directory under the
policy's allowed roots), `GlobPattern` (a relative pattern that cannot climb out of its
directory) or `EgressURL` (an http(s) URL a webhook may reach). The checks run wherever the
model validates: `syncd validate` / `plan` (with the operator policy in the validation
context) and the worker before each attempt (with its own policy). Without a policy in
the context the defaults hold: no root is allowed, only public addresses.

What a string cannot prove (symlinks on disk, what a host name resolves to) is checked
again where the worker opens or connects: see worker/confine.py and worker/egress.py.
"""

from __future__ import annotations

import ipaddress
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import AfterValidator, AnyHttpUrl, Field, ValidationInfo

from schemas.policy import DEFAULT_POLICY, IpAddress, Policy
from schemas.text import PATH_LIMIT, quoted

POLICY_HINT = "allow one with paths.allow in the operator policy file (SYNCD_POLICY)"


def policy_of(info: ValidationInfo) -> Policy:
    """The policy in the validation context, or the safe default."""
    context = info.context if isinstance(info.context, dict) else {}
    policy = context.get("policy")
    return policy if isinstance(policy, Policy) else DEFAULT_POLICY


def _for_task(info: ValidationInfo) -> str:
    context = info.context if isinstance(info.context, dict) else {}
    task_type = context.get("task_type")
    return f" for {task_type}" if isinstance(task_type, str) else ""


def _confined_path(value: str, info: ValidationInfo) -> str:
    path = PurePosixPath(value)
    if "\x00" in value:
        raise ValueError("a path may not contain NUL")
    if not path.is_absolute():
        raise ValueError(f"{quoted(value, PATH_LIMIT)} is not an absolute path")
    if ".." in path.parts:
        raise ValueError(f"{quoted(value, PATH_LIMIT)} may not contain '..'")
    policy = policy_of(info)
    if policy.allows_root(str(path)) is None:
        roots = ", ".join(policy.paths.allow)
        why = f" ({roots})" if roots else f": there is none; {POLICY_HINT}"
        shown = quoted(str(path), PATH_LIMIT)
        raise ValueError(f"{shown} is outside the allowed roots{_for_task(info)}{why}")
    return str(path)


def _glob_pattern(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a pattern may not contain NUL")
    if value.startswith("/"):
        raise ValueError("`pattern` must be relative to the directory it searches")
    if ".." in PurePosixPath(value).parts:
        raise ValueError("`pattern` may not contain `..`")
    return value


def literal_address(host: str) -> IpAddress | None:
    """The address a URL host names literally, in any form a resolver accepts (`0x7f.1`,
    `2130706433`, `[::1]`), or None for a host name."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    return legacy_ipv4(bare)


def legacy_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address `text` names in the forms inet_aton(3) accepts: one to four parts,
    each decimal, octal (`017`) or hex (`0x7f`), the last filling the remaining bytes."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = [_c_number(part) for part in parts]
    if any(n is None for n in numbers):
        return None
    *leading, last = [n for n in numbers if n is not None]
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(parts)):
        return None
    value = 0
    for number in leading:
        value = value * 256 + number
    return ipaddress.IPv4Address((value << (8 * (5 - len(parts)))) + last)


def _c_number(part: str) -> int | None:
    try:
        if part[:2].lower() == "0x":
            return int(part[2:], 16) if part[2:] else None
        if len(part) > 1 and part.startswith("0"):
            return int(part, 8)
        return int(part, 10) if part.isascii() and part.isdigit() else None
    except ValueError:
        return None


def _egress_url(url: AnyHttpUrl, info: ValidationInfo) -> AnyHttpUrl:
    if url.username or url.password:
        raise ValueError(
            "credentials in a URL are not supported: put the whole URL in a secret ({secret: NAME})"
        )
    policy = policy_of(info)
    host = (url.host or "").lower()
    address = literal_address(host)
    if address is not None:
        if not policy.allows_address(address):
            raise ValueError(
                f"{address} is not a public address; allow it with egress.allow in the "
                "operator policy file (SYNCD_POLICY)"
            )
        return url
    name = host.rstrip(".")
    if (name == "localhost" or name.endswith(".localhost")) and not policy.allows_host(name):
        raise ValueError(
            f"{quoted(name)} is a loopback name; allow it with egress.allow in the operator policy "
            "file (SYNCD_POLICY)"
        )
    return url


ConfinedPath = Annotated[
    str,
    AfterValidator(_confined_path),
    Field(min_length=1, json_schema_extra={"x-syncd-kind": "path"}),
]
GlobPattern = Annotated[
    str,
    AfterValidator(_glob_pattern),
    Field(min_length=1, json_schema_extra={"x-syncd-kind": "pattern"}),
]
EgressURL = Annotated[
    AnyHttpUrl,
    AfterValidator(_egress_url),
    Field(json_schema_extra={"x-syncd-kind": "egress-url"}),
]


def validation_context(policy: Policy, task_type: str) -> dict[str, Any]:
    """What parameter models are validated with, wherever they are."""
    return {"policy": policy, "task_type": task_type}
