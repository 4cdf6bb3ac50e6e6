"""The outbox: C-STORE report objects to their destinations, with retries, from the database.

Every (object, destination) pair is an :class:`OutboxEntry` row; the row is the state, so a
destination that is down loses nothing and a restart resumes where the last run stopped.

One pass (:meth:`Outbox.dispatch`): claim the PENDING entries that are due (a conditional
``UPDATE`` pushes ``next_attempt_at`` a lease ahead, so two senders never send the same entry
and an entry whose sender died becomes due again), send them over one association per
destination -- each destination in its own thread, so one that hangs until
``network_timeout`` holds up no other; a destination still busy is skipped until its send
ends -- record a :class:`DeliveryAttempt` per entry and attempt, then mark each SENT
(Success or a warning status), or due again after ``delivery_backoff_seconds * 2**(n-1)``
(``n``: attempts so far), or FAILED once ``delivery_max_attempts`` is reached. A send still
waiting for a thread when the node stops is cancelled and its entries are released at once.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ichnode.config import Settings
from ichnode.db import delivery
from ichnode.db.delivery import Claimed
from ichnode.db.engine import error_reason
from ichnode.db.models import (
    DeliveryStatus,
    OutboxEntry,
    ReportStatus,
    Study,
    StudyResult,
    utcnow,
)
from ichnode.errors import IchnodeError
from ichnode.node.statuses import (  # noqa: F401 - re-exported for the tests
    COERCION_OF_DATA_ELEMENTS,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    DELIVERED,
    ELEMENTS_DISCARDED,
    SUCCESS,
)
from ichnode.store import Store

log = logging.getLogger(__name__)


#: How long a claimed entry stays invisible to other senders while its send is in flight.
CLAIM_SECONDS = 600.0
#: Entries sent per pass (the rest wait for the next pass, at once).
BATCH = 50
#: Longest wait between passes when nothing wakes the sender.
POLL_SECONDS = 1.0
#: Limit for one C-ECHO in ``destinations check``.
ECHO_TIMEOUT = 10.0
#: Destinations sent to at the same time (one association each).
PARALLEL_DESTINATIONS = 8


class DeliveryError(IchnodeError):
    """Report objects cannot be queued again (unknown study, nothing built, files missing)."""


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt: the DIMSE status (None when there was no answer) and why."""

    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status in DELIVERED


def status_text(code: int) -> str:
    """``0xA700 Failure: Refused: Out of Resources`` (PS3.4 names via pynetdicom)."""
    category, meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, ("Unknown", "unknown status"))
    return f"0x{code:04X} {category}: {meaning}"


def client_tls_context(settings: Settings) -> ssl.SSLContext:
    """TLS for sending: verify the peer against ``tls.ca`` or the system CAs; our cert if set."""
    ca = str(settings.tls.ca) if settings.tls.ca else None
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.tls.cert and settings.tls.key:
        ctx.load_cert_chain(str(settings.tls.cert), str(settings.tls.key))
    return ctx


def _scu(settings: Settings, timeout: float) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def _no_association(assoc: object, where: str) -> str:
    if getattr(assoc, "is_rejected", False):
        return f"association rejected by {where}"
    return f"no association with {where} (unreachable, or aborted)"


