"""One task_executions row per attempt: a unique constraint on (task_id, attempt).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

The worker's recorder inserts with ON CONFLICT (task_id, attempt) DO NOTHING, which needs this
constraint; it must match schemas/tables.py (the drift test compares the two).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The naming convention's "uq" pattern names a constraint after its first column only.
CONSTRAINT = "uq_task_executions_task_id"


def upgrade() -> None:
    op.create_unique_constraint(op.f(CONSTRAINT), "task_executions", ["task_id", "attempt"])


def downgrade() -> None:
    op.drop_constraint(op.f(CONSTRAINT), "task_executions", type_="unique")
