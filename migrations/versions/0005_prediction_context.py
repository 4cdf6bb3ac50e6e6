"""Which neighbouring slices a 2.5-D prediction was made with.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

A checkpoint with context slices (``PreprocessSpec.context``) scores a slice together with
its neighbours by z in its series. A worker can only use the neighbours stored when it claims
the slice; ``predictions.context`` records their instance ids (``"12,13,14"``, lowest z first,
the slice's own id where it repeats itself), so that the study monitor re-queues the slices
whose neighbours changed before it results the study. NULL for a 2-D prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("context", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("context")
