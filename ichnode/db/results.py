"""Study results: when a study is stable, writing its next version, and reading them back.

Callers own the transaction (as in :mod:`ichnode.db.queue`). The monitor
(:mod:`ichnode.node.monitor`) decides *what* a result is; this module holds the statements it
runs, and those of ``ichnode results`` and the HTTP API (:mod:`ichnode.results`).

A monitor claims a stable study as the worker claims instances (:mod:`ichnode.db.queue`): one
statement, ``UPDATE studies SET result_claim_token=..., result_lease_expires_at=<lease end>
WHERE id IN (SELECT id ... FOR UPDATE SKIP LOCKED LIMIT n) RETURNING``, so two monitors on one
database never compute the same study, and a study whose monitor died is taken by another once
the lease ends. The version is written under the claim and an optimistic guard
(:func:`close_study`): the study becomes ``resulted`` only if the claim still holds, it is still
receiving and its ``last_received_at`` did not move since the monitor read it, so a slice
arriving meanwhile leaves it open for the next version and a monitor whose lease lapsed writes
nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from ichnode.db.engine import is_postgresql, rowcount
from ichnode.db.models import (
    Instance,
    InstanceStatus,
    OutboxEntry,
    ReportObject,
    Series,
    Study,
    StudyResult,
    StudyStatus,
    utcnow,
)

#: Instance states that keep a study from being stable.
PENDING = (InstanceStatus.QUEUED, InstanceStatus.CLAIMED)


# --------------------------------------------------------------------------- the monitor


@dataclass(frozen=True)
class ClaimedStudy:
    """A stable study this monitor may result, and the token that lets it write the version."""

    study_id: int
    claim_token: str


def _stable(before: datetime, now: datetime) -> ColumnElement[bool]:
    """Receiving, quiet since ``before``, no instance left to score, and no monitor's lease."""
    pending = exists().where(Instance.study_id == Study.id, Instance.status.in_(PENDING))
    return and_(
        Study.status == StudyStatus.RECEIVING,
        Study.last_received_at <= before,
        ~pending,
        or_(Study.result_lease_expires_at.is_(None), Study.result_lease_expires_at <= now),
    )


def stable_studies(session: Session, before: datetime, now: datetime | None = None) -> list[int]:
    """Ids of the studies :func:`claim_stable` would take now (a read: no lock, no write)."""
    return list(session.scalars(select(Study.id).where(_stable(before, now or utcnow()))))


