"""What QIDO-RS finds: the studies ichnode produced report objects for, and their series.

Callers own the session. Only studies with at least one report object are found: QIDO-RS on
ichnode answers "where are the results", it is not an archive of the received images.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ichnode.db.models import ReportKind, ReportObject, Study, StudyResult


@dataclass(frozen=True)
class ProducedSeries:
    """One series of report objects: its UID, the kind of its objects, how many."""

    series_instance_uid: str
    kind: ReportKind
    instances: int


def produced_studies(
    session: Session,
    *,
    study_uid: str | None = None,
    patient_id: str | None = None,
    accession_number: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[tuple[Study, int]]:
    """Studies with report objects matching the exact keys given, newest first, each with
    its number of report series."""
    series_count = func.count(func.distinct(ReportObject.series_instance_uid))
    query = (
        select(Study, series_count)
        .join(StudyResult, StudyResult.study_id == Study.id)
        .join(ReportObject, ReportObject.study_result_id == StudyResult.id)
        .group_by(Study.id)
        .order_by(Study.last_received_at.desc(), Study.id.desc())
    )
    if study_uid is not None:
        query = query.where(Study.study_instance_uid == study_uid)
    if patient_id is not None:
        query = query.where(Study.patient_id == patient_id)
    if accession_number is not None:
        query = query.where(Study.accession_number == accession_number)
    return [(study, n) for study, n in session.execute(query.limit(limit).offset(offset))]


def produced_series(session: Session, study_uid: str) -> list[ProducedSeries]:
    """The report series of one study (oldest first)."""
    rows = session.execute(
        select(
            ReportObject.series_instance_uid,
            ReportObject.kind,
            func.count(ReportObject.id),
            func.min(ReportObject.id),
        )
        .join(StudyResult, StudyResult.id == ReportObject.study_result_id)
        .join(Study, Study.id == StudyResult.study_id)
        .where(Study.study_instance_uid == study_uid)
        .group_by(ReportObject.series_instance_uid, ReportObject.kind)
        .order_by(func.min(ReportObject.id))
    )
    return [ProducedSeries(uid, kind, n) for uid, kind, n, _ in rows]


@dataclass(frozen=True)
class ProducedInstance:
    """One report object of a study: its series, SOP class and instance, kind and file."""

    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    kind: ReportKind
    #: Relative to the store root.
    path: str


def produced_instances(
    session: Session,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> list[ProducedInstance]:
    """The report objects of one study (of one series, or one instance), oldest first."""
    query = (
        select(
            ReportObject.series_instance_uid,
            ReportObject.sop_class_uid,
            ReportObject.sop_instance_uid,
            ReportObject.kind,
            ReportObject.path,
        )
        .join(StudyResult, StudyResult.id == ReportObject.study_result_id)
        .join(Study, Study.id == StudyResult.study_id)
        .where(Study.study_instance_uid == study_uid)
        .order_by(ReportObject.id)
    )
    if series_uid is not None:
        query = query.where(ReportObject.series_instance_uid == series_uid)
    if sop_uid is not None:
        query = query.where(ReportObject.sop_instance_uid == sop_uid)
    return [ProducedInstance(*row) for row in session.execute(query)]
