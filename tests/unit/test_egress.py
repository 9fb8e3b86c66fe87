"""worker.egress without a network: which addresses a webhook may reach, how a URL is read,
and that a refusal or a failure says nothing about the inside."""

from __future__ import annotations

import ipaddress
import socket
import time
import traceback
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.kinds import validation_context
from schemas.policy import DEFAULT_POLICY, Policy, embedded_ipv4
from worker.egress import (
    Deadline,
    EgressError,
    Resolved,
    Target,
    check_addresses,
    parse_target,
    post_json,
)
from worker.tasks.notification import WebhookParams


def allowing(*entries: str) -> Policy:
    return Policy.model_validate({"egress": {"allow": list(entries)}})


REFUSED_BY_DEFAULT = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # link-local: cloud metadata services
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "100.127.255.255",
    "0.0.0.0",  # noqa: S104 - not a bind: it reaches the local host on Linux
    "0.1.2.3",
    "255.255.255.255",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "198.18.0.1",  # benchmarking
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00::2",
    "ff02::1",  # multicast
    "::ffff:127.0.0.1",  # IPv4-mapped: an AF_INET6 socket reaches 127.0.0.1 itself
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
]
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "2002:808:808::",  # 6to4 of 8.8.8.8
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
]


@pytest.mark.parametrize("text", REFUSED_BY_DEFAULT)
def test_non_public_addresses_are_refused_by_default(text: str) -> None:
    assert not DEFAULT_POLICY.allows_address(ipaddress.ip_address(text))


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses_are_allowed(text: str) -> None:
    assert DEFAULT_POLICY.allows_address(ipaddress.ip_address(text))


@pytest.mark.parametrize(
    ("entries", "text", "allowed"),
    [
        (["127.0.0.1"], "127.0.0.1", True),
        (["127.0.0.1"], "::ffff:127.0.0.1", True),  # the same host, as an IPv6 socket sees it
        (["127.0.0.1"], "127.0.0.2", False),
        (["127.0.0.1"], "::1", False),
        (["127.0.0.1"], "0.0.0.0", False),  # noqa: S104 - not a bind
        (["10.0.0.0/8"], "10.200.3.4", True),
        (["10.0.0.0/8"], "::ffff:10.200.3.4", True),
        (["10.0.0.0/8"], "11.0.0.1", True),  # public anyway
        (["10.0.0.0/8"], "172.16.0.1", False),
        (["::1"], "::1", True),
        (["::1"], "127.0.0.1", False),
        (["fd00::/8"], "fd12::1", True),
        (["10.0.0.0/8"], "64:ff9b::a00:1", True),  # NAT64 of a listed address
        (["10.0.0.0/8"], "64:ff9b::ac10:1", False),  # NAT64 of 172.16.0.1
    ],
)
def test_listed_addresses_and_networks_are_allowed(
    entries: list[str], text: str, allowed: bool
) -> None:
    assert allowing(*entries).allows_address(ipaddress.ip_address(text)) is allowed


@pytest.mark.parametrize(
    ("text", "ipv4"),
    [
        ("2002:7f00:1::", "127.0.0.1"),
        ("64:ff9b::a00:1", "10.0.0.1"),
        ("::7f00:1", "127.0.0.1"),
        ("::", None),
        ("::1", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", None),
    ],
)
def test_the_ipv4_address_an_ipv6_one_carries(text: str, ipv4: str | None) -> None:
    found = embedded_ipv4(ipaddress.ip_address(text))
    assert (str(found) if found else None) == ipv4


def resolved(*texts: str) -> list[Resolved]:
    return [
        Resolved(
            socket.AF_INET6 if ":" in text else socket.AF_INET,
            (text, 80),
            ipaddress.ip_address(text),
        )
        for text in texts
    ]


HOOKS = Target("hooks.example.com", 443, "/", tls=True)


def test_one_refused_address_refuses_the_host_and_the_message_names_the_host_only() -> None:
    with pytest.raises(EgressError) as caught:
        check_addresses(HOOKS, resolved("93.184.216.34", "10.0.0.7"), DEFAULT_POLICY)
    assert str(caught.value) == "hooks.example.com is not allowed by the egress policy"
    check_addresses(HOOKS, resolved("93.184.216.34", "2606:4700:4700::1111"), DEFAULT_POLICY)


def test_a_host_listed_by_name_may_resolve_to_anything() -> None:
    check_addresses(HOOKS, resolved("10.0.0.7", "127.0.0.1"), allowing("Hooks.Example.com."))
    other = Target("other.example.com", 443, "/", tls=True)
    with pytest.raises(EgressError, match=r"other\.example\.com is not allowed"):
        check_addresses(other, resolved("10.0.0.7"), allowing("hooks.example.com"))


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://hooks.example.com", Target("hooks.example.com", 80, "/", tls=False)),
        (
            "https://Hooks.Example.com/a/b?x=1&y=2#frag",
            Target("hooks.example.com", 443, "/a/b?x=1&y=2", tls=True),
        ),
        ("http://[::1]:8080/hook", Target("::1", 8080, "/hook", tls=False)),
        ("https://127.0.0.1:80/", Target("127.0.0.1", 80, "/", tls=True)),
    ],
)
def test_a_url_is_read_into_host_port_and_request_target(url: str, target: Target) -> None:
    assert parse_target(url) == target


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example.com/", "only http and https"),
        ("http://user:secret@hooks.example.com/", "credentials in the URL are not supported"),
        ("http://hooks.example.com:99999/", "invalid port"),
        ("http:///path", "no host"),
    ],
)
def test_urls_that_cannot_be_posted_to(url: str, message: str) -> None:
    with pytest.raises(EgressError, match=message):
        parse_target(url)


