"""Report objects for a new study result: build, store, and queue one outbox row per target.

For each result version the node builds what its destinations want -- the SR (always when
one wants ``sr``), the summary image with a Grad-CAM overlay, the KOS (positive studies only)
-- writes each into the store (``<study>/<series>/<sop>.dcm``, the study's folder, the
object's own series) so it can be sent again, and inserts one :class:`OutboxEntry` per
(object, destination). The outbox sends them.

Each result version carries its report state (``study_results.report_status``): ``pending``
when the monitor writes it, ``done`` in the same transaction that stores the outbox rows. The
:class:`Reporter` thread builds every pending version -- woken by the monitor, and at start-up
and every few seconds for the ones a crash or a transient failure (full disk, database down)
left behind -- so a result is reported once even if the node dies in between. A version that
cannot be built (its key slice is gone, another model scored it) is marked ``failed`` with the
reason; one that a newer version of its study overtook is ``superseded``.

Where the result goes: every configured destination, plus the sender of the study when its
calling AE title is in ``return_to_sender`` (AE title -> port). The sender's host is the peer
address of its latest accepted association in the ``associations`` audit table (the SCP
writes one row per association); AE titles name fixed hosts in DICOM networks, so this needs
no new column on ``studies``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ichnode import __version__
from ichnode.config import Settings
from ichnode.db import context
from ichnode.db.engine import error_reason
from ichnode.db.models import (
    Association,
    Instance,
    OutboxEntry,
    ReportStatus,
    Series,
    Study,
    StudyResult,
)
from ichnode.errors import IchnodeError
from ichnode.imaging import (
    input_to_display,
    pixel_spacing,
    preprocess_planes,
    read_neighbours,
    to_hu,
)
from ichnode.model import Checkpoint
from ichnode.report import StudyFindings, build_kos, build_sr, build_summary, grad_cam, to_bytes
from ichnode.report.sr import STUDY_ATTRIBUTES
from ichnode.store import Store, StoreError, uid_hash

log = logging.getLogger(__name__)

KIND_SR = "sr"
KIND_SUMMARY = "summary"
KIND_KOS = "kos"
#: The order objects are built and queued in (the SR first: it is the result).
KINDS = (KIND_SR, KIND_SUMMARY, KIND_KOS)
#: What a return-to-sender target receives (a Destination's default objects).
RETURN_OBJECTS = (KIND_SR, KIND_SUMMARY)
#: Destination name of a return-to-sender target: ``return:<calling AE>``.
RETURN_PREFIX = "return:"


class ReportingError(IchnodeError):
    """The report objects of a study result cannot be built (the message says why)."""


@dataclass(frozen=True)
class Target:
    """Where one result's objects go: a configured destination or the study's sender."""

    name: str
    ae_title: str
    host: str
    port: int
    objects: tuple[str, ...]


def sender_host(session: Session, study: Study) -> str | None:
    """Peer address of the latest association from the study's calling AE (None if unknown)."""
    if not study.calling_ae:
        return None
    return session.scalar(
        select(Association.peer_address)
        .where(
            Association.calling_ae == study.calling_ae,
            Association.peer_address.is_not(None),
            Association.outcome.not_like("rejected%"),
            Association.started_at <= study.last_received_at,
        )
        .order_by(Association.started_at.desc(), Association.id.desc())
        .limit(1)
    )


def delivery_targets(session: Session, settings: Settings, study: Study) -> list[Target]:
    """The configured destinations, plus the sender when ``return_to_sender`` names its AE."""
    targets = [
        Target(d.name, d.ae_title, d.host, d.port, tuple(d.objects)) for d in settings.destinations
    ]
    port = settings.return_to_sender.get(study.calling_ae or "")
    if port:
        host = sender_host(session, study)
        if host is None:
            log.warning(
                "study %s: no recorded address for calling AE %s; not returned to sender",
                uid_hash(study.study_instance_uid),
                study.calling_ae,
            )
        else:
            name = f"{RETURN_PREFIX}{study.calling_ae}"
            targets.append(Target(name, study.calling_ae, host, port, RETURN_OBJECTS))
    return targets


def findings_of(result: StudyResult, key_uid: str, checkpoint: Checkpoint) -> StudyFindings:
    """The report builders' input for a result scored by ``checkpoint``."""
    if result.model_id != checkpoint.model_id:
        raise ReportingError(
            f"result v{result.version} was scored by {result.model_id}, "
            f"the node serves {checkpoint.model_id}"
        )
    return StudyFindings(
        probabilities=result.probabilities,
        thresholds=checkpoint.decision_thresholds,
        key_sop_instance_uid=key_uid,
        model_id=result.model_id,
        model_architecture=checkpoint.architecture,
        model_sha256=checkpoint.sha256,
        version=result.version,
        ichnode_version=__version__,
    )


