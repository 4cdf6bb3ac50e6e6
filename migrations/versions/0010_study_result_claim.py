"""A claim on a stable study: one monitor results it, under a lease.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

The monitor claims stable studies like the worker claims instances (:mod:`ichnode.db.results`):
one statement writes a fresh ``result_claim_token`` and pushes ``result_lease_expires_at`` a
lease ahead; writing the version requires the token, so a monitor whose lease ended (and whose
study another monitor took) cannot write a second version. Both NULL when no monitor holds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("result_claim_token", sa.String(length=32), nullable=True))
        batch.add_column(
            sa.Column("result_lease_expires_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("result_lease_expires_at")
        batch.drop_column("result_claim_token")
