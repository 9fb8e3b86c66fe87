"""`syncd watch [DIR]`: run the reconcile daemon (`syncd.daemon.watch`) in the foreground."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from syncd.adapters.lease import Lease
from syncd.cli.common import catalog
from syncd.cli.options import guard_options, settings_from
from syncd.daemon.observe import setup_logging
from syncd.daemon.watch import (
    LEASE_TTL_SECONDS,
    LOCK_WAIT_SECONDS,
    Daemon,
    WatchConfig,
    serve,
)
from syncd.reconcile import open_stores


def cmd_watch(args: argparse.Namespace) -> int:
    setup_logging(args.log_format, getattr(logging, args.log_level.upper()))
    settings = settings_from(args)
    options = guard_options(args, settings, lock_wait_seconds=LOCK_WAIT_SECONDS)
    lease = Lease.from_url(settings.redis_url, settings.layout.lease_key, ttl=LEASE_TTL_SECONDS)
    daemon = Daemon(
        WatchConfig(
            Path(args.dir),
            args.resync_interval,
            options,
            late_grace_seconds=settings.late_grace_seconds,
        ),
        stores=lambda: open_stores(settings),
        catalog=catalog(),
        lease=lease,
    )
    return serve(daemon, args.http_host, args.http_port)
