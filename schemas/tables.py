"""SQLAlchemy models of syncd's PostgreSQL tables: `task_configs`, `task_executions`, and the
HTTP API's `api_tokens` and `audit_log`.

The single source of the database layout: alembic's env.py and the drift test read
`metadata`; `syncd.adapters.postgres` and `syncd.adapters.executions` build their Core
statements from these tables, and so does the worker's recorder (through
`syncd.adapters.pg.jsonb_records`). Declarations only: no engine, no session, no I/O.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.taskdef import SCHEDULER_TYPES

# Deterministic constraint names, so the hand-written migration can name them and a later
# migration can drop or alter them without looking them up in the catalog.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MANAGED_BY_SYNCD = "syncd"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TaskConfigModel(Base):
    """Static configuration of one task: no run state, no status column (Redis has it)."""

    __tablename__ = "task_configs"
    __table_args__ = (
        CheckConstraint(
            f"scheduler_type IN ({', '.join(repr(kind) for kind in SCHEDULER_TYPES)})",
            name="scheduler_type",
        ),
        CheckConstraint("priority BETWEEN 1 AND 10", name="priority"),
    )

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="", server_default=text("''"))
    task_type: Mapped[str] = mapped_column(String(200))
    scheduler_type: Mapped[str] = mapped_column(String(16))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONB)
    schedule_config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    max_retries: Mapped[int] = mapped_column(Integer)
    # Server defaults: rows written before these columns existed read as the taskdef defaults.
    retry_backoff_seconds: Mapped[float] = mapped_column(Double, server_default=text("5"))
    retry_backoff_max_seconds: Mapped[float] = mapped_column(Double, server_default=text("600"))
    timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean)
    # GitOps bookkeeping: syncd never updates or deletes a row whose managed_by is not
    # 'syncd', so rows created by hand or by another tool are safe from pruning.
    managed_by: Mapped[str] = mapped_column(
        String(32), default=MANAGED_BY_SYNCD, server_default=text("'syncd'")
    )
    source_file: Mapped[str | None] = mapped_column(Text)
    source_line: Mapped[int | None] = mapped_column(Integer)
    # sha256 of the config as last applied: a no-op sync compares hashes only, and a row
    # edited by hand no longer matches its own hash (drift).
    content_hash: Mapped[str] = mapped_column(String(64))
    git_revision: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TaskExecutionModel(Base):
    """One finished execution attempt, written once when it ends (no RUNNING state)."""

    __tablename__ = "task_executions"
    # One row per attempt: the recorder's INSERT ... ON CONFLICT (task_id, attempt) DO NOTHING
    # relies on it, so a retried flush or a redelivered message never duplicates a row.
    __table_args__ = (UniqueConstraint("task_id", "attempt"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # SET NULL: deleting a task's config must not erase its history. No index of their own:
    # (config_id, completed_at) and (task_id, attempt) lead with them, and every index is
    # paid for by each of the recorder's inserts.
    config_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("task_configs.id", ondelete="SET NULL")
    )
    task_id: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    is_success: Mapped[bool] = mapped_column(Boolean)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_seconds: Mapped[Decimal | None] = mapped_column(Numeric(12, 3))
    # Whatever the task returned (any JSON value); none_as_null: None is SQL NULL, not 'null'.
    result: Mapped[Any | None] = mapped_column(JSONB(none_as_null=True), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text)
    error_traceback: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The task as it was when it fired (from the message's labels): history survives a
    # deleted or renamed config, and a failure can be pinned to the revision that caused it.
    # NULL in rows written before they existed.
    task_name: Mapped[str | None] = mapped_column(String(200))
    config_hash: Mapped[str | None] = mapped_column(String(64))
    git_revision: Mapped[str | None] = mapped_column(String(64))


# "Last runs of task X" reads newest first; declared here because DESC needs the column.
Index(
    "ix_task_executions_config_id_completed_at",
    TaskExecutionModel.config_id,
    TaskExecutionModel.completed_at.desc(),
)
# The executions page: newest first with keyset pagination on (completed_at, id), all runs,
# one task's runs by name (also of deleted configs), or failures only.
Index(
    "ix_task_executions_completed_at_id",
    TaskExecutionModel.completed_at.desc(),
    TaskExecutionModel.id.desc(),
)
Index(
    "ix_task_executions_task_name_completed_at_id",
    TaskExecutionModel.task_name,
    TaskExecutionModel.completed_at.desc(),
    TaskExecutionModel.id.desc(),
)
Index(
    "ix_task_executions_failed_completed_at_id",
    TaskExecutionModel.completed_at.desc(),
    TaskExecutionModel.id.desc(),
    postgresql_where=text("NOT is_success"),
)

API_ROLES = ("viewer", "operator")
AUDIT_ORIGINS = ("api", "console", "cli")
AUDIT_ACTIONS = ("pause", "resume", "run")
AUDIT_RESULTS = ("ok", "refused", "error")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class ApiTokenModel(Base):
    """A bearer token of the HTTP API and console; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint(_one_of("role", API_ROLES), name="role"),)

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEntryModel(Base):
    """One operator action (pause, resume, run) from the API, the console or the CLI."""

    __tablename__ = "audit_log"
    __table_args__ = (
        CheckConstraint(_one_of("origin", AUDIT_ORIGINS), name="origin"),
        CheckConstraint(_one_of("action", AUDIT_ACTIONS), name="action"),
        CheckConstraint(_one_of("result", AUDIT_RESULTS), name="result"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str] = mapped_column(String(200))  # token:NAME, or cli:USER@HOST
    origin: Mapped[str] = mapped_column(String(16))
    address: Mapped[str | None] = mapped_column(String(200))  # the client's address
    action: Mapped[str] = mapped_column(String(16))
    task_name: Mapped[str] = mapped_column(String(200))
    result: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="", server_default=text("''"))


# A task page shows its newest audit entries first.
Index("ix_audit_log_task_name_id", AuditEntryModel.task_name, AuditEntryModel.id.desc())

metadata = Base.metadata
task_configs: Table = metadata.tables["task_configs"]
task_executions: Table = metadata.tables["task_executions"]
api_tokens: Table = metadata.tables["api_tokens"]
audit_log: Table = metadata.tables["audit_log"]
