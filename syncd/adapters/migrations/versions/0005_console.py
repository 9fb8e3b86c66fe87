"""The HTTP API and console: api_tokens, audit_log, and executions that remember their task.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

- api_tokens: bearer tokens (SHA-256 only) with a role, viewer or operator.
- audit_log: every pause, resume and run, from the API, the console or the CLI.
- task_executions.task_name, config_hash, git_revision: the task as it was when it fired
  (NULL in older rows), and the indexes of the executions page: newest first by
  (completed_at, id), by task name, failures only.

Must match schemas/tables.py (the drift test compares the two).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")
_STAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), sa.Identity(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", _STAMP, server_default=_NOW, nullable=False),
        sa.Column("last_used_at", _STAMP, nullable=True),
        sa.Column("revoked_at", _STAMP, nullable=True),
        sa.CheckConstraint("role IN ('viewer', 'operator')", name=op.f("ck_api_tokens_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_api_tokens_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("at", _STAMP, server_default=_NOW, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("address", sa.String(200), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("task_name", sa.String(200), nullable=False),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.CheckConstraint("origin IN ('api', 'console', 'cli')", name=op.f("ck_audit_log_origin")),
        sa.CheckConstraint(
            "action IN ('pause', 'resume', 'run')", name=op.f("ck_audit_log_action")
        ),
        sa.CheckConstraint(
            "result IN ('ok', 'refused', 'error')", name=op.f("ck_audit_log_result")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_task_name_id", "audit_log", ["task_name", sa.text("id DESC")])
    for name in ("task_name", "config_hash", "git_revision"):
        length = 200 if name == "task_name" else 64
        op.add_column("task_executions", sa.Column(name, sa.String(length), nullable=True))
    op.create_index(
        "ix_task_executions_completed_at_id",
        "task_executions",
        [sa.text("completed_at DESC"), sa.text("id DESC")],
    )
    op.create_index(
        "ix_task_executions_task_name_completed_at_id",
        "task_executions",
        ["task_name", sa.text("completed_at DESC"), sa.text("id DESC")],
    )
    op.create_index(
        "ix_task_executions_failed_completed_at_id",
        "task_executions",
        [sa.text("completed_at DESC"), sa.text("id DESC")],
        postgresql_where=sa.text("NOT is_success"),
    )


def downgrade() -> None:
    op.drop_index("ix_task_executions_failed_completed_at_id", table_name="task_executions")
    op.drop_index("ix_task_executions_task_name_completed_at_id", table_name="task_executions")
    op.drop_index("ix_task_executions_completed_at_id", table_name="task_executions")
    for name in ("git_revision", "config_hash", "task_name"):
        op.drop_column("task_executions", name)
    op.drop_index("ix_audit_log_task_name_id", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("api_tokens")
