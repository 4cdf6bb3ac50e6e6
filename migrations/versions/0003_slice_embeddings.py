"""Slice embeddings for the study model, and which study result refined a prediction.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

``predictions.embedding`` holds the slice network's embedding of the slice (float32 bytes), so
the study monitor can run the study model (:mod:`ichnode.study`) over a study's slices in z
order without decoding a file again, also when the slices were scored by ``ichnode worker``
processes on other hosts. ``predictions.study_version`` is the study result version whose study
model refined the row's probabilities (NULL: the slice network's own). Existing rows keep NULL
in both: they are slice-only predictions, and a study of them is resulted as before (maximum
over its slices).
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
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("embedding", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("study_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("study_version")
        batch.drop_column("embedding")
