"""A claim token on outbox entries: only the sender holding the claim records its attempt.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

The outbox is claimed like the inference queue (:mod:`ichnode.db.delivery`): one statement
pushes ``next_attempt_at`` to the end of a lease and writes a fresh ``claim_token``; recording
an attempt requires the token, so a sender whose lease ended (and whose entry another sender
took) cannot record a second outcome. NULL when no send is in flight.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("claim_token")
