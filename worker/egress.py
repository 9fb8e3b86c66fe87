"""Webhook egress: one HTTP(S) POST, to an address the operator policy allows, bounded.

`schemas.kinds.EgressURL` checks the URL string (literal addresses in every form,
`localhost` names) when parameters are validated; what a host *name* resolves to is only
known here, where the worker connects. `post_json` therefore:

- **Resolves once and checks every address.** The host is resolved with one
  `getaddrinfo`; if *any* resolved address is refused by the policy, the request is
  refused (not "use the first allowed one": a name that resolves to public and internal
  addresses at once is a rebinding attempt or a mistake, and the choice would depend on
  the resolver's order). A host name listed in `egress.allow` may resolve to anything.
  An IPv6 address that carries an IPv4 one (`::ffff:127.0.0.1`, 6to4, NAT64, the old
  IPv4-compatible form) is judged by that IPv4 address too (`Policy.allows_address`).
- **Connects to the checked address.** The connection goes to the addresses just checked,
  never to a second resolution, while the `Host` header and, for https, SNI and the
  certificate check still use the host name of the URL.
- **Never follows redirects.** A 3xx answer fails: "HTTP 302: redirects are not
  followed" (a redirect is how an outside URL points at an inside one).
- **Has one deadline for the whole request.** Resolution, connect, TLS handshake, sending,
  status, headers and body share `timeout` seconds: the connect waits at most what is
  left, and a watchdog shuts the connection down at the deadline whatever call is blocked
  on it, so a server that drips one byte a second cannot stretch it. The worker's hard
  timeout (the attempt's process is killed) stays the outer bound.
- **Reads little.** Status and headers within http.client's limits (100 header lines of
  at most 64 KiB), then at most `RESPONSE_CAP` bytes of body, which is discarded.
- **Tells nothing about the inside.** Every failure raises `EgressError`, with one of a
  few fixed messages: "<host> is not allowed by the egress policy", "request to <host>
  failed" (refused, reset, closed, timed out, TLS or protocol error alike: an attempt's
  error message must not tell an open port from a closed one) and "HTTP <status>". Bodies
  are never echoed; the cause is logged for the operator only, and not chained to the
  error (the recorded traceback would show it). Messages name the host, never the path or
  query, where a secret may be.

Proxy variables (`HTTP_PROXY`, ...) are not used: the address checked is the one reached.
Standard library only: http.client does the HTTP, ssl the certificate checks.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from schemas.policy import IpAddress, Policy

logger = logging.getLogger("worker.egress")

RESPONSE_CAP = 64 * 1024
"""Bytes of response body read at most (the body is discarded)."""

HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "syncd-webhook",
    "Connection": "close",
}

# ValueError: what the resolver, http.client or ssl raise for a host or answer they reject.
_NETWORK_ERRORS = (OSError, http.client.HTTPException, ValueError)


class EgressError(Exception):
    """A webhook request was refused or failed; the message is safe to record."""


@dataclass(frozen=True)
class Target:
    """Where a URL points: what is resolved, sent as `Host` and checked for TLS."""

    host: str  # lowercased, without the brackets of an IPv6 literal
    port: int
    path: str  # the request target: path and query
    tls: bool


@dataclass(frozen=True)
class Resolved:
    """One address the host resolved to, with the socket address to connect to."""

    family: socket.AddressFamily
    sockaddr: tuple[Any, ...]  # as getaddrinfo gave it, for connect()
    address: IpAddress


def post_json(url: str, payload: object, timeout: float, policy: Policy) -> int:
    """POST `payload` as JSON to `url`; the 2xx status, or EgressError (see the module)."""
    target = parse_target(url)
    body = json.dumps(payload).encode()
    deadline = Deadline(timeout)
    with _failures_reported(target):
        addresses = resolve(target, deadline)
    check_addresses(target, addresses, policy)
    with _failures_reported(target):
        status = _exchange(target, addresses, body, deadline)
    if 300 <= status < 400:
        raise EgressError(f"HTTP {status}: redirects are not followed")
    if not 200 <= status < 300:
        raise EgressError(f"HTTP {status}")
    return status


def parse_target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise EgressError("only http and https URLs can be posted to")
    if parts.username is not None or parts.password is not None:
        raise EgressError("credentials in the URL are not supported")
    try:
        port = parts.port
    except ValueError:
        raise EgressError("the URL has an invalid port") from None
    if not parts.hostname:
        raise EgressError("the URL has no host")
    tls = parts.scheme == "https"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.hostname, port or (443 if tls else 80), path, tls)


# -- the policy ------------------------------------------------------------------------


def check_addresses(target: Target, addresses: list[Resolved], policy: Policy) -> None:
    """Refuse unless the host is listed by name or every address it resolved to is allowed."""
    if policy.allows_host(target.host):
        return
    refused = [r.address for r in addresses if not policy.allows_address(r.address)]
    if refused:
        logger.info("webhook to %s refused: it resolved to %s", target.host, refused)
        raise EgressError(f"{target.host} is not allowed by the egress policy")


# -- the network -----------------------------------------------------------------------


class Deadline:
    """A point in time, `seconds` from now, that a whole request must finish by."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left; TimeoutError once there are none."""
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        return left