def read_header(store: Store, relative: str) -> Dataset:
    """A stored file's header (no pixel data)."""
    return pydicom.dcmread(store.path(relative), stop_before_pixels=True)


def _fill_type2(ds: Dataset) -> Dataset:
    """Add the patient/study attributes a source lacks as empty (Type 2) values."""
    for keyword in STUDY_ATTRIBUTES:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def _why(exc: Exception) -> str:
    """Why a stored file could not be read, without its path (paths hold UIDs)."""
    reason = getattr(exc, "strerror", None) or type(exc).__name__
    return f"stored file unreadable ({reason})"


def evidence_sources(rows: Sequence[tuple[str, str, str]], key: Dataset) -> list[Dataset]:
    """The study's instances as evidence for the SR and KOS, from database rows.

    Each row is (SOPClassUID, SOPInstanceUID, SeriesInstanceUID) as received; the patient and
    study attributes come from the key slice (same study). No stored file is re-read: reading
    every header of a 250-slice study took seconds, and the evidence needs only these UIDs.
    """
    key_uid = str(key.SOPInstanceUID)
    sources: list[Dataset] = []
    for sop_class, sop_uid, series_uid in rows:
        if sop_uid == key_uid:
            sources.append(key)
            continue
        ds = Dataset()
        if "SpecificCharacterSet" in key:  # the names below are in it (and the reports copy it)
            ds.SpecificCharacterSet = key.SpecificCharacterSet
        for keyword in STUDY_ATTRIBUTES:
            ds[keyword] = key[keyword]
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = sop_class, sop_uid, series_uid
        sources.append(ds)
    return sources


def previous_objects(session: Session, store: Store, result: StudyResult) -> dict[str, Dataset]:
    """Headers of the newest earlier report object of each kind of this study (by version)."""
    rows = session.execute(
        select(OutboxEntry.kind, OutboxEntry.path)
        .join(StudyResult, StudyResult.id == OutboxEntry.study_result_id)
        .where(StudyResult.study_id == result.study_id, StudyResult.version < result.version)
        .order_by(StudyResult.version.desc(), OutboxEntry.id.desc())
    ).all()
    found: dict[str, Dataset] = {}
    for kind, path in rows:
        if kind in found:
            continue
        try:
            found[kind] = read_header(store, path)
        except (OSError, pydicom.errors.InvalidDicomError, ValueError):
            log.warning("previous %s of result %d is missing from the store", kind, result.id)
    return found


def _neighbours(session: Session, store: Store, instance_id: int, k: int) -> list[Dataset | None]:
    """The stored neighbours of a slice for a 2.5-D checkpoint (none for a 2-D one); one that
    cannot be read is left to the slice, as at the end of a series."""
    if not k:
        return []
    paths = context.planes(session, [instance_id], k)[instance_id].neighbour_paths
    return read_neighbours([None if p is None else store.path(p) for p in paths])


def build_objects(
    wanted: set[str],
    sources: list[Dataset],
    key: Dataset,
    findings: StudyFindings,
    checkpoint: Checkpoint,
    previous: dict[str, Dataset],
    neighbours: Sequence[Dataset | None] = (),
) -> dict[str, Dataset]:
    """The wanted report objects, each in the series of its predecessor when there is one.

    ``neighbours`` are the key slice's neighbours for a 2.5-D checkpoint (lowest z first, see
    :func:`ichnode.imaging.context_planes`); the saliency map is computed on that input."""
    built: dict[str, Dataset] = {}
    number = findings.version
    if KIND_SR in wanted:
        built[KIND_SR] = build_sr(
            sources, findings, instance_number=number, predecessor=previous.get(KIND_SR)
        )
    if KIND_SUMMARY in wanted:
        target = findings.saliency_subtype
        x = preprocess_planes(key, neighbours, checkpoint.spec)
        cam = grad_cam(checkpoint, x, target)
        # Over the key slice as the summary shows it (the model may see a resampled view).
        cam = input_to_display(cam, to_hu(key), pixel_spacing(key), checkpoint.spec)
        built[KIND_SUMMARY] = build_summary(
            key,
            findings,
            saliency=cam,
            saliency_label=target,
            series_instance_uid=_series(previous.get(KIND_SUMMARY)),
            instance_number=number,
        )
    if KIND_KOS in wanted and findings.positive:
        built[KIND_KOS] = build_kos(
            sources,
            findings,
            series_instance_uid=_series(previous.get(KIND_KOS)),
            instance_number=number,
        )
    return built