def claim_stable(
    session: Session,
    before: datetime,
    lease_seconds: float,
    *,
    limit: int = 1,
    skip: Collection[int] = (),
    now: datetime | None = None,
) -> list[ClaimedStudy]:
    """Claim up to ``limit`` stable studies (quietest first; none in ``skip``) for
    ``lease_seconds``. Commit before computing their results."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    now = now or utcnow()
    candidates = select(Study.id).where(_stable(before, now))
    if skip:
        candidates = candidates.where(Study.id.not_in(list(skip)))
    candidates = candidates.order_by(Study.last_received_at, Study.id).limit(limit)
    if is_postgresql(session):
        candidates = candidates.with_for_update(skip_locked=True)
    token = uuid.uuid4().hex
    ids = session.scalars(
        update(Study)
        .where(Study.id.in_(candidates))
        .values(
            result_claim_token=token,
            result_lease_expires_at=now + timedelta(seconds=lease_seconds),
        )
        .returning(Study.id),
        execution_options={"synchronize_session": False},
    ).all()
    return [ClaimedStudy(i, token) for i in sorted(ids)]


def _holds(claimed: ClaimedStudy) -> ColumnElement[bool]:
    return (Study.id == claimed.study_id) & (Study.result_claim_token == claimed.claim_token)


def release_study(session: Session, claimed: ClaimedStudy) -> bool:
    """Give a claimed study back (its result was not written); False when it was not ours."""
    return bool(
        rowcount(
            session.execute(
                update(Study)
                .where(_holds(claimed))
                .values(result_claim_token=None, result_lease_expires_at=None),
                execution_options={"synchronize_session": False},
            )
        )
    )


def last_received(session: Session, study_ids: Sequence[int]) -> dict[int, datetime]:
    """``last_received_at`` of each of the studies (missing ones left out)."""
    if not study_ids:
        return {}
    rows = session.execute(
        select(Study.id, Study.last_received_at).where(Study.id.in_(list(study_ids)))
    )
    return {study_id: last for study_id, last in rows}


def receiving_study(session: Session, study_id: int) -> Study | None:
    """The study, if it exists and is still receiving."""
    study = session.get(Study, study_id)
    return study if study is not None and study.status == StudyStatus.RECEIVING else None


def close_study(session: Session, claimed: ClaimedStudy, seen_last: datetime, version: int) -> bool:
    """Mark the study resulted at ``version`` if the claim still holds and nothing arrived
    since ``seen_last``; the claim ends with it."""
    return bool(
        rowcount(
            session.execute(
                update(Study)
                .where(
                    _holds(claimed),
                    Study.last_received_at == seen_last,
                    Study.status == StudyStatus.RECEIVING,
                )
                .values(
                    status=StudyStatus.RESULTED,
                    result_version=version,
                    result_claim_token=None,
                    result_lease_expires_at=None,
                )
            )
        )
    )


def add_result(session: Session, result: StudyResult) -> StudyResult:
    """Insert a result version (its report state starts ``pending``); returns it with its id."""
    session.add(result)
    session.flush()
    return result


def next_stable_at(session: Session, now: datetime, stable_seconds: float) -> datetime | None:
    """When the next receiving study will have been quiet for ``stable_seconds``."""
    latest_quiet = session.scalar(
        select(func.min(Study.last_received_at)).where(
            Study.status == StudyStatus.RECEIVING,
            Study.last_received_at > now - timedelta(seconds=stable_seconds),
        )
    )
    return None if latest_quiet is None else latest_quiet + timedelta(seconds=stable_seconds)


def study_uid(session: Session, study_id: int) -> str | None:
    """The Study Instance UID of a study id (for a log line's hash)."""
    return session.scalar(select(Study.study_instance_uid).where(Study.id == study_id))


# --------------------------------------------------------------------------- reading results


def study_by_uid(session: Session, uid: str) -> Study | None:
    return session.scalar(select(Study).where(Study.study_instance_uid == uid))


def latest_result(session: Session, study: Study) -> StudyResult | None:
    """The study's newest result version (None before its first)."""
    if not study.result_version:
        return None
    return session.scalar(
        select(StudyResult).where(
            StudyResult.study_id == study.id, StudyResult.version == study.result_version
        )
    )


def instance_count(session: Session, study_id: int) -> int:
    return session.scalar(select(func.count()).where(Instance.study_id == study_id)) or 0


def sop_uid_of(session: Session, instance_id: int) -> str | None:
    return session.scalar(select(Instance.sop_instance_uid).where(Instance.id == instance_id))


@dataclass(frozen=True)
class StudyQuery:
    """Which studies ``ichnode results`` lists: ``flagged`` keeps those whose latest result
    is (or is not) flagged, ``accession`` those with that accession number; None: all."""

    flagged: bool | None = None
    since: datetime | None = None
    accession: str | None = None
    limit: int | None = 50
    offset: int = 0


def studies(session: Session, q: StudyQuery) -> list[Study]:
    """The studies ``q`` selects, newest first."""
    query = select(Study).order_by(Study.last_received_at.desc(), Study.id.desc())
    if q.since is not None:
        query = query.where(Study.last_received_at >= q.since)
    if q.accession is not None:
        query = query.where(Study.accession_number == q.accession.strip())
    if q.flagged is not None:
        query = query.join(
            StudyResult,
            (StudyResult.study_id == Study.id) & (StudyResult.version == Study.result_version),
        ).where(StudyResult.flagged.is_(q.flagged))
    query = query.offset(q.offset)
    if q.limit is not None:
        query = query.limit(q.limit)
    return list(session.scalars(query))


def accession_numbers(session: Session, study_uids: Sequence[str]) -> dict[str, str | None]:
    """The accession number of each study."""
    if not study_uids:
        return {}
    rows = session.execute(
        select(Study.study_instance_uid, Study.accession_number).where(
            Study.study_instance_uid.in_(list(study_uids))
        )
    ).all()
    return {uid: accession for uid, accession in rows}


def instances(session: Session, study_id: int) -> list[Instance]:
    """The study's instances with their predictions and series loaded (unordered)."""
    return list(
        session.scalars(
            select(Instance)
            .where(Instance.study_id == study_id)
            .options(selectinload(Instance.predictions), selectinload(Instance.series))
        )
    )


def versions(session: Session, study_id: int) -> list[StudyResult]:
    """Every result version of the study, oldest first."""
    return list(
        session.scalars(
            select(StudyResult)
            .where(StudyResult.study_id == study_id)
            .order_by(StudyResult.version)
        )
    )


def deliveries(session: Session, study_id: int) -> list[tuple[OutboxEntry, ReportObject, int]]:
    """Every outbox row of the study (all versions, oldest first): (row, its object, version)."""
    return [
        (entry, obj, version)
        for entry, obj, version in session.execute(
            select(OutboxEntry, ReportObject, StudyResult.version)
            .join(ReportObject, ReportObject.id == OutboxEntry.report_object_id)
            .join(StudyResult, StudyResult.id == ReportObject.study_result_id)
            .where(StudyResult.study_id == study_id)
            .order_by(OutboxEntry.id)
        )
    ]


def series_of(session: Session, study_id: int) -> list[tuple[Series, int]]:
    """The study's series in arrival order, each with its number of instances."""
    counts = dict(
        session.execute(
            select(Instance.series_id, func.count())
            .where(Instance.study_id == study_id)
            .group_by(Instance.series_id)
        ).all()
    )
    return [
        (s, counts.get(s.id, 0))
        for s in session.scalars(
            select(Series).where(Series.study_id == study_id).order_by(Series.id)
        )
    ]


def instance_file(session: Session, sop_uid: str) -> tuple[int, str | None] | None:
    """An instance's id and stored path (None: nothing stored) by its SOP Instance UID."""
    row = session.execute(
        select(Instance.id, Instance.path).where(Instance.sop_instance_uid == sop_uid)
    ).first()
    return None if row is None else (row[0], row[1])
