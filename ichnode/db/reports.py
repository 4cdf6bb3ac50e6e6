"""Report state of result versions, and the report objects built for them.

Written like :mod:`ichnode.db.queue`: every function takes a ``Session``, runs its statements
in the caller's transaction and never commits. This is the only module that changes
``study_results.report_status`` (the monitor inserts a version as ``pending``).

A reporter claims a pending version with one statement, ``UPDATE study_results SET
report_claim_token = ..., report_lease_expires_at = <lease end> WHERE id IN (SELECT id ... FOR
UPDATE SKIP LOCKED LIMIT n) RETURNING id``, commits, builds the objects with no transaction
open (Grad-CAM and the SR take a second or more), and records them with :func:`record`, which
marks the version done only if the claim still holds. A claim whose reporter died lapses with
its lease; a passing failure hands the version back with a time before which nobody retries it
(:func:`retry_at`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from ichnode.db import context
from ichnode.db.engine import is_postgresql, rowcount
from ichnode.db.models import (
    Instance,
    OutboxEntry,
    ReportObject,
    ReportStatus,
    Series,
    Study,
    StudyResult,
    utcnow,
)
from ichnode.report_kind import ReportKind


@dataclass(frozen=True)
class Claimed:
    """A result version this reporter may build, and the token that lets it record them."""

    result_id: int
    claim_token: str


@dataclass(frozen=True)
class StoredObject:
    """A report object in the store: what a later one refers to (a predecessor, a series),
    and what :func:`record` records."""

    kind: ReportKind
    sop_class_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    path: str


@dataclass(frozen=True)
class Inputs:
    """What building one version's objects reads from the database, in one short read."""

    result: StudyResult
    study_uid: str
    #: The study's latest version (a newer one than ``result.version`` supersedes it).
    latest_version: int
    calling_ae: str | None
    calling_address: str | None
    #: The key slice: (instance id, SOP Instance UID, stored path or None).
    key: tuple[int, str, str | None] | None
    #: (SOPClassUID, SOPInstanceUID, SeriesInstanceUID) of every stored instance of the study.
    evidence: list[tuple[str, str, str]]
    #: The newest earlier object of each kind of this study.
    previous: dict[ReportKind, StoredObject]
    #: The key slice's neighbours' stored paths for a 2.5-D checkpoint (None: none there).
    neighbour_paths: list[str | None]


@dataclass(frozen=True)
class Address:
    """Where one outbox row sends an object: a configured destination or the sender."""

    destination: str
    ae_title: str
    host: str
    port: int
    kinds: tuple[ReportKind, ...]
    #: A DICOMweb destination's STOW-RS URL; None for DIMSE.
    url: str | None = None


def _claimable(now: datetime) -> ColumnElement[bool]:
    return (StudyResult.report_status == ReportStatus.PENDING) & or_(
        StudyResult.report_lease_expires_at.is_(None), StudyResult.report_lease_expires_at <= now
    )


