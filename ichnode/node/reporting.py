"""The reporter: build, store and queue the report objects of each new result version.

For each result version the node builds what its destinations want -- the SR (always when
one wants ``sr``), the summary image with a Grad-CAM overlay, the KOS (positive studies only)
-- writes each into the store (``<study>/<series>/<sop>.dcm``, the study's folder, the
object's own series), records it in ``report_objects`` so it can be referred to and sent
again, and inserts one outbox row per (object, destination). The outbox sends them.

Each result version carries its report state (``study_results.report_status``): ``pending``
when the monitor writes it, ``done`` in the same transaction that records the objects. The
:class:`Reporter` thread claims pending versions under a lease (:mod:`ichnode.db.reports`) --
woken by the monitor, and at start-up and every few seconds for the ones a crash or a
transient failure (full disk, database down) left behind -- and builds them with no
transaction open, so a result is reported once even if the node dies in between, and two
nodes on one database never both build it. A version that cannot be built (its key slice is
gone, another model scored it) is marked ``failed`` with the reason; one that a newer version
of its study overtook is ``superseded``.

Which objects and where (:mod:`ichnode.report.assemble`) is decided without the database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta

import pydicom
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ichnode.config import Settings
from ichnode.db import reports
from ichnode.db.engine import error_reason
from ichnode.db.models import ReportStatus, utcnow
from ichnode.errors import IchnodeError
from ichnode.imaging import read_neighbours
from ichnode.model import Checkpoint
from ichnode.node.loop import run_loop
from ichnode.report import to_bytes
from ichnode.report.assemble import (
    ReportingError,
    build_objects,
    delivery_targets,
    evidence_sources,
    fill_type2,
    findings_of,
    reference,
    wanted,
)
from ichnode.store import Store, StoreError, uid_hash

log = logging.getLogger(__name__)

#: Seconds between catch-up passes when nothing wakes the reporter.
POLL_SECONDS = 5.0
#: Wait before retrying a version whose build failed for a passing reason (doubles, capped).
RETRY_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0
#: How long a claimed version stays with its reporter (a build takes seconds; a reporter
#: that died mid-build leaves it to another after this).
LEASE_SECONDS = 120.0

#: The checkpoint reports are built with, or a callable returning the one served now.
Checkpoints = Checkpoint | Callable[[], Checkpoint]


class _Lost(Exception):
    """The claim lapsed and another reporter took the version; drop what this one built."""


def _why(exc: Exception) -> str:
    """Why a stored file could not be read, without its path (paths hold UIDs)."""
    reason = getattr(exc, "strerror", None) or type(exc).__name__
    return f"stored file unreadable ({reason})"


def forget(store: Store, paths: Iterable[str]) -> None:
    """Remove report files that no outbox row will point at."""
    for path in set(paths):
        try:
            store.remove(path)
        except (OSError, ValueError) as exc:
            log.warning("could not remove an unused report file: %s", type(exc).__name__)


def build_and_record(
    sessions: sessionmaker[Session],
    store: Store,
    settings: Settings,
    checkpoint: Checkpoint,
    claimed: reports.Claimed,
    written: list[str],
) -> ReportStatus:
    """Build a claimed version's objects, write them (their paths appended to ``written``)
    and record them with its new state in one transaction. Raises :class:`_Lost` when the
    claim lapsed, :class:`ReportingError` (or a builder's error) when it cannot be built."""
    with sessions() as session:
        facts = reports.inputs(session, claimed.result_id, checkpoint.spec.context)
    if facts is None:
        raise ReportingError(f"no study result {claimed.result_id}")
    result, tag = facts.result, uid_hash(facts.study_uid)
    if facts.latest_version > result.version:
        log.info(
            "study %s v%d: superseded by v%d before its report objects were built",
            tag,
            result.version,
            facts.latest_version,
        )
        return _finish(sessions, claimed, ReportStatus.SUPERSEDED)
    if not result.n_scored or facts.key is None or result.p_any is None:
        log.info("study %s v%d: no scored slice, no report objects", tag, result.version)
        return _finish(sessions, claimed, ReportStatus.DONE)
    targets = delivery_targets(settings, facts.calling_ae, facts.calling_address, tag)
    kinds = wanted(targets)
    if not kinds:
        log.debug("study %s v%d: no destination, no report objects", tag, result.version)
        return _finish(sessions, claimed, ReportStatus.DONE)

    key_id, key_uid, key_path = facts.key
    if key_path is None:
        raise ReportingError(f"key slice of result {result.id} has no stored file")
    try:
        key = fill_type2(pydicom.dcmread(store.path(key_path)))
    except (OSError, pydicom.errors.InvalidDicomError, ValueError) as exc:
        raise ReportingError(f"key slice (instance {key_id}): {_why(exc)}") from None
    previous = {
        kind: reference(facts.study_uid, ref.sop_class_uid, ref.series_instance_uid,
                        ref.sop_instance_uid)
        for kind, ref in facts.previous.items()
    }  # fmt: skip
    neighbours = read_neighbours(
        [None if p is None else store.path(p) for p in facts.neighbour_paths]
    )
    built = build_objects(
        kinds,
        evidence_sources(facts.evidence, key),
        key,
        findings_of(result, key_uid, checkpoint),
        checkpoint,
        previous,
        neighbours,
    )
    objects = []
    for kind, ds in built.items():
        series, sop = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        relative = store.relative_path(facts.study_uid, series, sop)
        store.write(relative, to_bytes(ds))
        written.append(relative)
        objects.append(reports.StoredObject(kind, str(ds.SOPClassUID), series, sop, relative))
    addresses = [
        reports.Address(t.name, t.ae_title, t.host, t.port, t.objects, t.url) for t in targets
    ]
    with sessions.begin() as session:
        entries = reports.record(session, claimed, objects, addresses)
        if entries is None:
            raise _Lost
    log.info(
        "study %s v%d: built %s; %d outbox entries for %d target(s)",
        tag,
        result.version,
        ", ".join(built) or "nothing",
        len(entries),
        len(targets),
    )
    return ReportStatus.DONE


def _finish(
    sessions: sessionmaker[Session], claimed: reports.Claimed, status: ReportStatus
) -> ReportStatus:
    with sessions.begin() as session:
        if not reports.finish(session, claimed, status):
            raise _Lost
    return status


def report_claimed(
    sessions: sessionmaker[Session],
    store: Store,
    settings: Settings,
    checkpoint: Checkpoint,
    claimed: reports.Claimed,
) -> ReportStatus | None:
    """Build and queue one claimed version's objects; returns its new state.

    Returns None when the claim was lost (another reporter took the version). Raises
    :class:`StoreError`, ``OSError`` or ``SQLAlchemyError`` for a passing failure: the caller
    hands the version back to be tried again later.
    """
    written: list[str] = []  # report files of this attempt: removed unless it commits
    committed = False
    try:
        status = build_and_record(sessions, store, settings, checkpoint, claimed, written)
        committed = True
        return status
    except _Lost:
        return None
    except (StoreError, OSError, SQLAlchemyError):
        raise
    except (IchnodeError, ValueError) as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug must not retry forever
        log.exception("report objects of study result %d: unexpected error", claimed.result_id)
        reason = f"unexpected error: {type(exc).__name__}: {exc}"
    finally:
        if not committed:
            forget(store, written)
    with sessions.begin() as session:
        if not reports.finish(session, claimed, ReportStatus.FAILED, reason):
            return None
    log.error("report objects of study result %d not built: %s", claimed.result_id, reason)
    return ReportStatus.FAILED


def report_result(
    sessions: sessionmaker[Session],
    store: Store,
    settings: Settings,
    checkpoint: Checkpoint,
    result_id: int,
) -> ReportStatus | None:
    """Claim one pending version and build it (:func:`report_claimed`); None when it was not
    pending, or another reporter holds it."""
    with sessions.begin() as session:
        claimed = reports.claim(session, LEASE_SECONDS, result_id=result_id)
    if not claimed:
        return None
    return report_claimed(sessions, store, settings, checkpoint, claimed[0])


class Reporter:
    """Builds pending versions' report objects: ``run(stop)`` in a thread, ``wake.set()`` now."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: Store,
        settings: Settings,
        checkpoint: Checkpoints,
        on_done: Callable[[int, ReportStatus], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.settings = settings
        #: The checkpoint now (a callable: the node's model may be reloaded while it runs).
        self.checkpoint: Callable[[], Checkpoint] = (
            checkpoint if callable(checkpoint) else (lambda: checkpoint)
        )
        self.on_done = on_done or (lambda result_id, status: None)
        self.wake = threading.Event()
        #: result id -> the delay of its last retry (doubles while it keeps failing)
        self._delay: dict[int, float] = {}

    def run_once(self) -> int:
        """Build every pending version that is due, one claim at a time; returns how many
        changed state."""
        handled = 0
        while True:
            with self.sessions.begin() as session:
                claimed = reports.claim(session, LEASE_SECONDS)
            if not claimed:
                return handled
            [item] = claimed
            try:
                status = report_claimed(
                    self.sessions, self.store, self.settings, self.checkpoint(), item
                )
            except (StoreError, OSError, SQLAlchemyError) as exc:
                self._retry_later(item, exc)
                continue
            self._delay.pop(item.result_id, None)
            if status is not None:
                handled += 1
                self.on_done(item.result_id, status)

    def _retry_later(self, item: reports.Claimed, exc: Exception) -> None:
        """Hand a version back after a passing failure, due again after a growing delay."""
        last = self._delay.get(item.result_id, 0.0)
        delay = min(2 * last, RETRY_MAX_SECONDS) if last else RETRY_SECONDS
        self._delay[item.result_id] = delay
        reason = error_reason(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
        log.error(
            "report objects of study result %d not built, retrying in %.0f s: %s",
            item.result_id,
            delay,
            reason,
        )
        try:
            with self.sessions.begin() as session:
                reports.retry_at(session, item, utcnow() + timedelta(seconds=delay))
        except SQLAlchemyError:  # the claim lapses by itself
            log.warning("report claim of study result %d not handed back", item.result_id)

    def step(self) -> float:
        self.run_once()
        return POLL_SECONDS

    def run(self, stop: threading.Event) -> None:
        """Build until ``stop`` is set; no failure ends the loop."""
        run_loop("reporter", self.step, stop, wake=self.wake, retry_seconds=POLL_SECONDS)
