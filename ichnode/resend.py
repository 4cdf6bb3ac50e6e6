"""``ichnode resend``: queue a study's latest report objects again, or have them rebuilt.

An operator command (no torch): the running node's outbox sends what this queues, and its
reporter builds what this sets back to pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from ichnode.config import Settings
from ichnode.db import delivery, notifications, reports, results
from ichnode.db.models import ReportStatus, utcnow
from ichnode.errors import IchnodeError
from ichnode.store import Store


class DeliveryError(IchnodeError):
    """Report objects cannot be queued again (unknown study, nothing built, files missing)."""


@dataclass(frozen=True)
class Resent:
    """What ``ichnode resend`` did: rows queued again, or a rebuild asked of the node."""

    version: int
    queued: int = 0
    #: Result notifications (HL7 v2, FHIR) queued again.
    notified: int = 0
    #: True when the version had no objects and is now pending: the running node builds them.
    rebuild: bool = False
    #: Why the last build failed (when ``rebuild``).
    error: str | None = None


def resend(session: Session, store: Store, study_uid: str) -> Resent:
    """Queue the latest result version's report objects and notifications again, as new
    PENDING rows.

    One new row per (destination, object) of that version, with the address it had. When that
    version has no objects because building them failed, it is set back to pending so the
    running node builds them again (after the cause, e.g. a missing file, was put right).
    Raises :class:`DeliveryError` for an unknown study, a version with nothing to send, or a
    file no longer in the store. The caller commits.
    """
    study = results.study_by_uid(session, study_uid)
    if study is None:
        raise DeliveryError(f"no study {study_uid} in the database")
    result = results.latest_result(session, study)
    if result is None:
        raise DeliveryError(f"study {study_uid} has no result yet")
    latest = delivery.latest_queued(session, result.id)
    notified = notifications.resend(session, result.id, utcnow())
    if not latest and notified:
        return Resent(result.version, notified=notified)
    if not latest:
        if result.report_status == ReportStatus.FAILED:
            error = result.report_error
            reports.rebuild(session, result.id)
            return Resent(result.version, rebuild=True, error=error)
        if result.report_status == ReportStatus.PENDING:
            raise DeliveryError(
                f"study {study_uid} v{result.version}: report objects not built yet "
                "(the running node builds them)"
            )
        raise DeliveryError(f"study {study_uid} has no report objects to send")
    for row in latest:
        if not store.path(row.path).is_file():
            raise DeliveryError(f"report file {row.path} is missing from the store")
    queued = delivery.enqueue(session, latest, utcnow())
    return Resent(result.version, queued=queued, notified=notified)


def resend_study(settings: Settings, study_uid: str) -> Resent:
    """``ichnode resend``: open the database, queue the study's objects again, commit."""
    from ichnode.db.session import open_database

    if not Path(settings.store).is_dir():
        raise DeliveryError(f"store {settings.store} does not exist")
    engine, sessions = open_database(settings, create=False)
    try:
        with sessions.begin() as session:
            return resend(session, Store(settings.store), study_uid)
    finally:
        engine.dispose()
