"""worker.egress against real listeners on 127.0.0.1: what is reached, what is refused, and
that a slow, huge, redirecting or broken server costs a bounded time and tells nothing.

Host names are mapped to local addresses by patching socket.getaddrinfo (`names`), the
way a DNS answer would map them.
"""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from schemas.policy import DEFAULT_POLICY, Policy
from worker.egress import RESPONSE_CAP, EgressError, post_json

Handler = Callable[["Listener", socket.socket], None]


@dataclass
class Listener:
    """A TCP server on 127.0.0.1 running `handler` for each connection, in a thread."""

    server: socket.socket
    handler: Handler
    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)  # bytes a handler sent before it ended
    ended: list[float] = field(default_factory=list)  # when each connection ended
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, host: str = "127.0.0.1", path: str = "/hook", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def serve(self) -> None:
        self.server.settimeout(0.05)
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            self.handler(self, conn)
        except OSError:
            pass  # the client went away
        finally:
            conn.close()
            with self.lock:
                self.ended.append(time.monotonic())


@contextmanager
def listening(handler: Handler) -> Iterator[Listener]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    listener = Listener(server, handler, server.getsockname()[1])
    thread = threading.Thread(target=listener.serve, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        listener.stop.set()
        thread.join(5)
        server.close()


def read_request(listener: Listener, conn: socket.socket) -> bytes:
    """The whole request (head and Content-Length body), recorded on the listener."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    listener.requests.append(data[: len(head) + 4] + body)
    return data


def answer(status: int, headers: str = "", body: bytes = b"") -> Handler:
    def handle(listener: Listener, conn: socket.socket) -> None:
        read_request(listener, conn)
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
        conn.sendall(head.encode() + body)

    return handle


def drip(response: bytes, every: float) -> Handler:
    """Answers one byte every `every` seconds, for as long as the client listens."""

    def handle(listener: Listener, conn: socket.socket) -> None:
        read_request(listener, conn)
        for byte in response:
            conn.sendall(bytes([byte]))
            time.sleep(every)

    return handle


def flood(total: int) -> Handler:
    """A 200 announcing `total` body bytes, sent as fast as the client takes them."""

    def handle(listener: Listener, conn: socket.socket) -> None:
        read_request(listener, conn)
        sent = 0
        try:
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
            chunk = b"x" * 65536
            while sent < total:
                conn.sendall(chunk)
                sent += len(chunk)
        finally:
            listener.sent.append(sent)

    return handle


def reset(listener: Listener, conn: socket.socket) -> None:
    read_request(listener, conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST


def hang_up(listener: Listener, conn: socket.socket) -> None:
    read_request(listener, conn)


def silent(listener: Listener, conn: socket.socket) -> None:
    read_request(listener, conn)
    conn.recv(1)  # until the client goes away


def not_http(listener: Listener, conn: socket.socket) -> None:
    read_request(listener, conn)
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")


def allowing(*entries: str) -> Policy:
    return Policy.model_validate({"egress": {"allow": list(entries)}})


LOOPBACK = allowing("127.0.0.1")


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Host name -> the addresses it resolves to; every lookup is counted under "lookups"."""
    table: dict[str, list[str]] = {"lookups": []}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        table["lookups"].append(str(host))
        addresses = table.get(host, [host])
        return [info for a in addresses for info in real(a, port, *args, **kwargs)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


def no_connection_after(listener: Listener) -> bool:
    time.sleep(0.3)  # a connection would have been accepted by now
    return listener.connections == 0


# -- what is reached -------------------------------------------------------------------


def test_a_listed_address_is_reached_with_the_payload() -> None:
    with listening(answer(204)) as hook:
        assert post_json(hook.url(path="/hook?x=1"), {"event": "deployed"}, 5, LOOPBACK) == 204
    (request,) = hook.requests
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /hook?x=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{hook.port}".encode() in head
    assert b"Content-Type: application/json" in head
    assert body == b'{"event": "deployed"}'


def test_an_internal_address_is_refused_and_never_connected_to() -> None:
    with listening(answer(200)) as hook:
        with pytest.raises(EgressError) as caught:
            post_json(hook.url(), {}, 5, DEFAULT_POLICY)
        assert no_connection_after(hook)
    assert str(caught.value) == "127.0.0.1 is not allowed by the egress policy"


def test_a_name_resolving_inside_is_refused_and_never_connected_to(
    names: dict[str, list[str]],
) -> None:
    names["hooks.inside.test"] = ["127.0.0.1"]
    names["mixed.test"] = ["8.8.8.8", "127.0.0.1"]  # one internal address is one too many
    with listening(answer(200)) as hook:
        for host in ("hooks.inside.test", "mixed.test"):
            with pytest.raises(EgressError) as caught:
                post_json(hook.url(host), {}, 5, DEFAULT_POLICY)
            assert str(caught.value) == f"{host} is not allowed by the egress policy"
        assert no_connection_after(hook)


def test_the_checked_address_is_the_one_connected_to(names: dict[str, list[str]]) -> None:
    names["hooks.partner.test"] = ["127.0.0.1"]
    with listening(answer(200)) as hook:
        status = post_json(hook.url("hooks.partner.test"), {}, 5, allowing("hooks.partner.test"))
    assert status == 200
    assert names["lookups"] == ["hooks.partner.test"]  # resolved once, never again
    assert f"Host: hooks.partner.test:{hook.port}".encode() in hook.requests[0]


def test_a_redirect_to_an_internal_address_is_not_followed(names: dict[str, list[str]]) -> None:
    names["hooks.partner.test"] = ["127.0.0.1"]
    with listening(answer(200)) as inside:
        location = f"Location: {inside.url()}\r\n"
        with listening(answer(302, location, b"moved")) as outside:
            with pytest.raises(EgressError) as caught:
                post_json(outside.url("hooks.partner.test"), {}, 5, allowing("hooks.partner.test"))
            assert outside.connections == 1
        assert no_connection_after(inside)
    assert str(caught.value) == "HTTP 302: redirects are not followed"


def test_an_error_status_fails_without_echoing_the_body() -> None:
    with listening(answer(500, body=b"stack trace with secrets")) as hook:
        with pytest.raises(EgressError) as caught:
            post_json(hook.url(), {}, 5, LOOPBACK)
        assert hook.connections == 1
    assert str(caught.value) == "HTTP 500"


# -- bounded -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",  # drips from the first byte
        b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n" + b"x" * 200,
    ],
    ids=["status-line", "body"],
)
def test_a_dripping_server_is_cut_off_at_the_deadline(response: bytes) -> None:
    every = 0.02 if b"x" * 200 in response else 0.2  # the head is quick when the body drips
    with listening(drip(response, every)) as hook:
        start = time.monotonic()
        with pytest.raises(EgressError) as caught:
            post_json(hook.url(), {}, 1.5, LOOPBACK)
        took = time.monotonic() - start
        deadline = start + 1.5
        assert 1.4 <= took < 2.0, f"the request took {took:.2f} s for a 1.5 s deadline"
        while not hook.ended and time.monotonic() < deadline + 3:
            time.sleep(0.05)
    assert str(caught.value) == "request to 127.0.0.1 failed"
    assert hook.ended[0] - deadline < 1.0  # the server saw the connection go


