"""The operator policy: what reviewed taskdefs may make workers do, set outside `taskdefs/`.

A YAML file named by `SYNCD_POLICY` (taskdef authors cannot change it), validated as
strictly as a taskdef. Without one the defaults are safe: no filesystem root is allowed
(file tasks are refused), webhooks reach public addresses only, and the limits below hold
(`max_tasks` has none). `syncd validate` / `plan` apply it to taskdefs; the worker applies it
again when it runs an attempt.

Pure: the models and the address rules, no I/O (loading the file is syncd.load.policy's,
and the worker's worker.policy's).
"""

from __future__ import annotations

import ipaddress
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from schemas.text import PATH_LIMIT, quoted

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PolicyModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _absolute_root(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute():
        raise ValueError(f"{quoted(value, PATH_LIMIT)} is not an absolute path")
    if ".." in path.parts:
        raise ValueError(f"{quoted(value, PATH_LIMIT)} contains '..'")
    if str(path) == "/":
        raise ValueError("'/' cannot be an allowed root: name the directories tasks may use")
    return str(path)


def _egress_entry(value: str) -> str:
    text = value.strip().lower().rstrip(".")
    if not text:
        raise ValueError("an empty egress entry")
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        if not all(part and part.replace("-", "").isalnum() for part in text.split(".")):
            raise ValueError(
                f"{quoted(value)} is neither a host name, an address nor a CIDR"
            ) from None
    return text


Root = Annotated[str, AfterValidator(_absolute_root)]
EgressEntry = Annotated[str, AfterValidator(_egress_entry)]


class PathsPolicy(PolicyModel):
    allow: Annotated[
        tuple[Root, ...],
        Field(strict=False, description="directories file tasks may read, write or delete under"),
    ] = ()


class EgressPolicy(PolicyModel):
    allow: Annotated[
        tuple[EgressEntry, ...],
        Field(
            strict=False,
            description="hosts, addresses and CIDRs a webhook may reach beyond public addresses",
        ),
    ] = ()


class LimitsPolicy(PolicyModel):
    min_interval_seconds: Annotated[int, Field(ge=1)] = 30
    max_tasks: Annotated[int | None, Field(ge=1)] = None
    max_retries: Annotated[int, Field(ge=0)] = 10
    max_timeout_seconds: Annotated[int, Field(ge=1)] = 3600
    max_parameters_bytes: Annotated[int, Field(ge=2)] = 65536


class Policy(PolicyModel):
    """The whole policy file; every key is optional and defaults to the safe value."""

    version: Literal[1] = 1
    paths: PathsPolicy = PathsPolicy()
    egress: EgressPolicy = EgressPolicy()
    limits: LimitsPolicy = LimitsPolicy()

    def allows_root(self, path: str) -> str | None:
        """The allowed root `path` lies under (itself included), or None."""
        target = PurePosixPath(path)
        for root in self.paths.allow:
            if target == PurePosixPath(root) or PurePosixPath(root) in target.parents:
                return root
        return None

    def allows_address(self, address: IpAddress) -> bool:
        """Public addresses always; any other only when an egress entry covers it.

        An IPv4-mapped address (`::ffff:a.b.c.d`) reaches the IPv4 host itself, so only
        that one counts. A 6to4, NAT64 or IPv4-compatible address is routed towards the
        IPv4 address it carries: both must be allowed.
        """
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return self.allows_address(address.ipv4_mapped)
        carried = embedded_ipv4(address)
        return self._allows(address) and (carried is None or self._allows(carried))

    def _allows(self, address: IpAddress) -> bool:
        if address.is_global and not address.is_multicast:
            return True
        return any(
            address in network
            for network in self._egress_networks()
            if network.version == address.version
        )

    def allows_host(self, host: str) -> bool:
        """A host name listed in `egress.allow` (exactly, case and trailing dot ignored)."""
        return host.lower().rstrip(".") in self.listed_hosts()

    def listed_hosts(self) -> frozenset[str]:
        return frozenset(e for e in self.egress.allow if not _is_network(e))

    def _egress_networks(self) -> list[IpNetwork]:
        return [ipaddress.ip_network(e, strict=False) for e in self.egress.allow if _is_network(e)]


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def embedded_ipv4(address: IpAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address a 6to4, NAT64 (64:ff9b::/96) or IPv4-compatible address carries."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


DEFAULT_POLICY = Policy()


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file, as committed in `schemas/policy.schema.json`."""
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "syncd operator policy file"
    return schema
