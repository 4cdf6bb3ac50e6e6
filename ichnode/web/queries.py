"""Worklist queries on top of :mod:`ichnode.results`: triage order, states, patient block.

The study dicts are :func:`ichnode.results.summary_of` / :func:`~ichnode.results.study_detail`
(the documented results contract) plus three keys of the web layer: ``state`` (the worklist
state, :class:`WorklistState`), ``patient`` (identifiers, or None when hidden) and, in the
detail, ``series`` and ``deliveries`` (unless the results layer already provides them).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, case, exists, func, select
from sqlalchemy.orm import Session, aliased

from ichnode.db.models import (
    DeliveryStatus,
    Instance,
    OutboxEntry,
    Series,
    Study,
    StudyResult,
    StudyStatus,
)
from ichnode.results import study_detail, summary_of


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


def _outbox_has(status: DeliveryStatus) -> Any:
    return exists().where(
        OutboxEntry.study_result_id == StudyResult.id, OutboxEntry.status == status
    )


def _state_expression() -> Any:
    """SQL for the :class:`WorklistState` of a study joined to its latest result."""
    return case(
        (Study.status == StudyStatus.RECEIVING, WorklistState.RECEIVING.value),
        (StudyResult.id.is_(None), WorklistState.RECEIVING.value),
        (_outbox_has(DeliveryStatus.FAILED), WorklistState.DELIVERY_FAILED.value),
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


def patient_block(study: Study, show: bool) -> dict[str, Any] | None:
    """The identifiers shown beside a study, or None when the node hides them."""
    if not show:
        return None
    return {
        "patient_name": study.patient_name,
        "patient_id": study.patient_id,
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "study_time": study.study_time,
        "patient_sex": study.patient_sex,
        "patient_age": study.patient_age,
        "study_description": study.study_description,
    }


def worklist(
    session: Session,
    *,
    flagged: bool | None = None,
    since: datetime | None = None,
    state: WorklistState | None = None,
    accession: str | None = None,
    order: Order = Order.TRIAGE,
    limit: int = 50,
    offset: int = 0,
    show_patient_identifiers: bool = True,
) -> tuple[int, list[dict[str, Any]]]:
    """``(total matching, one page of study summaries)`` in ``order``."""
    state_sql = _state_expression().label("state")
    n_instances = (
        select(func.count())
        .select_from(Instance)
        .where(Instance.study_id == Study.id)
        .correlate(Study)
        .scalar_subquery()
    )
    key = aliased(Instance)
    query = (
        select(Study, state_sql, StudyResult, n_instances, key.sop_instance_uid)
        .outerjoin(StudyResult, _latest_join())
        .outerjoin(key, key.id == StudyResult.key_instance_id)
    )
    if since is not None:
        query = query.where(Study.last_received_at >= since)
    if accession is not None:
        query = query.where(Study.accession_number == accession.strip())
    if flagged is not None:
        query = query.where(StudyResult.flagged.is_(flagged))
    if state is not None:
        query = query.where(state_sql == state.value)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if order is Order.TRIAGE:
        flagged_first = case((StudyResult.flagged.is_(True), 0), else_=1)
        query = query.order_by(
            flagged_first,
            StudyResult.p_any.desc().nulls_last(),
            Study.last_received_at.desc(),
            Study.id.desc(),
        )
    else:
        query = query.order_by(Study.last_received_at.desc(), Study.id.desc())
    rows = session.execute(query.offset(offset).limit(limit)).all()
    out = []
    for study, study_state, result, count, key_uid in rows:  # one statement for the page
        summary = summary_of(study, result, count or 0, key_uid)
        summary["state"] = study_state
        summary["patient"] = patient_block(study, show_patient_identifiers)
        out.append(summary)
    return total, out


def state_of(session: Session, study_uid: str) -> str | None:
    row = session.execute(
        select(_state_expression())
        .select_from(Study)
        .outerjoin(StudyResult, _latest_join())
        .where(Study.study_instance_uid == study_uid)
    ).first()
    return row[0] if row else None


def detail(
    session: Session, study_uid: str, *, show_patient_identifiers: bool = True
) -> dict[str, Any] | None:
    """:func:`ichnode.results.study_detail` plus state, patient, series and deliveries."""
    out = study_detail(session, study_uid)
    if out is None:
        return None
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    assert study is not None
    out["state"] = state_of(session, study_uid)
    out["patient"] = patient_block(study, show_patient_identifiers)
    counts = dict(
        session.execute(
            select(Instance.series_id, func.count())
            .where(Instance.study_id == study.id)
            .group_by(Instance.series_id)
        ).all()
    )
    out["series"] = [
        {
            "series_instance_uid": s.series_instance_uid,
            "modality": s.modality,
            "series_description": s.series_description if show_patient_identifiers else None,
            "n_instances": counts.get(s.id, 0),
        }
        for s in session.scalars(
            select(Series).where(Series.study_id == study.id).order_by(Series.id)
        )
    ]
    out.setdefault("deliveries", [])  # the results layer lists them (ichnode.results)
    return out