def send_files(
    settings: Settings,
    ae_title: str,
    host: str,
    port: int,
    paths: list[Path],
    tls: bool = False,
) -> list[Outcome]:
    """C-STORE stored files on one association; one :class:`Outcome` per file, in order.

    Each file goes in its own encoding: one presentation context per (SOP class, transfer
    syntax) is proposed, so the bytes are sent as stored.
    """
    where = f"{ae_title}@{host}:{port}"
    metas: list[tuple[str, str] | None] = []
    for path in paths:
        try:
            meta = read_file_meta_info(path)
            metas.append((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
        except (OSError, ValueError, AttributeError):
            metas.append(None)
    ae = _scu(settings, settings.network_timeout)
    for pair in sorted({m for m in metas if m is not None}):
        ae.add_requested_context(pair[0], [pair[1]])
    if not ae.requested_contexts:
        return [Outcome(None, "file missing from the store or unreadable")] * len(paths)
    try:
        tls_args = (client_tls_context(settings), host) if tls else None
        assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
    except (OSError, ssl.SSLError) as exc:  # TLS set-up or handshake
        return [Outcome(None, f"no association with {where}: {exc}")] * len(paths)
    if not assoc.is_established:
        return [Outcome(None, _no_association(assoc, where))] * len(paths)
    outcomes: list[Outcome] = []
    try:
        for path, meta in zip(paths, metas, strict=True):
            if meta is None:
                outcomes.append(Outcome(None, "file missing from the store or unreadable"))
                continue
            if not assoc.is_established:
                outcomes.append(Outcome(None, f"association with {where} ended early"))
                continue
            try:
                answer = assoc.send_c_store(path)
            except (ValueError, RuntimeError, OSError) as exc:  # no accepted context, bad file
                outcomes.append(Outcome(None, f"not sent: {exc}"))
                continue
            if "Status" not in answer:
                outcomes.append(Outcome(None, f"no C-STORE response from {where}"))
                continue
            code = int(answer.Status)
            error = None if code == SUCCESS else status_text(code)
            outcomes.append(Outcome(code, error))
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


class Outbox:
    """The sender: ``run(stop)`` in a thread; ``wake.set()`` sends new entries at once."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: Store,
        settings: Settings,
        wake: threading.Event | None = None,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.settings = settings
        self.wake = wake or threading.Event()
        self._pool = ThreadPoolExecutor(PARALLEL_DESTINATIONS, thread_name_prefix="outbox-send")
        self._lock = threading.Lock()
        #: Destinations with a send in flight (their new entries wait for it to end).
        self._busy: set[str] = set()

    def _tls(self, destination: str) -> bool:
        return any(d.name == destination and d.tls for d in self.settings.destinations)

    def busy(self) -> set[str]:
        """Names of the destinations being sent to right now."""
        with self._lock:
            return set(self._busy)

    def claim(self, now: datetime, skip: set[str] | None = None) -> list[Claimed]:
        """Take up to :data:`BATCH` due entries, none for a destination in ``skip``."""
        with self.sessions.begin() as session:
            return delivery.claim(session, now, BATCH, CLAIM_SECONDS, skip or ())

    def record(self, claimed: Claimed, outcome: Outcome, now: datetime) -> DeliveryStatus | None:
        """Store one attempt and the entry's next state; returns that state (None: the claim
        was lost to another sender, nothing recorded)."""
        s = self.settings
        with self.sessions.begin() as session:
            state = delivery.record(
                session,
                claimed,
                outcome.status,
                outcome.error,
                outcome.delivered,
                now=now,
                max_attempts=s.delivery_max_attempts,
                backoff_seconds=s.delivery_backoff_seconds,
            )
        if state is None:
            log.warning("outbox: entry %d was claimed by another sender; not recorded", claimed.id)
        return state

    def send_group(
        self,
        target: tuple[str, str, str, int],
        entries: list[Claimed],
        clock: Callable[[], datetime],
    ) -> None:
        """Send one destination's claimed entries on one association and record each attempt."""
        destination, ae_title, host, port = target
        paths = []
        for c in entries:
            try:
                paths.append(self.store.path(c.path))
            except ValueError:
                paths.append(Path("/nonexistent"))
        started = time.monotonic()
        outcomes = send_files(
            self.settings, ae_title, host, port, paths, tls=self._tls(destination)
        )
        states = [self.record(c, o, clock()) for c, o in zip(entries, outcomes, strict=True)]
        sent = sum(state == DeliveryStatus.SENT for state in states)
        errors = {o.error for o in outcomes if not o.delivered}
        log.info(
            "outbox: %d/%d object(s) sent to %s in %.0f ms%s",
            sent,
            len(entries),
            destination,
            1000 * (time.monotonic() - started),
            f"; {'; '.join(sorted(e for e in errors if e))}" if errors else "",
        )

    def release(self, entries: list[Claimed]) -> None:
        """Make claimed entries due now again (their send was cancelled before it began)."""
        with self.sessions.begin() as session:
            delivery.release(session, entries, utcnow())

    def _finish(self, destination: str, entries: list[Claimed], future: Future[None]) -> None:
        with self._lock:
            self._busy.discard(destination)
        if future.cancelled():  # shut down before the send began: not a failed attempt
            try:
                self.release(entries)
            except SQLAlchemyError as exc:  # they become due when their claim lapses
                log.error("outbox: could not release unsent entries: %s", error_reason(exc))
            return
        exc = future.exception()
        if isinstance(exc, SQLAlchemyError):
            log.error(
                "outbox: database error while sending to %s: %s", destination, error_reason(exc)
            )
        elif exc is not None:
            log.error("outbox: sending to %s failed", destination, exc_info=exc)
        self.wake.set()  # its next entries may be waiting

    def dispatch(self, now: datetime | None = None) -> tuple[int, list[Future[None]]]:
        """Claim the due entries of every idle destination and start sending them.

        Returns the number of entries claimed and one future per destination started. A
        claimed entry whose send never ends (the process died) is due again after its lease.
        """
        clock: Callable[[], datetime] = (lambda: now) if now is not None else utcnow
        claimed = self.claim(clock(), skip=self.busy())
        groups: dict[tuple[str, str, str, int], list[Claimed]] = {}
        for c in claimed:
            groups.setdefault((c.destination, c.ae_title, c.host, c.port), []).append(c)
        futures = []
        for target, entries in groups.items():
            with self._lock:
                self._busy.add(target[0])
            future = self._pool.submit(self.send_group, target, entries, clock)
            future.add_done_callback(
                lambda f, name=target[0], held=entries: self._finish(name, held, f)
            )
            futures.append(future)
        return len(claimed), futures

    def run_once(self, now: datetime | None = None) -> int:
        """Send every due entry once and wait for the sends; returns the entries attempted."""
        count, futures = self.dispatch(now)
        wait(futures)
        for future in futures:
            future.result()  # a database error reaches the caller
        return count

    def seconds_to_next(self, now: datetime, skip: set[str] | None = None) -> float | None:
        """Seconds until the earliest pending entry is due (0 if one is), None if none.

        Entries of the destinations in ``skip`` (busy ones) are not counted.
        """
        with self.sessions() as session:
            first = delivery.next_due(session, skip or ())
        return None if first is None else max(0.0, (first - now).total_seconds())

    def run(self, stop: threading.Event) -> None:
        """Send until ``stop`` is set; a database or network hiccup never ends the loop.

        Does not wait for sends: a busy destination's send ends by itself and wakes the loop.
        On stop, waits for the sends in flight (each ends within ``network_timeout``).
        """
        try:
            while not stop.is_set():
                self.wake.clear()
                pause = POLL_SECONDS
                try:
                    claimed, _ = self.dispatch()
                    if claimed:
                        continue  # more may be due than one batch
                    due = self.seconds_to_next(utcnow(), skip=self.busy())
                    if due is not None:
                        pause = min(pause, due)
                except SQLAlchemyError as exc:
                    log.error("outbox: database error, retrying: %s", error_reason(exc))
                except Exception:  # noqa: BLE001 - the sender must outlive any one bad entry
                    log.exception("outbox: unexpected error, retrying")
                if not stop.is_set():
                    self.wake.wait(pause)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- operator tools


@dataclass(frozen=True)
class EchoResult:
    """One row of ``ichnode destinations check``."""

    name: str
    ae_title: str
    host: str
    port: int
    ok: bool
    status: str
    round_trip_ms: float | None


def echo(settings: Settings, ae_title: str, host: str, port: int, tls: bool = False) -> str:
    """C-ECHO a node; returns ``"OK"`` or why it failed."""
    ae = _scu(settings, min(settings.network_timeout, ECHO_TIMEOUT))
    ae.add_requested_context(Verification)
    where = f"{ae_title}@{host}:{port}"
    try:
        tls_args = (client_tls_context(settings), host) if tls else None
        assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
    except (OSError, ssl.SSLError) as exc:  # TLS set-up or handshake
        return f"no association with {where}: {exc}"
    if not assoc.is_established:
        return _no_association(assoc, where)
    try:
        answer = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in answer:
        return f"no C-ECHO response from {where}"
    code = int(answer.Status)
    return "OK" if code == SUCCESS else f"C-ECHO status 0x{code:04X}"


def check_destinations(settings: Settings) -> list[EchoResult]:
    """C-ECHO every configured destination, with the round-trip time of the ones that answer."""
    rows = []
    for d in settings.destinations:
        started = time.monotonic()
        status = echo(settings, d.ae_title, d.host, d.port, d.tls)
        ms = 1000 * (time.monotonic() - started)
        ok = status == "OK"
        rows.append(EchoResult(d.name, d.ae_title, d.host, d.port, ok, status, ms if ok else None))
    return rows


@dataclass(frozen=True)
class Resent:
    """What ``ichnode resend`` did: rows queued again, or a rebuild asked of the node."""

    version: int
    queued: int = 0
    #: True when the version had no objects and is now pending: the running node builds them.
    rebuild: bool = False
    #: Why the last build failed (when ``rebuild``).
    error: str | None = None


def resend(session: Session, store: Store, study_uid: str) -> Resent:
    """Queue the latest result version's report objects again, as new PENDING rows.

    One new row per (destination, object) of that version, with the address it had. When that
    version has no objects because building them failed, it is set back to pending so the
    running node builds them again (after the cause, e.g. a missing file, was put right).
    Raises :class:`DeliveryError` for an unknown study, a version with nothing to send, or a
    file no longer in the store. The caller commits.
    """
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    if study is None:
        raise DeliveryError(f"no study {study_uid} in the database")
    result = session.scalar(
        select(StudyResult).where(
            StudyResult.study_id == study.id, StudyResult.version == study.result_version
        )
    )
    if result is None:
        raise DeliveryError(f"study {study_uid} has no result yet")
    rows = session.scalars(
        select(OutboxEntry)
        .where(OutboxEntry.study_result_id == result.id)
        .order_by(OutboxEntry.id.desc())
    ).all()
    latest: dict[tuple[str, str], OutboxEntry] = {}
    for row in rows:
        latest.setdefault((row.destination, row.kind), row)
    if not latest:
        if result.report_status == ReportStatus.FAILED:
            error = result.report_error
            result.report_status, result.report_error = ReportStatus.PENDING, None
            session.flush()
            return Resent(result.version, rebuild=True, error=error)
        if result.report_status == ReportStatus.PENDING:
            raise DeliveryError(
                f"study {study_uid} v{result.version}: report objects not built yet "
                "(the running node builds them)"
            )
        raise DeliveryError(f"study {study_uid} has no report objects to send")
    for row in latest.values():
        if not store.path(row.path).is_file():
            raise DeliveryError(f"report file {row.path} is missing from the store")
    now = utcnow()
    session.add_all(
        OutboxEntry(
            study_result_id=row.study_result_id,
            destination=row.destination,
            ae_title=row.ae_title,
            host=row.host,
            port=row.port,
            kind=row.kind,
            sop_instance_uid=row.sop_instance_uid,
            path=row.path,
            next_attempt_at=now,
            created_at=now,
        )
        for row in sorted(latest.values(), key=lambda r: r.id)
    )
    session.flush()
    return Resent(result.version, queued=len(latest))


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
