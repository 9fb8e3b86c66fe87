"""Alembic environment for syncd: run by alembic when `syncd.adapters.migrate` upgrades.

There is no alembic.ini: the migrate module builds the Config in code and hands over either an
open connection (`config.attributes["connection"]`, already inside its transaction) or a
URL (`config.attributes["database_url"]`). This module creates no database and maps no errors.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlalchemy.pool import NullPool

from schemas.tables import metadata


def run_offline(url: str) -> None:
    """`--sql` mode: print the DDL instead of running it."""
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    attributes = context.config.attributes
    connection: Connection | None = attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    # NullPool: a one-off migration run must not leave pooled connections behind.
    engine = create_engine(attributes["database_url"], poolclass=NullPool)
    try:
        with engine.connect() as fresh:
            run_on(fresh)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline(context.config.attributes["database_url"])
else:
    run_online()
