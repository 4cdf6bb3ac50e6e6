"""Reviews: a radiologist's verdict on a result version, kept as rows (never overwritten).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

- ``reviews``: one row per review of a study result version (verdict, the subtypes present
  and the slices that show them as the reviewer corrected them, who, when, a note). A newer
  review of the same study supersedes the older ones; none is updated or deleted.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("study_result_id", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("subtypes", sa.String(length=256), nullable=True),
        sa.Column("slices", sa.Text(), nullable=True),
        sa.Column("reviewer", sa.String(length=128), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_reviews_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["study_result_id"],
            ["study_results.id"],
            name=op.f("fk_reviews_study_result_id_study_results"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
    )
    op.create_index("ix_reviews_study_id", "reviews", ["study_id"])
    op.create_index("ix_reviews_study_result_id", "reviews", ["study_result_id"])
    op.create_index("ix_reviews_created_at", "reviews", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_reviews_created_at", "reviews")
    op.drop_index("ix_reviews_study_result_id", "reviews")
    op.drop_index("ix_reviews_study_id", "reviews")
    op.drop_table("reviews")