def resolve(target: Target, deadline: Deadline) -> list[Resolved]:
    """Every address the host resolves to, within the deadline.

    The lookup runs in a daemon thread because getaddrinfo cannot be interrupted: past the
    deadline it is abandoned, and finishes (or not) on its own.
    """
    outcome: queue.SimpleQueue[list[Resolved] | BaseException] = queue.SimpleQueue()

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            outcome.put([_resolved(family, sockaddr) for family, _, _, _, sockaddr in infos])
        except Exception as exc:  # handed over to the waiting thread
            outcome.put(exc)

    threading.Thread(target=lookup, name="egress-resolve", daemon=True).start()
    try:
        result = outcome.get(timeout=deadline.remaining())
    except queue.Empty:
        raise TimeoutError("the lookup did not finish before the deadline") from None
    if isinstance(result, BaseException):
        raise result
    return result


def _resolved(family: socket.AddressFamily, sockaddr: tuple[Any, ...]) -> Resolved:
    host = str(sockaddr[0])  # an IPv6 link-local address may carry its zone: "fe80::1%eth0"
    return Resolved(family, sockaddr, ipaddress.ip_address(host.partition("%")[0]))


def _exchange(target: Target, addresses: list[Resolved], body: bytes, deadline: Deadline) -> int:
    connection = PinnedConnection(target, addresses, deadline)
    try:
        connection.request("POST", target.path, body=body, headers=HEADERS)
        response = connection.getresponse()
        response.read(RESPONSE_CAP)  # read a little so a well-behaved server ends cleanly
        deadline.remaining()  # a body cut short by the watchdog is a failure too
        return response.status
    finally:
        connection.close()


class PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection for the URL's host name, made to addresses checked before.

    `connect` never resolves: it tries the given addresses in order. For https the socket
    is wrapped with SNI and certificate verification against the host name, as
    HTTPSConnection would. A `Watchdog` bounds the connection's life by the deadline.
    """

    def __init__(self, target: Target, addresses: list[Resolved], deadline: Deadline) -> None:
        super().__init__(target.host, target.port)
        self.default_port = 443 if target.tls else 80  # `Host` names the port if not this
        self._tls = ssl.create_default_context() if target.tls else None
        self._addresses = addresses
        self._deadline = deadline
        self._watchdog: Watchdog | None = None

    def connect(self) -> None:
        # self.sock at each step, so that close() closes whatever was opened.
        self.sock = connect_any(self._addresses, self._deadline)
        self._watchdog = Watchdog(self.sock, self._deadline.remaining())
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            self.sock.settimeout(self._deadline.remaining())
            self.sock = self._tls.wrap_socket(self.sock, server_hostname=self.host)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._watchdog is not None:
                self._watchdog.disarm()
                self._watchdog = None


def connect_any(addresses: list[Resolved], deadline: Deadline) -> socket.socket:
    """A TCP connection to the first of `addresses` that answers before the deadline."""
    failure = OSError("no address to connect to")
    for resolved in addresses:
        try:
            return _connect(resolved, deadline)
        except OSError as exc:
            failure = exc
    raise failure


def _connect(resolved: Resolved, deadline: Deadline) -> socket.socket:
    sock = socket.socket(resolved.family, socket.SOCK_STREAM)
    try:
        sock.settimeout(deadline.remaining())
        sock.connect(resolved.sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


class Watchdog:
    """Shuts a connection down at its deadline, unblocking whatever call waits on it.

    It holds a duplicate of the socket (TLS wrapping detaches the original), closed only
    after the timer is stopped, so the descriptor it shuts down is never someone else's.
    """

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self._sock = sock.dup()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.name = "egress-watchdog"
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def disarm(self) -> None:
        self._timer.cancel()
        self._timer.join()
        self._sock.close()


@contextmanager
def _failures_reported(target: Target) -> Iterator[None]:
    """Any network or protocol failure as the one message that reveals nothing."""
    try:
        yield
    except _NETWORK_ERRORS as exc:
        # For the operator's log: an OSError's text (refused, reset, certificate...); of
        # anything else only its name, as http.client may quote the URL, secrets included.
        cause = f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else type(exc).__name__
        logger.info("webhook to %s failed: %s", target.host, cause)
        raise EgressError(f"request to {target.host} failed") from None
