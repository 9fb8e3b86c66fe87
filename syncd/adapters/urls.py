"""What the PostgreSQL and Redis URL parsers share: reading `HOST[:PORT]` safely.

Without an '@' before it, `HOST:PORT` may be a mistyped `USER:PASSWORD`, so the port is
quoted in a message only when the caller says the URL had one (`show`). Each parser turns
a `HostPortProblem` into its own one-line error.
"""

from __future__ import annotations

MAX_PORT = 65535


class HostPortProblem(ValueError):
    """`HOST[:PORT]` that cannot be read; str() is the reason, safe to show."""


def split_host_port(text: str, *, show: bool) -> tuple[str, bool, int | None]:
    """(host, is_ipv6, port) of `HOST[:PORT]` or `[IPV6][:PORT]`; the port None if absent."""
    if text.startswith("["):
        address, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise HostPortProblem("an IPv6 host must be written [ADDRESS] or [ADDRESS]:PORT")
        return address, True, _port(after[1:] if after else None, show=show)
    host, colon, port = text.partition(":")
    return host, False, _port(port if colon else None, show=show)


def _port(text: str | None, *, show: bool) -> int | None:
    if text is None:
        return None
    quoted = f" {text!r}" if show else ""
    if not (text.isascii() and text.isdigit()):
        raise HostPortProblem(f"the port{quoted} is not a number")
    if not 1 <= int(text) <= MAX_PORT:
        raise HostPortProblem(f"the port{quoted} is out of range (1-{MAX_PORT})")
    return int(text)
