"""The daemon's HTTP endpoint: GET routes on the stdlib server, in a daemon thread.

`syncd watch` serves `/healthz` and `/metrics` here (no framework: two routes). A route is
a function returning (status, content type, body); an exception in one is logged and
answered with 500, never raised into the server thread.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from syncd.core.errors import SyncdError
from syncd.daemon.observe import Metrics

log = logging.getLogger("syncd.http")

Response = tuple[int, str, bytes]  # status, content type, body
Route = Callable[[], Response]


def json_response(status: int, body: Mapping[str, Any]) -> Response:
    return status, "application/json", json.dumps(body).encode() + b"\n"


def metrics_response(metrics: Metrics) -> Response:
    return 200, CONTENT_TYPE_LATEST, metrics.render()


class HttpEndpoint:
    """GET routes served by a ThreadingHTTPServer in a daemon thread (no framework)."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Route]) -> None:
        try:
            self._server = ThreadingHTTPServer((host, port), _handler_for(dict(routes)))
        except OSError as exc:
            raise SyncdError(f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc}") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="syncd-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler_for(routes: dict[str, Route]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(urlsplit(self.path).path)
            try:
                status, ctype, body = route() if route else (404, "text/plain", b"not found\n")
            except Exception:
                log.exception("error serving %s", self.path)
                status, ctype, body = 500, "text/plain", b"internal error\n"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes hit these every few seconds; stderr access logs would drown the rest.
            log.debug("http: " + format, *args)

    return Handler
