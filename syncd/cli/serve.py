"""`syncd serve`: the HTTP API and the web console (syncd.api), served by uvicorn.

The CLI builds what the app must not import itself: the worker's catalog and a factory
of brokers for `run` (only the CLI imports `worker`). Opening the stores happens before
the port is bound, so a missing schema or an unreachable store is one error line.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

import uvicorn

from schemas.text import visible
from syncd.api.app import create_app
from syncd.api.config import ServeConfig
from syncd.cli.common import catalog
from syncd.cli.options import settings_from
from worker.broker import make_broker
from worker.tasks import registry

GRACEFUL_SHUTDOWN_SECONDS = 3


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    config = ServeConfig(
        settings=settings,
        taskdefs=Path(args.dir),
        catalog=catalog(),
        make_broker=lambda: make_broker(registry, settings),
        secure_cookies=args.secure_cookies,
        max_streams=args.max_streams,
    )
    app = create_app(config)
    if not _is_loopback(args.host):
        print(
            f"warning: listening on {visible(args.host)}: serve it behind TLS and pass "
            "--secure-cookies, or keep it on 127.0.0.1",
            file=sys.stderr,
        )
    print(f"syncd console: {console_url(args.host, args.port)}", file=sys.stderr, flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        server_header=False,
        # Event streams never end by themselves: a stop must not wait for them.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        proxy_headers=False,  # the client address audited is the peer's, never a header's
    )
    return 0


def console_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
