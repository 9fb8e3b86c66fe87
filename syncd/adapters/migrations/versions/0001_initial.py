"""Initial schema: task_configs (GitOps-managed configuration) and task_executions (history).

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Written by hand with explicit op calls; it must match schemas/tables.py exactly (the drift
test in tests/integration/test_migrate.py compares the two).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_task_configs()
    create_task_executions()


def create_task_configs() -> None:
    op.create_table(
        "task_configs",
        sa.Column("id", sa.Integer(), sa.Identity(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("task_type", sa.String(200), nullable=False),
        sa.Column("scheduler_type", sa.String(16), nullable=False),
        sa.Column("parameters", postgresql.JSONB(), nullable=False),
        sa.Column("schedule_config", postgresql.JSONB(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("managed_by", sa.String(32), server_default=sa.text("'syncd'"), nullable=False),
        sa.Column("source_file", sa.Text(), nullable=True),
        sa.Column("source_line", sa.Integer(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("git_revision", sa.String(64), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_configs")),
        sa.UniqueConstraint("name", name=op.f("uq_task_configs_name")),
        sa.CheckConstraint(
            "scheduler_type IN ('cron', 'interval', 'date', 'manual')",
            name=op.f("ck_task_configs_scheduler_type"),
        ),
        sa.CheckConstraint("priority BETWEEN 1 AND 10", name=op.f("ck_task_configs_priority")),
    )


def create_task_executions() -> None:
    op.create_table(
        "task_executions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("config_id", sa.Integer(), nullable=True),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("is_success", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_seconds", sa.Numeric(12, 3), nullable=True),
        sa.Column("result", postgresql.JSONB(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_traceback", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_executions")),
        sa.ForeignKeyConstraint(
            ["config_id"],
            ["task_configs.id"],
            name=op.f("fk_task_executions_config_id_task_configs"),
            ondelete="SET NULL",
        ),
    )
    op.create_index(op.f("ix_task_executions_config_id"), "task_executions", ["config_id"])
    op.create_index(op.f("ix_task_executions_task_id"), "task_executions", ["task_id"])
    op.create_index(
        op.f("ix_task_executions_config_id_completed_at"),
        "task_executions",
        ["config_id", sa.text("completed_at DESC")],
    )


def downgrade() -> None:
    op.drop_table("task_executions")
    op.drop_table("task_configs")
