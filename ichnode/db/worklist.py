"""The worklist's statements: one page of studies with their latest result, state and counts.

One statement reads a page (the latest result, the instance count and the key slice's UID
joined, the state computed in SQL), so an open worklist tab costs two statements every few
seconds however many rows it shows. Callers own the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, case, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from ichnode.db.models import (
    DeliveryStatus,
    Instance,
    Notification,
    OutboxEntry,
    ReportObject,
    Review,
    StrEnum,
    Study,
    StudyResult,
    StudyStatus,
)


class WorklistState(StrEnum):
    """What the worklist shows in its status column."""

    RECEIVING = "receiving"
    SCORED = "scored"
    REPORTED = "reported"
    DELIVERY_FAILED = "delivery_failed"


class Order(StrEnum):
    """``triage``: flagged first, then by ``any`` descending, newest first; ``newest``: by time."""

    TRIAGE = "triage"
    NEWEST = "newest"


@dataclass(frozen=True)
class Query:
    """Which studies a worklist page shows, and in what order."""

    flagged: bool | None = None
    since: datetime | None = None
    state: WorklistState | None = None
    accession: str | None = None
    #: True: only reviewed studies; False: only those not reviewed yet.
    reviewed: bool | None = None
    order: Order = Order.TRIAGE
    limit: int = 50
    offset: int = 0


class Row(NamedTuple):
    """One worklist row as read: the study, its state, latest result, instances, key UID."""

    study: Study
    state: str
    result: StudyResult | None
    n_instances: int
    key_uid: str | None
    verdict: str | None


def _outbox_has(status: DeliveryStatus) -> Any:
    return exists().where(
        OutboxEntry.report_object_id == ReportObject.id,
        ReportObject.study_result_id == StudyResult.id,
        OutboxEntry.status == status,
    )


def _notification_failed() -> Any:
    return exists().where(
        Notification.study_result_id == StudyResult.id,
        Notification.status == DeliveryStatus.FAILED,
    )


def _state_expression() -> Any:
    """SQL for the :class:`WorklistState` of a study joined to its latest result."""
    return case(
        (Study.status == StudyStatus.RECEIVING, WorklistState.RECEIVING.value),
        (StudyResult.id.is_(None), WorklistState.RECEIVING.value),
        (
            or_(_outbox_has(DeliveryStatus.FAILED), _notification_failed()),
            WorklistState.DELIVERY_FAILED.value,
        ),
        (
            and_(
                _outbox_has(DeliveryStatus.SENT),
                ~_outbox_has(DeliveryStatus.PENDING),
            ),
            WorklistState.REPORTED.value,
        ),
        else_=WorklistState.SCORED.value,
    )


def _latest_join() -> Any:
    return (StudyResult.study_id == Study.id) & (StudyResult.version == Study.result_version)


def latest_verdict() -> Any:
    """SQL: the verdict of the study's newest review (NULL: not reviewed)."""
    return (
        select(Review.verdict)
        .where(Review.study_id == Study.id)
        .order_by(Review.id.desc())
        .limit(1)
        .correlate(Study)
        .scalar_subquery()
    )


def page(session: Session, q: Query) -> tuple[int, list[Row]]:
    """``(total matching, one page of rows)`` in the query's order."""
    state_sql = _state_expression().label("state")
    n_instances = (
        select(func.count())
        .select_from(Instance)
        .where(Instance.study_id == Study.id)
        .correlate(Study)
        .scalar_subquery()
    )
    key = aliased(Instance)
    verdict = latest_verdict()
    query = (
        select(Study, state_sql, StudyResult, n_instances, key.sop_instance_uid, verdict)
        .outerjoin(StudyResult, _latest_join())
        .outerjoin(key, key.id == StudyResult.key_instance_id)
    )
    if q.since is not None:
        query = query.where(Study.last_received_at >= q.since)
    if q.accession is not None:
        query = query.where(Study.accession_number == q.accession.strip())
    if q.flagged is not None:
        query = query.where(StudyResult.flagged.is_(q.flagged))
    if q.state is not None:
        query = query.where(state_sql == q.state.value)
    if q.reviewed is not None:
        reviewed = exists().where(Review.study_id == Study.id)
        query = query.where(reviewed if q.reviewed else ~reviewed)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if q.order is Order.TRIAGE:
        flagged_first = case((StudyResult.flagged.is_(True), 0), else_=1)
        query = query.order_by(
            flagged_first,
            StudyResult.p_any.desc().nulls_last(),
            Study.last_received_at.desc(),
            Study.id.desc(),
        )
    else:
        query = query.order_by(Study.last_received_at.desc(), Study.id.desc())
    rows = session.execute(query.offset(q.offset).limit(q.limit)).all()
    return total, [
        Row(s, st, r, count or 0, uid, None if v is None else str(v))
        for s, st, r, count, uid, v in rows
    ]


def state_of(session: Session, study_uid: str) -> str | None:
    """The worklist state of one study (None: no such study)."""
    row = session.execute(
        select(_state_expression())
        .select_from(Study)
        .outerjoin(StudyResult, _latest_join())
        .where(Study.study_instance_uid == study_uid)
    ).first()
    return row[0] if row else None