def _series(ds: Dataset | None) -> str | None:
    return None if ds is None else str(ds.SeriesInstanceUID)


def create_reports(
    session: Session,
    store: Store,
    settings: Settings,
    checkpoint: Checkpoint,
    study_result_id: int,
) -> list[OutboxEntry]:
    """Build, store and queue the report objects of one study result version.

    The caller owns the transaction. A result with no scored slice gets nothing (one log line).
    Raises :class:`ReportingError` (or the builders' ``ReportError``) when the objects cannot
    be built.
    """
    result = session.get(StudyResult, study_result_id)
    if result is None:
        raise ReportingError(f"no study result {study_result_id}")
    study = result.study
    tag = uid_hash(study.study_instance_uid)
    if not result.n_scored or result.key_instance_id is None or result.p_any is None:
        log.info("study %s v%d: no scored slice, no report objects", tag, result.version)
        return []
    targets = delivery_targets(session, settings, study)
    wanted = {kind for target in targets for kind in target.objects}
    if not wanted:
        log.debug("study %s v%d: no destination, no report objects", tag, result.version)
        return []

    rows = session.execute(
        select(Instance.sop_class_uid, Instance.sop_instance_uid, Series.series_instance_uid)
        .join(Series, Series.id == Instance.series_id)
        .where(Instance.study_id == study.id, Instance.path.is_not(None))
        .order_by(Instance.id)
    ).all()
    key_inst = session.get(Instance, result.key_instance_id)
    if key_inst is None or key_inst.path is None:
        raise ReportingError(f"key slice of result {result.id} has no stored file")
    try:
        key = _fill_type2(pydicom.dcmread(store.path(key_inst.path)))
    except (OSError, pydicom.errors.InvalidDicomError, ValueError) as exc:
        raise ReportingError(f"key slice (instance {key_inst.id}): {_why(exc)}") from None
    sources = evidence_sources([tuple(r) for r in rows], key)
    findings = findings_of(result, key_inst.sop_instance_uid, checkpoint)
    built = build_objects(
        wanted,
        sources,
        key,
        findings,
        checkpoint,
        previous_objects(session, store, result),
        _neighbours(session, store, key_inst.id, checkpoint.spec.context),
    )

    paths: dict[str, str] = {}
    try:
        for kind, ds in built.items():
            relative = store.relative_path(
                study.study_instance_uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
            )
            store.write(relative, to_bytes(ds))
            paths[kind] = relative
        entries = [
            OutboxEntry(
                study_result_id=result.id,
                destination=target.name,
                ae_title=target.ae_title,
                host=target.host,
                port=target.port,
                kind=kind,
                sop_instance_uid=str(built[kind].SOPInstanceUID),
                path=paths[kind],
            )
            for target in targets
            for kind in KINDS
            if kind in target.objects and kind in built
        ]
        session.add_all(entries)
        session.flush()
    except BaseException:
        forget(store, paths.values())  # a retry builds new objects: leave no orphan files
        raise
    log.info(
        "study %s v%d: built %s; %d outbox entries for %d target(s)",
        tag,
        result.version,
        ", ".join(built) or "nothing",
        len(entries),
        len(targets),
    )
    return entries


# --------------------------------------------------------------------------- the reporter

#: Seconds between catch-up passes when nothing wakes the reporter.
POLL_SECONDS = 5.0
#: Wait before retrying a version whose build failed for a passing reason (doubles, capped).
RETRY_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0


class _Taken(Exception):
    """Another node marked the version first; roll back what this one built."""


def forget(store: Store, paths: Iterable[str]) -> None:
    """Remove report files that no outbox row will point at."""
    for path in set(paths):
        try:
            store.remove(path)
        except (OSError, ValueError) as exc:
            log.warning("could not remove an unused report file: %s", type(exc).__name__)


def mark(session: Session, result_id: int, status: ReportStatus, error: str | None = None) -> bool:
    """Move a PENDING version to ``status``; False when it was not pending any more."""
    changed = session.execute(
        update(StudyResult)
        .where(StudyResult.id == result_id, StudyResult.report_status == ReportStatus.PENDING)
        .values(report_status=status, report_error=error)
        .execution_options(synchronize_session=False)
    ).rowcount
    return bool(changed)