def test_a_huge_response_is_read_only_up_to_the_cap() -> None:
    total = 1024 * 1024 * 1024
    with listening(flood(total)) as hook:
        start = time.monotonic()
        assert post_json(hook.url(), {}, 10, LOOPBACK) == 200
        took = time.monotonic() - start
        while not hook.sent and time.monotonic() - start < 5:
            time.sleep(0.05)
    assert took < 2.0
    # What the server got out before the connection closed: the cap plus socket buffers.
    assert RESPONSE_CAP <= hook.sent[0] < 64 * 1024 * 1024


def test_endless_headers_fail() -> None:
    many = "".join(f"X-H{i}: v\r\n" for i in range(500))
    with listening(answer(200, many)) as hook, pytest.raises(EgressError) as caught:
        post_json(hook.url(), {}, 5, LOOPBACK)
    assert str(caught.value) == "request to 127.0.0.1 failed"


# -- nothing told ----------------------------------------------------------------------


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()  # nothing listens there now: a connection is refused
    return port


def test_closed_refused_reset_silent_and_garbled_all_read_the_same() -> None:
    messages = {}
    with pytest.raises(EgressError) as caught:
        post_json(f"http://127.0.0.1:{closed_port()}/", {}, 2, LOOPBACK)
    messages["closed port"] = caught.value
    for name, handler in [
        ("reset", reset),
        ("hang up", hang_up),
        ("silent", silent),
        ("not http", not_http),
    ]:
        with listening(handler) as hook, pytest.raises(EgressError) as caught:
            post_json(hook.url(), {}, 1, LOOPBACK)
        messages[name] = caught.value
    assert {name: str(error) for name, error in messages.items()} == dict.fromkeys(
        messages, "request to 127.0.0.1 failed"
    )
    for error in messages.values():
        assert error.__cause__ is None
        assert error.__suppress_context__  # no chained cause in a recorded traceback


# -- https -----------------------------------------------------------------------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a server certificate for hooks.tls.test, signed by it."""
    root = tmp_path_factory.mktemp("tls")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca = ["-keyout", str(root / "ca.key"), "-out", str(root / "ca.pem"), "-days", "2"]
    openssl(
        "req", "-x509", *key, *ca, "-subj", "/CN=syncd test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    server = ["-keyout", str(root / "server.key"), "-out", str(root / "server.csr")]
    openssl("req", *key, *server, "-subj", "/CN=hooks.tls.test")
    (root / "ext.cnf").write_text(
        "subjectAltName=DNS:hooks.tls.test\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\n"
    )
    openssl(
        "x509", "-req", "-in", str(root / "server.csr"), "-out", str(root / "server.pem"),
        "-CA", str(root / "ca.pem"), "-CAkey", str(root / "ca.key"), "-CAcreateserial",
        "-days", "2", "-extfile", str(root / "ext.cnf"),
    )  # fmt: skip
    return root


def tls_answer(certificates: Path, names_seen: list[str | None]) -> Handler:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates / "server.pem", certificates / "server.key")

    def note_name(_sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        names_seen.append(name)

    context.sni_callback = note_name
    plain = answer(200)

    def handle(listener: Listener, conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as secure:
            plain(listener, secure)

    return handle


def test_https_verifies_the_certificate_against_the_host_name(
    certificates: Path, names: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates / "ca.pem"))  # trust the test CA
    names["hooks.tls.test"] = ["127.0.0.1"]
    names["other.tls.test"] = ["127.0.0.1"]
    seen: list[str | None] = []
    with listening(tls_answer(certificates, seen)) as hook:
        assert post_json(hook.url("hooks.tls.test", scheme="https"), {}, 5, LOOPBACK) == 200
        with pytest.raises(EgressError) as caught:  # the certificate names another host
            post_json(hook.url("other.tls.test", scheme="https"), {}, 5, LOOPBACK)
    assert seen == ["hooks.tls.test", "other.tls.test"]  # SNI: the name, not the address
    assert str(caught.value) == "request to other.tls.test failed"
    assert f"Host: hooks.tls.test:{hook.port}".encode() in hook.requests[0]
