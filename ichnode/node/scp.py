"""The pynetdicom C-STORE SCP: receive, validate, store durably, enqueue, then answer.

The C-STORE handler is short: identifiers validated → bytes written as received (temp file,
fsync, rename) → instance row committed with status ``queued`` → Success. Storage or database
trouble answers 0xA700 and leaves neither an orphan file nor an orphan row.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from ichnode.config import Settings
from ichnode.db import ingest
from ichnode.db.models import InstanceStatus
from ichnode.imaging import CT_SOP_CLASSES, MAX_PIXELS
from ichnode.node.selection import SelectionRules, geometry
from ichnode.store import Store, StoreError, valid_uid

log = logging.getLogger(__name__)

PREAMBLE = b"\x00" * 128 + b"DICM"

# DIMSE C-STORE statuses (PS3.4 Annex B.2.3, PS3.7 Annex C).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000

#: Transfer syntaxes ichnode.imaging decodes, in the order we list them (the sender's order of
#: preference decides which one is used, so we receive its original encoding when we can).
CT_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
#: For objects we only record (nothing decoded), any transfer syntax will do.
OTHER_TRANSFER_SYNTAXES = [*CT_TRANSFER_SYNTAXES, ExplicitVRBigEndian]


def uid_hash(uid: str) -> str:
    """A short, stable, non-identifying tag for a UID in logs."""
    return hashlib.sha256(uid.encode()).hexdigest()[:10]


@dataclass
class _AssocStats:
    calling_ae: str
    address: str
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    stored: int = 0
    skipped: int = 0
    failed: int = 0
    studies: set[str] = field(default_factory=set)


class StorageSCP:
    """ichnode's listening AE: Verification plus Storage for CT (and, optionally, the rest)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        sessions: sessionmaker,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sessions = sessions
        self.on_stored = on_stored or (lambda: None)
        self.rules = SelectionRules(settings.selection)
        self._stats: dict[int, _AssocStats] = {}
        self._lock = threading.Lock()
        self.server = None

    # ------------------------------------------------------------------ AE set-up

    def build_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.add_supported_context(Verification)
        for uid in sorted(CT_SOP_CLASSES):
            ae.add_supported_context(uid, CT_TRANSFER_SYNTAXES)
        if s.accept_other_objects:
            for cx in AllStoragePresentationContexts:
                if cx.abstract_syntax not in CT_SOP_CLASSES:
                    ae.add_supported_context(cx.abstract_syntax, OTHER_TRANSFER_SYNTAXES)
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = s.max_pdu
        ae.network_timeout = s.idle_timeout
        ae.acse_timeout = s.network_timeout
        ae.dimse_timeout = s.network_timeout
        ae.require_called_aet = s.require_called_ae
        ae.require_calling_aet = list(s.calling_ae_allow)
        return ae

    def handlers(self) -> list:
        return [
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_closed, ["released"]),
            (evt.EVT_ABORTED, self._on_closed, ["aborted"]),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
        ]

    def start(self, ssl_context=None):  # noqa: ANN001, ANN201 - pynetdicom types
        """Start listening in background threads; returns pynetdicom's server."""
        s = self.settings
        self.server = self.build_ae().start_server(
            (s.bind, s.port), block=False, evt_handlers=self.handlers(), ssl_context=ssl_context
        )
        return self.server

    def shutdown(self) -> None:
        """Stop accepting; in-flight C-STOREs finish (pynetdicom joins association threads)."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # ------------------------------------------------------------------ association log

    def _on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        stats = _AssocStats(assoc.requestor.ae_title, f"{assoc.requestor.address}")
        with self._lock:
            self._stats[id(assoc)] = stats
        log.info("association accepted: calling AE %s from %s", stats.calling_ae, stats.address)

    def _on_closed(self, event: evt.Event, how: str) -> None:
        with self._lock:
            stats = self._stats.pop(id(event.assoc), None)
        if stats is None:
            return
        secs = (datetime.now(UTC) - stats.started).total_seconds()
        log.info(
            "association %s: calling AE %s, %d stored, %d skipped, %d failed, %d studies, %.1f s",
            how,
            stats.calling_ae,
            stats.stored,
            stats.skipped,
            stats.failed,
            len(stats.studies),
            secs,
        )

    def _on_conn_close(self, event: evt.Event) -> None:
        self._on_closed(event, "closed")

    def _count(self, event: evt.Event, outcome: str, study_uid: str | None = None) -> None:
        stats = self._stats.get(id(event.assoc))
        if stats is None:
            return
        setattr(stats, outcome, getattr(stats, outcome) + 1)
        if study_uid:
            stats.studies.add(study_uid)

    # ------------------------------------------------------------------ C-STORE

    def handle_store(self, event: evt.Event) -> int:
        """Validate → store → row → status (see module docstring)."""
        try:
            ds: Dataset = event.dataset
            ds.file_meta = event.file_meta
            ids = (
                str(ds.get("StudyInstanceUID", "")),
                str(ds.get("SeriesInstanceUID", "")),
                str(ds.get("SOPInstanceUID", "")),
            )
            sop_class = str(ds.get("SOPClassUID", ""))
        except Exception as exc:  # noqa: BLE001 - any decode failure is "cannot understand"
            log.warning("C-STORE refused: dataset cannot be decoded (%s)", type(exc).__name__)
            self._count(event, "failed")
            return CANNOT_UNDERSTAND
        study_uid, series_uid, sop_uid = ids
        bad = [
            n
            for n, u in zip(("study", "series", "SOP instance"), ids, strict=True)
            if not valid_uid(u)
        ]
        if bad:
            log.warning("C-STORE refused: missing or invalid %s UID", " and ".join(bad))
            self._count(event, "failed")
            return DATASET_DOES_NOT_MATCH
        if sop_uid != str(event.request.AffectedSOPInstanceUID):
            log.warning(
                "C-STORE refused: SOP Instance UID %s differs from the request's", uid_hash(sop_uid)
            )
            self._count(event, "failed")
            return DATASET_DOES_NOT_MATCH
        if sop_class != str(event.request.AffectedSOPClassUID):
            log.warning(
                "C-STORE refused: SOP Class UID differs from the request's (%s)", uid_hash(sop_uid)
            )
            self._count(event, "failed")
            return DATASET_DOES_NOT_MATCH
        if sop_class in CT_SOP_CLASSES:
            problem = pixel_problem(ds, event.context.transfer_syntax)
            if problem:
                log.warning("C-STORE refused: CT instance %s: %s", uid_hash(sop_uid), problem)
                self._count(event, "failed")
                return DATASET_DOES_NOT_MATCH
        try:
            return self._store(event, ds, study_uid, series_uid, sop_uid, sop_class)
        except Exception:  # noqa: BLE001 - never let a bug answer Success or kill the AE
            log.exception("C-STORE failed unexpectedly for instance %s", uid_hash(sop_uid))
            self._count(event, "failed")
            return OUT_OF_RESOURCES

    def _store(
        self,
        event: evt.Event,
        ds: Dataset,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        sop_class: str,
    ) -> int:
        now = datetime.now(UTC)
        is_ct = sop_class in CT_SOP_CLASSES
        geo = geometry(ds)
        received = ingest.Received.from_dataset(
            ds,
            calling_ae=event.assoc.requestor.ae_title,
            transfer_syntax=str(event.context.transfer_syntax),
            z=geo.z,
            received_at=now,
        )
        if not is_ct:
            received.status = InstanceStatus.SKIPPED
            received.reason = f"not a CT image ({_sop_name(sop_class)})"
        else:
            reason = self.rules.skip_reason(ds, geo)
            if reason:
                received.status, received.reason = InstanceStatus.SKIPPED, reason

        try:
            with self.sessions.begin() as session:
                duplicate = ingest.mark_duplicate(session, sop_uid, now)
            if duplicate:
                log.info("instance %s received again: kept the first copy", uid_hash(sop_uid))
                self._count(event, "stored", study_uid)
                return SUCCESS
            relative = None
            if is_ct:
                stream = event.request.DataSet.getvalue()
                if len(stream) > self.settings.max_instance_bytes:
                    log.warning(
                        "C-STORE refused: instance %s is larger than max_instance_bytes",
                        uid_hash(sop_uid),
                    )
                    self._count(event, "failed")
                    return OUT_OF_RESOURCES
                relative = self.store.relative_path(study_uid, series_uid, sop_uid)
                header = PREAMBLE + encode_file_meta(event.file_meta)
                received.size_bytes = self.store.write(relative, [header, stream])
                received.path = relative
            try:
                with self.sessions.begin() as session:
                    status = ingest.record_instance(
                        session, received, self.rules.settings.skip_duplicate_positions
                    ).status
            except IntegrityError:
                # The same SOP Instance arrived on another association at the same moment:
                # its row won; our identical bytes went to the same path.
                with self.sessions.begin() as session:
                    ingest.mark_duplicate(session, sop_uid, now)
                self._count(event, "stored", study_uid)
                return SUCCESS
            except SQLAlchemyError:
                if relative:
                    self.store.remove(relative)
                raise
        except StoreError as exc:
            log.error("C-STORE out of resources for instance %s: %s", uid_hash(sop_uid), exc)
            self._count(event, "failed")
            return OUT_OF_RESOURCES
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            log.error("C-STORE database failure for instance %s: %s", uid_hash(sop_uid), reason)
            self._count(event, "failed")
            return OUT_OF_RESOURCES
        self._count(event, "skipped" if status == InstanceStatus.SKIPPED else "stored", study_uid)
        if status == InstanceStatus.QUEUED:
            self.on_stored()
        return SUCCESS


def pixel_problem(ds: Dataset, transfer_syntax: str) -> str | None:
    """Why a CT dataset's pixel data cannot be right, checked from the header (no decoding)."""
    if "PixelData" not in ds:
        return "no pixel data"
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return "missing or malformed Rows/Columns/BitsAllocated"
    if rows <= 0 or cols <= 0 or rows * cols > MAX_PIXELS:
        return f"implausible image size {rows}x{cols}"
    if UID(transfer_syntax).is_compressed:
        return None  # the length of a compressed stream says nothing; the worker decodes it
    expected = rows * cols * samples * frames * bits // 8
    actual = len(ds.PixelData)
    if actual < expected:
        return f"pixel data has {actual} bytes, Rows x Columns needs {expected}"
    return None


def _sop_name(uid: str) -> str:
    name = UID(uid).name
    return name if name != uid else f"SOP class {uid}"