def claim(
    session: Session,
    lease_seconds: float,
    *,
    limit: int = 1,
    result_id: int | None = None,
    now: datetime | None = None,
) -> list[Claimed]:
    """Claim up to ``limit`` pending versions (oldest first; only ``result_id`` when given)
    whose lease is free, for ``lease_seconds``. Commit before building."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    now = now or utcnow()
    candidates = select(StudyResult.id).where(_claimable(now))
    if result_id is not None:
        candidates = candidates.where(StudyResult.id == result_id)
    candidates = candidates.order_by(StudyResult.id).limit(limit)
    if is_postgresql(session):
        candidates = candidates.with_for_update(skip_locked=True)
    token = uuid.uuid4().hex
    ids = session.scalars(
        update(StudyResult)
        .where(StudyResult.id.in_(candidates))
        .values(
            report_claim_token=token,
            report_lease_expires_at=now + timedelta(seconds=lease_seconds),
        )
        .returning(StudyResult.id),
        execution_options={"synchronize_session": False},
    ).all()
    return [Claimed(i, token) for i in sorted(ids)]


def _holds(claimed: Claimed) -> ColumnElement[bool]:
    return (
        (StudyResult.id == claimed.result_id)
        & (StudyResult.report_claim_token == claimed.claim_token)
        & (StudyResult.report_status == ReportStatus.PENDING)
    )


def finish(
    session: Session, claimed: Claimed, status: ReportStatus, error: str | None = None
) -> bool:
    """Set a claimed version's final state (done, failed, superseded); False when the claim
    was lost (its lease ended and another reporter took it)."""
    return bool(
        rowcount(
            session.execute(
                update(StudyResult)
                .where(_holds(claimed))
                .values(
                    report_status=status,
                    report_error=error,
                    report_claim_token=None,
                    report_lease_expires_at=None,
                ),
                execution_options={"synchronize_session": False},
            )
        )
    )


def retry_at(session: Session, claimed: Claimed, when: datetime) -> bool:
    """Hand a claimed version back, to be claimed again from ``when`` (a passing failure)."""
    return bool(
        rowcount(
            session.execute(
                update(StudyResult)
                .where(_holds(claimed))
                .values(report_claim_token=None, report_lease_expires_at=when),
                execution_options={"synchronize_session": False},
            )
        )
    )


def rebuild(session: Session, result_id: int) -> bool:
    """Set a FAILED version back to pending, due now (``ichnode resend`` once its cause was
    put right); False when it was not failed."""
    return bool(
        rowcount(
            session.execute(
                update(StudyResult)
                .where(
                    StudyResult.id == result_id, StudyResult.report_status == ReportStatus.FAILED
                )
                .values(
                    report_status=ReportStatus.PENDING,
                    report_error=None,
                    report_claim_token=None,
                    report_lease_expires_at=None,
                ),
                execution_options={"synchronize_session": False},
            )
        )
    )


def inputs(session: Session, result_id: int, context_slices: int) -> Inputs | None:
    """Everything :mod:`ichnode.report.assemble` needs from the database for one version
    (``context_slices``: the checkpoint's 2.5-D context); None for an unknown version."""
    result = session.get(StudyResult, result_id)
    if result is None:
        return None
    study = session.get_one(Study, result.study_id)
    key = None
    if result.key_instance_id is not None:
        row = session.execute(
            select(Instance.id, Instance.sop_instance_uid, Instance.path).where(
                Instance.id == result.key_instance_id
            )
        ).first()
        key = None if row is None else (row[0], row[1], row[2])
    evidence = session.execute(
        select(Instance.sop_class_uid, Instance.sop_instance_uid, Series.series_instance_uid)
        .join(Series, Series.id == Instance.series_id)
        .where(Instance.study_id == study.id, Instance.path.is_not(None))
        .order_by(Instance.id)
    ).all()
    neighbours: list[str | None] = []
    if key is not None and context_slices:
        neighbours = context.planes(session, [key[0]], context_slices)[key[0]].neighbour_paths
    return Inputs(
        result=result,
        study_uid=study.study_instance_uid,
        latest_version=study.result_version,
        calling_ae=study.calling_ae,
        calling_address=study.calling_address,
        key=key,
        evidence=[(a, b, c) for a, b, c in evidence],
        previous=previous_objects(session, study.id, result.version),
        neighbour_paths=neighbours,
    )


def previous_objects(
    session: Session, study_id: int, version: int
) -> dict[ReportKind, StoredObject]:
    """The newest object of each kind built for an earlier version of the study."""
    rows = session.scalars(
        select(ReportObject)
        .join(StudyResult, StudyResult.id == ReportObject.study_result_id)
        .where(StudyResult.study_id == study_id, StudyResult.version < version)
        .order_by(StudyResult.version.desc(), ReportObject.id.desc())
    )
    found: dict[ReportKind, StoredObject] = {}
    for row in rows:
        found.setdefault(row.kind, _ref(row))
    return found


def _ref(row: ReportObject) -> StoredObject:
    return StoredObject(
        row.kind, row.sop_class_uid, row.series_instance_uid, row.sop_instance_uid, row.path
    )


def record(
    session: Session,
    claimed: Claimed,
    objects: Sequence[StoredObject],
    addresses: Iterable[Address],
) -> list[OutboxEntry] | None:
    """Store a claimed version's objects, one outbox row per (address, object it wants) in
    :class:`ReportKind` order, and mark the version done. None (and nothing kept: the caller
    rolls back) when the claim was lost."""
    rows = {
        o.kind: ReportObject(
            study_result_id=claimed.result_id,
            kind=o.kind,
            sop_class_uid=o.sop_class_uid,
            series_instance_uid=o.series_instance_uid,
            sop_instance_uid=o.sop_instance_uid,
            path=o.path,
        )
        for o in objects
    }
    session.add_all(rows.values())
    session.flush()
    entries = [
        OutboxEntry(
            report_object_id=rows[kind].id,
            destination=a.destination,
            ae_title=a.ae_title,
            host=a.host,
            port=a.port,
            url=a.url,
        )
        for a in addresses
        for kind in ReportKind
        if kind in a.kinds and kind in rows
    ]
    session.add_all(entries)
    session.flush()
    if not finish(session, claimed, ReportStatus.DONE):
        return None
    return entries


def objects_of(session: Session, result_id: int) -> list[StoredObject]:
    """The objects built for a version, in the order they were built."""
    return [
        _ref(row)
        for row in session.scalars(
            select(ReportObject)
            .where(ReportObject.study_result_id == result_id)
            .order_by(ReportObject.id)
        )
    ]
