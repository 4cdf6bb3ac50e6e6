"""Patient sex and age, and study time, for the worklist.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

``studies.patient_sex`` (PatientSex, CS), ``studies.patient_age`` (PatientAge, AS, e.g.
``054Y``) and ``studies.study_time`` (StudyTime, TM) as received, clipped to their columns.
PHI like the other header fields of ``studies``: shown only where patient identifiers are.
Studies received before this revision keep NULL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("patient_sex", sa.String(16), nullable=True))
        batch.add_column(sa.Column("patient_age", sa.String(16), nullable=True))
        batch.add_column(sa.Column("study_time", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("study_time")
        batch.drop_column("patient_age")
        batch.drop_column("patient_sex")
