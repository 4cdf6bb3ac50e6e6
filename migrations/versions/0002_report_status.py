"""Report state per result version, so a node rebuilds report objects it never built.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

``study_results.report_status`` is ``pending`` until the node has built and queued the
version's report objects (then ``done``), or knows it cannot (``failed``, with
``report_error``), or a newer version came first (``superseded``). Rows that exist when this
revision runs keep NULL: they were handled (or not) before the state was recorded, and a node
must not send old results again just because the column appeared.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("study_results") as batch:
        batch.add_column(sa.Column("report_status", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("report_error", sa.Text(), nullable=True))
        batch.create_index("ix_study_results_report_status", ["report_status"])


def downgrade() -> None:
    with op.batch_alter_table("study_results") as batch:
        batch.drop_index("ix_study_results_report_status")
        batch.drop_column("report_error")
        batch.drop_column("report_status")
