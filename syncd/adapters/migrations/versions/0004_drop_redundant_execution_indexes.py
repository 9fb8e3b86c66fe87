"""task_executions: drop the single-column indexes on config_id and task_id.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Both are prefixes of other indexes: (config_id, completed_at DESC) serves lookups by
config (and the foreign key's ON DELETE SET NULL), the unique (task_id, attempt) serves
lookups by task id. Each index costs every insert of the recorder. Must match
schemas/tables.py (the drift test compares the two).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_task_executions_config_id", table_name="task_executions")
    op.drop_index("ix_task_executions_task_id", table_name="task_executions")


def downgrade() -> None:
    op.create_index("ix_task_executions_task_id", "task_executions", ["task_id"])
    op.create_index("ix_task_executions_config_id", "task_executions", ["config_id"])
