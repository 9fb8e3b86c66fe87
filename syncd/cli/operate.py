"""`syncd migrate`, `syncd run NAME`, `syncd pause NAME`, `syncd resume NAME`."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from syncd.adapters.migrate import migrate
from syncd.cli.common import catalog
from syncd.cli.options import settings_from
from syncd.operate import pause, resume, trigger
from syncd.reconcile import open_stores
from worker.broker import make_broker
from worker.tasks import registry


def cmd_migrate(args: argparse.Namespace) -> int:
    result = migrate(settings_from(args).database_url)
    if result.created_database:
        print("created database", file=sys.stderr)
    if result.from_revision == result.to_revision:
        print(f"database schema is up to date (revision {result.to_revision})", file=sys.stderr)
    else:
        print(
            f"upgraded database schema {result.from_revision or 'empty'} -> {result.to_revision}",
            file=sys.stderr,
        )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    broker = make_broker(registry, settings)
    with open_stores(settings) as stores:
        task_id = trigger(stores.db, broker, catalog(), args.name)
    print(f"enqueued {args.name} as task {task_id}")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    with open_stores(settings_from(args)) as stores:
        previous = pause(stores.db, stores.redis, args.name)
    print(f"paused {args.name} (was {previous}); `syncd resume {args.name}` lifts it")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    with open_stores(settings_from(args)) as stores:
        status = resume(stores.db, stores.redis, args.name, datetime.now(UTC))
    print(f"resumed {args.name}: {status}")
    return 0
