"""Retry backoff: task_configs.retry_backoff_seconds and retry_backoff_max_seconds.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

The server defaults are the taskdef defaults, so rows written before this revision stay
valid and read back as the configuration git still declares for them (their content hash
does not cover the new fields while they hold the defaults). Must match schemas/tables.py
(the drift test compares the two).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "task_configs",
        sa.Column(
            "retry_backoff_seconds", sa.Double(), server_default=sa.text("5"), nullable=False
        ),
    )
    op.add_column(
        "task_configs",
        sa.Column(
            "retry_backoff_max_seconds", sa.Double(), server_default=sa.text("600"), nullable=False
        ),
    )


def downgrade() -> None:
    op.drop_column("task_configs", "retry_backoff_max_seconds")
    op.drop_column("task_configs", "retry_backoff_seconds")