def pending_results(session: Session) -> list[int]:
    """Ids of the result versions whose report objects are still to be built, oldest first."""
    return list(
        session.scalars(
            select(StudyResult.id)
            .where(StudyResult.report_status == ReportStatus.PENDING)
            .order_by(StudyResult.id)
        )
    )


def report_result(
    sessions: sessionmaker[Session],
    store: Store,
    settings: Settings,
    checkpoint: Checkpoint,
    result_id: int,
) -> ReportStatus | None:
    """Build and queue one pending version's objects; returns its new state.

    Returns None when the version was not pending (already handled, here or by another node).
    Raises :class:`StoreError`, ``OSError`` or ``SQLAlchemyError`` for a passing failure: the
    version stays pending and is tried again.
    """
    written: list[str] = []  # report files of this attempt: removed unless it commits
    committed = False
    try:
        with sessions.begin() as session:
            # On PostgreSQL the row stays locked while the objects are built, and another node
            # skips it instead of building them too (SQLite has one node, and no row locks).
            result = session.scalar(
                select(StudyResult)
                .where(
                    StudyResult.id == result_id,
                    StudyResult.report_status == ReportStatus.PENDING,
                )
                .with_for_update(skip_locked=True)
            )
            if result is None:
                return None
            if result.study.result_version > result.version:
                mark(session, result_id, ReportStatus.SUPERSEDED)
                log.info(
                    "study %s v%d: superseded by v%d before its report objects were built",
                    uid_hash(result.study.study_instance_uid),
                    result.version,
                    result.study.result_version,
                )
                return ReportStatus.SUPERSEDED
            entries = create_reports(session, store, settings, checkpoint, result_id)
            written = [e.path for e in entries]
            if not mark(session, result_id, ReportStatus.DONE):
                raise _Taken
        committed = True
        return ReportStatus.DONE
    except _Taken:
        return None
    except (StoreError, OSError, SQLAlchemyError):
        raise
    except (IchnodeError, ValueError) as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug must not retry forever
        log.exception("report objects of study result %d: unexpected error", result_id)
        reason = f"unexpected error: {type(exc).__name__}: {exc}"
    finally:
        if not committed:
            forget(store, written)
    with sessions.begin() as session:
        if not mark(session, result_id, ReportStatus.FAILED, reason):
            return None
    log.error("report objects of study result %d not built: %s", result_id, reason)
    return ReportStatus.FAILED


class Reporter:
    """Builds pending versions' report objects: ``run(stop)`` in a thread, ``wake.set()`` now."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: Store,
        settings: Settings,
        checkpoint: Checkpoint,
        on_done: Callable[[int, ReportStatus], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.settings = settings
        self.checkpoint = checkpoint
        self.on_done = on_done or (lambda result_id, status: None)
        self.wake = threading.Event()
        #: result id -> (monotonic time it may be tried again, the delay that led there)
        self._retry: dict[int, tuple[float, float]] = {}

    def run_once(self) -> int:
        """Try every pending version that is due; returns how many changed state."""
        with self.sessions() as session:
            pending = pending_results(session)
        now = time.monotonic()
        handled = 0
        for result_id in pending:
            due, last_delay = self._retry.get(result_id, (0.0, 0.0))
            if due > now:
                continue
            try:
                status = report_result(
                    self.sessions, self.store, self.settings, self.checkpoint, result_id
                )
            except (StoreError, OSError, SQLAlchemyError) as exc:
                delay = min(2 * last_delay, RETRY_MAX_SECONDS) if last_delay else RETRY_SECONDS
                self._retry[result_id] = (time.monotonic() + delay, delay)
                reason = error_reason(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
                log.error(
                    "report objects of study result %d not built, retrying in %.0f s: %s",
                    result_id,
                    delay,
                    reason,
                )
                continue
            self._retry.pop(result_id, None)
            if status is not None:
                handled += 1
                self.on_done(result_id, status)
        return handled

    def run(self, stop: threading.Event) -> None:
        """Build until ``stop`` is set; no failure ends the loop."""
        while not stop.is_set():
            self.wake.clear()
            try:
                self.run_once()
            except SQLAlchemyError as exc:
                log.error("reporter: database error, retrying: %s", error_reason(exc))
            except Exception:  # noqa: BLE001 - the reporter must outlive any one bad result
                log.exception("reporter: unexpected error, retrying")
            if not stop.is_set():
                self.wake.wait(POLL_SECONDS)