def test_a_deadline_runs_out() -> None:
    deadline = Deadline(0.05)
    assert 0 < deadline.remaining() <= 0.05
    time.sleep(0.06)
    with pytest.raises(TimeoutError):
        deadline.remaining()


def fake_resolver(
    monkeypatch: pytest.MonkeyPatch, answer: Any, delay: float = 0.0
) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []

    def getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        time.sleep(delay)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def test_a_name_resolving_inside_is_refused_before_any_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 80))]
    calls = fake_resolver(monkeypatch, infos)
    start = time.monotonic()
    with pytest.raises(EgressError) as caught:
        post_json("http://hooks.example.com/x", {"a": 1}, 5, DEFAULT_POLICY)
    # At once: a connection to the unreachable 10.1.2.3 would have waited for the deadline.
    assert time.monotonic() - start < 1.0
    assert str(caught.value) == "hooks.example.com is not allowed by the egress policy"
    assert len(calls) == 1


def test_a_lookup_failure_says_only_that_the_request_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_resolver(monkeypatch, socket.gaierror(-2, "Name or service not known"))
    with pytest.raises(EgressError) as caught:
        post_json("http://nowhere.example.com/", {}, 5, DEFAULT_POLICY)
    assert str(caught.value) == "request to nowhere.example.com failed"
    # Nothing of the cause travels with the error (a recorded traceback would show it).
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert "Name or service" not in "".join(traceback.format_exception(caught.value))


def test_a_slow_lookup_counts_against_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80))]
    fake_resolver(monkeypatch, infos, delay=2.0)
    start = time.monotonic()
    with pytest.raises(EgressError, match=r"^request to slow\.example\.com failed$"):
        post_json("http://slow.example.com/", {}, 0.3, DEFAULT_POLICY)
    assert time.monotonic() - start < 1.0


# -- the URL string, as parameters are validated (schemas.kinds.EgressURL) ----------------


def webhook_url(url: str, policy: Policy = DEFAULT_POLICY) -> str:
    context = validation_context(policy, "notification.webhook")
    return str(WebhookParams.model_validate({"url": url}, context=context).url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/",
        "http://0x7f.1/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://127.0.0.1./",
        "http://%31%32%37.0.0.1/",
        "http://１２７.０.０.１/",  # full-width digits
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0/",
        "http://[::]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://localhost/",
        "http://localhost./",
        "http://LOCALHOST:9000/",
        "http://hooks.localhost/",
    ],
)
def test_internal_urls_are_refused_when_parameters_are_validated(url: str) -> None:
    with pytest.raises(ValidationError, match=r"egress\.allow"):
        webhook_url(url)


def test_listed_addresses_and_names_pass_validation() -> None:
    assert webhook_url("http://0x7f.1:8080/h", allowing("127.0.0.1")) == "http://127.0.0.1:8080/h"
    assert webhook_url("http://localhost./", allowing("localhost")) == "http://localhost./"
    assert webhook_url("https://hooks.example.com/x") == "https://hooks.example.com/x"
