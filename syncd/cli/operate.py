"""`syncd migrate`, `syncd run NAME`, `syncd pause NAME`, `syncd resume NAME`.

What they print quotes the name typed and values read from the stores (a status, a schema
revision): shown with `visible`, so none of it can start a line of its own. Run, pause
and resume are audited as the person at this terminal (`Actor.from_cli`).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from schemas.text import visible
from syncd.adapters.audit import Actor, AuditStore
from syncd.adapters.migrate import migrate
from syncd.cli.common import catalog
from syncd.cli.options import settings_from
from syncd.operate import pause, resume, trigger
from syncd.reconcile import open_stores
from worker.broker import make_broker
from worker.tasks import registry


def cmd_migrate(args: argparse.Namespace) -> int:
    result = migrate(settings_from(args).database_url)
    old, new = visible(str(result.from_revision or "empty")), visible(str(result.to_revision))
    if result.created_database:
        print("created database", file=sys.stderr)
    if result.from_revision == result.to_revision:
        print(f"database schema is up to date (revision {new})", file=sys.stderr)
    else:
        print(f"upgraded database schema {old} -> {new}", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    broker = make_broker(registry, settings)
    with open_stores(settings) as stores:
        audit = AuditStore(stores.db.engine)
        task_id = trigger(
            stores.db, broker, catalog(), args.name, audit=audit, actor=Actor.from_cli()
        )
    print(f"enqueued {visible(args.name)} as task {visible(str(task_id))}")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    with open_stores(settings_from(args)) as stores:
        audit = AuditStore(stores.db.engine)
        previous = pause(stores.db, stores.redis, args.name, audit=audit, actor=Actor.from_cli())
    name = visible(args.name)
    print(f"paused {name} (was {visible(str(previous))}); `syncd resume {name}` lifts it")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    with open_stores(settings_from(args)) as stores:
        audit, now = AuditStore(stores.db.engine), datetime.now(UTC)
        status = resume(
            stores.db, stores.redis, args.name, now, audit=audit, actor=Actor.from_cli()
        )
    print(f"resumed {visible(args.name)}: {visible(str(status))}")
    return 0
