"""Reviews: the statements behind the review form, ``ichnode review`` and the export.

A review is inserted, never updated: the newest review of a study (highest id) is the one
that counts, the older ones stay as the record. Callers own the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from ichnode.db.models import Instance, InstanceStatus, Review, Study, StudyResult


def add_review(session: Session, review: Review) -> Review:
    """Insert one review (flushed: its id and time are set)."""
    session.add(review)
    session.flush()
    return review


def result_version(session: Session, study_id: int, version: int) -> StudyResult | None:
    """One result version of a study."""
    return session.scalar(
        select(StudyResult).where(StudyResult.study_id == study_id, StudyResult.version == version)
    )


def study_sop_uids(session: Session, study_id: int) -> set[str]:
    """The SOP instance UIDs of a study's received instances."""
    return set(
        session.scalars(select(Instance.sop_instance_uid).where(Instance.study_id == study_id))
    )


def reviews_of(session: Session, study_id: int) -> list[tuple[Review, int, str]]:
    """Every review of a study, oldest first, with the version and model id it reviewed."""
    rows = session.execute(
        select(Review, StudyResult.version, StudyResult.model_id)
        .join(StudyResult, StudyResult.id == Review.study_result_id)
        .where(Review.study_id == study_id)
        .order_by(Review.id)
    ).all()
    return [(r, int(v), str(m)) for r, v, m in rows]


def _latest_ids() -> Any:
    """The id of the newest review of each study (a subquery)."""
    return select(func.max(Review.id)).group_by(Review.study_id).scalar_subquery()


def latest_reviews(
    session: Session, since: datetime | None = None
) -> list[tuple[Review, StudyResult, Study]]:
    """The review that counts for each reviewed study (its newest), with the result version
    it reviewed and the study; ``since`` keeps reviews written at or after it. Oldest first."""
    query = (
        select(Review, StudyResult, Study)
        .join(StudyResult, StudyResult.id == Review.study_result_id)
        .join(Study, Study.id == Review.study_id)
        .where(Review.id.in_(_latest_ids()))
        .order_by(Review.id)
    )
    if since is not None:
        query = query.where(Review.created_at >= since)
    return [(r, res, s) for r, res, s in session.execute(query).all()]


def scored_instances(session: Session, study_ids: Sequence[int]) -> list[Instance]:
    """The stored, scored instances of the studies (what an export copies), by study then id."""
    if not study_ids:
        return []
    return list(
        session.scalars(
            select(Instance)
            .where(
                Instance.study_id.in_(list(study_ids)),
                Instance.status == InstanceStatus.DONE,
                Instance.path.is_not(None),
            )
            .order_by(Instance.study_id, Instance.id)
        )
    )


def is_reviewed() -> Any:
    """SQL: the study (``Study`` in the enclosing query) has at least one review."""
    return exists().where(Review.study_id == Study.id)
