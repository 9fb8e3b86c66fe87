"""The audit trail of operator actions: `audit_log`, one row per pause, resume or run.

`syncd.operate` writes a row for every action, whoever asked: a token through the HTTP
API or the console, or a person at the CLI (`Actor`). The task page and the audit page
of the console read them back here, newest first. What a row holds is partly typed by
someone else (a task name, a client address, an error message): each string is cut to
its column's size rather than refused, because losing the entry would be worse than
losing the end of a long value. Showing a row safely is the reader's job (`visible`).
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Column, ColumnElement, Engine, String, insert, select
from sqlalchemy.engine import RowMapping

from schemas.tables import audit_log
from syncd.adapters.pg import translate_errors
from syncd.core.model import AuditEntry

Origin = Literal["api", "console", "cli"]

# `detail` is TEXT, but it is read in lists: a message that long says nothing more.
DETAIL_LIMIT = 2000
CUT_MARK = "…"

_a = audit_log
_SHOWN = (_a.c.id, _a.c.at, _a.c.actor, _a.c.origin, _a.c.address, _a.c.action,
          _a.c.task_name, _a.c.result, _a.c.detail)  # fmt: skip


@dataclass(frozen=True)
class Actor:
    """Who asked for an action, as the audit log names them."""

    name: str  # "token:NAME" for the API and the console, "cli:USER@HOST" for the CLI
    origin: Origin
    address: str | None = None  # the client's address; None for the CLI

    @classmethod
    def from_cli(cls) -> Actor:
        """The person at this terminal, as the operating system names them."""
        try:
            user = getpass.getuser()
        except (OSError, KeyError):  # no USER/LOGNAME and no passwd entry (a bare container)
            user = "unknown"
        return cls(name=f"cli:{user}@{socket.gethostname()}", origin="cli")


class AuditStore:
    """`audit_log`; shares the engine of the `DbStore` it works next to (`DbStore.engine`)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def record(
        self, actor: Actor, action: str, task_name: str, result: str, detail: str = ""
    ) -> None:
        """Add one entry; `action` and `result` must be among AUDIT_ACTIONS and AUDIT_RESULTS
        (the table's CHECKs refuse anything else: StoreRefused)."""
        values = {
            "actor": _bounded(actor.name, _a.c.actor),
            "origin": actor.origin,
            "address": None if actor.address is None else _bounded(actor.address, _a.c.address),
            "action": action,
            "task_name": _bounded(task_name, _a.c.task_name),
            "result": result,
            "detail": _bounded(detail, _a.c.detail),
        }
        with translate_errors(self._engine.url), self._engine.begin() as conn:
            conn.execute(insert(_a).values(values))

    def for_task(self, task_name: str, limit: int = 20) -> list[AuditEntry]:
        """The newest `limit` entries about one task, newest first."""
        # Cut like record() cut it, so an over-long name finds the entries it made.
        return self._entries(_a.c.task_name == _bounded(task_name, _a.c.task_name), limit)

    def recent(self, limit: int = 50, before_id: int | None = None) -> list[AuditEntry]:
        """The newest `limit` entries, newest first; the next page is `before_id=` the last
        id of this one (keyset: a page stays right while new entries arrive)."""
        return self._entries(None if before_id is None else _a.c.id < before_id, limit)

    def _entries(self, condition: ColumnElement[bool] | None, limit: int) -> list[AuditEntry]:
        # By id, not by `at`: ids only grow, while now() is when a transaction began.
        query = select(*_SHOWN).order_by(_a.c.id.desc()).limit(limit)
        if condition is not None:
            query = query.where(condition)
        with translate_errors(self._engine.url), self._engine.connect() as conn:
            records = conn.execute(query).mappings().all()
        return [_entry_from(record) for record in records]


def _bounded(text: str, column: Column[str]) -> str:
    """`text` as PostgreSQL can store it, cut to fit `column` (TEXT: DETAIL_LIMIT), with a
    `…` where it was cut."""
    limit = (column.type.length if isinstance(column.type, String) else None) or DETAIL_LIMIT
    storable = _storable(text)
    if len(storable) <= limit:
        return storable
    return storable[: limit - len(CUT_MARK)] + CUT_MARK


def _storable(text: str) -> str:
    """No NUL (PostgreSQL text cannot hold one) and no lone surrogate (UTF-8 cannot: a
    command-line argument with undecodable bytes carries them); both become escapes."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _entry_from(record: RowMapping) -> AuditEntry:
    return AuditEntry(**{column.name: record[column.name] for column in _SHOWN})
