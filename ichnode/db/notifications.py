"""The notification outbox: result versions to announce to ``[[notify]]`` receivers.

Written like :mod:`ichnode.db.delivery`: every function takes a ``Session``, runs in the
caller's transaction and never commits. :func:`enqueue` runs in the transaction that writes a
result version (so a notification is never lost between the two); :func:`claim` is one
``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n) RETURNING``, pushing the
row a lease ahead with a token only its holder can record an attempt with.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ichnode.db.delivery import settle
from ichnode.db.engine import is_postgresql
from ichnode.db.models import (
    DeliveryStatus,
    Notification,
    NotificationAttempt,
    NotifyKind,
    Study,
    StudyResult,
    nul_free,
    utcnow,
)


@dataclass(frozen=True)
class Wanted:
    """A receiver that wants result versions: its name, its message kind, flagged only."""

    target: str
    kind: NotifyKind
    flagged_only: bool


def enqueue(
    session: Session, result: StudyResult, receivers: Iterable[Wanted], now: datetime
) -> list[Notification]:
    """One PENDING notification per receiver that wants this version (scored versions only:
    with no probability there is nothing to announce)."""
    if result.p_any is None:
        return []
    rows = [
        Notification(
            study_result_id=result.id,
            target=r.target,
            kind=r.kind,
            next_attempt_at=now,
            created_at=now,
        )
        for r in receivers
        if result.flagged or not r.flagged_only
    ]
    session.add_all(rows)
    session.flush()
    return rows


@dataclass(frozen=True)
class Claimed:
    """A notification this notifier may send, and the token that lets it record the attempt."""

    id: int
    study_result_id: int
    target: str
    kind: NotifyKind
    claim_token: str


def claim(session: Session, now: datetime, limit: int, lease_seconds: float) -> list[Claimed]:
    """Claim up to ``limit`` due notifications, earliest due first, for ``lease_seconds``."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    candidates = (
        select(Notification.id)
        .where(Notification.status == DeliveryStatus.PENDING, Notification.next_attempt_at <= now)
        .order_by(Notification.next_attempt_at, Notification.id)
        .limit(limit)
    )
    if is_postgresql(session):
        candidates = candidates.with_for_update(skip_locked=True)
    token = uuid.uuid4().hex
    rows = session.execute(
        update(Notification)
        .where(Notification.id.in_(candidates))
        .values(next_attempt_at=now + timedelta(seconds=lease_seconds), claim_token=token)
        .returning(
            Notification.id, Notification.study_result_id, Notification.target, Notification.kind
        ),
        execution_options={"synchronize_session": False},
    ).all()
    return sorted((Claimed(*row, claim_token=token) for row in rows), key=lambda c: c.id)


def record(
    session: Session,
    claimed: Claimed,
    response: str | None,
    error: str | None,
    *,
    now: datetime,
    max_attempts: int,
    backoff_seconds: float,
    backoff_max_seconds: float = math.inf,
) -> DeliveryStatus | None:
    """Record one attempt (delivered when ``error`` is None) and set the next state: sent,
    failed after ``max_attempts``, or due again after ``backoff_seconds * 2**(n-1)``, at most
    ``backoff_max_seconds``. None when the claim was lost."""
    row = session.scalar(
        select(Notification)
        .where(
            Notification.id == claimed.id,
            Notification.claim_token == claimed.claim_token,
            Notification.status == DeliveryStatus.PENDING,
        )
        .with_for_update()
    )
    if row is None:
        return None
    row.attempts += 1
    row.claim_token = None
    session.add(
        NotificationAttempt(
            notification_id=row.id,
            at=utcnow(),
            response=nul_free(response),
            error=nul_free(error),
        )
    )
    return settle(
        row, error is None, error, now, max_attempts, backoff_seconds, backoff_max_seconds
    )


def next_due(session: Session) -> datetime | None:
    """When the earliest pending notification is due; None if there is none."""
    return session.scalar(
        select(func.min(Notification.next_attempt_at)).where(
            Notification.status == DeliveryStatus.PENDING
        )
    )


def subject(session: Session, result_id: int) -> tuple[Study, StudyResult] | None:
    """The study and result version a notification announces."""
    row = session.execute(
        select(Study, StudyResult)
        .join(StudyResult, StudyResult.study_id == Study.id)
        .where(StudyResult.id == result_id)
    ).first()
    return None if row is None else (row[0], row[1])


def of_study(session: Session, study_id: int) -> list[tuple[Notification, int]]:
    """Every notification of the study (all versions, oldest first) with its version."""
    return [
        (row, version)
        for row, version in session.execute(
            select(Notification, StudyResult.version)
            .join(StudyResult, StudyResult.id == Notification.study_result_id)
            .where(StudyResult.study_id == study_id)
            .order_by(Notification.id)
        )
    ]


def resend(session: Session, result_id: int, now: datetime) -> int:
    """Queue the version's notifications again: one new PENDING row per (receiver, kind)."""
    pairs = session.execute(
        select(Notification.target, Notification.kind)
        .where(Notification.study_result_id == result_id)
        .distinct()
    ).all()
    session.add_all(
        Notification(
            study_result_id=result_id, target=t, kind=k, next_attempt_at=now, created_at=now
        )
        for t, k in pairs
    )
    session.flush()
    return len(pairs)


def attempts(
    session: Session, since: datetime | None = None, limit: int = 100
) -> list[tuple[NotificationAttempt, Notification]]:
    """The latest notification attempts (newest first), each with its notification."""
    query = (
        select(NotificationAttempt, Notification)
        .join(Notification, Notification.id == NotificationAttempt.notification_id)
        .order_by(NotificationAttempt.at.desc(), NotificationAttempt.id.desc())
    )
    if since is not None:
        query = query.where(NotificationAttempt.at >= since)
    return [(a, n) for a, n in session.execute(query.limit(limit))]
