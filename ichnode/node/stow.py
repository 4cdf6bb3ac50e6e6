"""STOW-RS in: a ``multipart/related; type="application/dicom"`` request, part by part,
through the same intake as a C-STORE.

Each part is a DICOM Part 10 file. Its File Meta Information plays the C-STORE request
(SOP class and instance, transfer syntax); :func:`ichnode.node.intake.check` admits it with
the same checks and selection, :func:`ichnode.node.storing.keep` writes the file and commits
the row before the answer -- the one path of C-STORE. The request is recorded as an
association audit row (peer address, instances received and failed).

The answer (PS3.18 10.5.3): a ``application/dicom+json`` data set with a Referenced SOP
Sequence of the stored instances and a Failed SOP Sequence (Failure Reason: the C-STORE status
the SCP would have answered) of the others; HTTP 200 when all were stored, 202 when some were,
409 when none was. A body that is not such a multipart is answered 415 (wrong media type) or
400 (malformed) by the web layer, before any part is read.
"""

from __future__ import annotations

import base64
import logging
import mmap
import quopri
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from ichnode import audit
from ichnode.config import Settings
from ichnode.db.models import InstanceStatus
from ichnode.imaging import CT_SOP_CLASSES
from ichnode.node import intake, storing
from ichnode.node.intake import Refusal
from ichnode.node.scp import CT_TRANSFER_SYNTAXES, OTHER_TRANSFER_SYNTAXES
from ichnode.node.statuses import CANNOT_UNDERSTAND, OUT_OF_RESOURCES
from ichnode.store import Store, uid_hash

log = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
#: PS3.18 Table 10.5.3-2 failure reasons beyond the C-STORE statuses.
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
#: HTTP statuses of a STOW-RS answer (PS3.18 10.5.3).
ALL_STORED, SOME_STORED, NONE_STORED = 200, 202, 409
#: Outcome text of the audit row of a STOW-RS request (the association column it fills).
AUDIT_OUTCOME = "stow-rs"


#: A request body: in memory, or a memory map of the file it was spooled to (the web layer's).
Body = bytes | bytearray | mmap.mmap


class StowRequestError(ValueError):
    """The request is not a STOW-RS multipart (``status``: 415 or 400)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def dicom_parts(content_type: str, body: Body) -> Iterator[tuple[str, memoryview]]:
    """The (media type, bytes) of each part of a ``multipart/related`` body (RFC 2046).

    The request's and each part's headers are read by the standard library's MIME parser
    (boundaries of any length: Orthanc sends 73 characters); the parts themselves are found
    with ``bytes.find`` and handed out as views of ``body``, not copies: the whole body through
    the MIME parser took about nine times its size in memory (it decodes bytes to text). A
    part in ``base64`` or ``quoted-printable`` is decoded (a copy of that part alone).
    """
    head = EmailMessage(policy=policy.HTTP)
    head["Content-Type"] = content_type
    if head.get_content_type() != "multipart/related":
        raise StowRequestError(415, "expected Content-Type multipart/related")
    kind = head.get_param("type")
    if kind is not None and str(kind).lower() != DICOM:
        raise StowRequestError(415, f'expected multipart/related; type="{DICOM}"')
    boundary = head.get_boundary()
    if not boundary:
        raise StowRequestError(400, "multipart/related without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    first = body.find(delimiter)
    while first > 0 and body[first - 2 : first] != b"\r\n":  # a delimiter starts a line
        first = body.find(delimiter, first + 1)
    if first < 0:
        raise StowRequestError(400, "the body holds no multipart parts")
    view = memoryview(body)
    pos = first + len(delimiter)
    while body[pos : pos + 2] != b"--":  # "--boundary--" closes the body
        line_end = body.find(b"\r\n", pos)  # the rest of the delimiter line: padding
        headers_end = body.find(b"\r\n\r\n", line_end) if line_end >= 0 else -1
        end = body.find(b"\r\n" + delimiter, headers_end + 4) if headers_end >= 0 else -1
        if end < 0:
            raise StowRequestError(400, "a multipart part is not closed by the boundary")
        headers = BytesParser(policy=policy.HTTP).parsebytes(
            body[line_end + 2 : headers_end + 4], headersonly=True
        )
        yield headers.get_content_type(), _decoded(headers, view[headers_end + 4 : end])
        pos = end + 2 + len(delimiter)


def _decoded(headers: Message, payload: memoryview) -> memoryview:
    """A part's bytes as sent, or decoded from its Content-Transfer-Encoding."""
    encoding = str(headers.get("content-transfer-encoding", "")).strip().lower()
    if encoding == "base64":
        return memoryview(base64.b64decode(payload))
    if encoding == "quoted-printable":
        return memoryview(quopri.decodestring(payload.tobytes()))
    return payload


@dataclass(frozen=True)
class Part:
    """The outcome of one part: stored (its row's status; None: a repeat, the first copy
    kept) or not (``failure``: the C-STORE status the SCP would have answered)."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    status: InstanceStatus | None = None
    failure: int | None = None


@dataclass
class StowResult:
    """What one STOW-RS request stored and refused; :meth:`answer` is the response body."""

    stored: list[tuple[str, str]] = field(default_factory=list)  # (SOP class, SOP instance)
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # (+ failure reason)
    skipped: int = 0
    queued: int = 0

    @property
    def http_status(self) -> int:
        if not self.failed:
            return ALL_STORED
        return SOME_STORED if self.stored else NONE_STORED

    def answer(self) -> dict[str, Any]:
        """The response data set as DICOM JSON (PS3.18 F.2); no Retrieve URL: ichnode serves
        no WADO-RS."""
        ds = Dataset()
        ds.ReferencedSOPSequence = [_item(cls, uid) for cls, uid in self.stored]
        if self.failed:
            ds.FailedSOPSequence = [_item(cls, uid, reason) for cls, uid, reason in self.failed]
        return ds.to_json_dict()


def _item(sop_class: str, sop_uid: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    if reason is not None:
        item.FailureReason = reason
    return item


class StowReceiver:
    """The node's STOW-RS intake: the same rules, store, database and wake-up as its SCP."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        sessions: sessionmaker,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.on_stored = on_stored or (lambda: None)
        self.keeper = storing.Keeper(settings, store, sessions)

    def receive(self, content_type: str, body: Body, client: str | None) -> StowResult:
        """Store every part of one request; raises :class:`StowRequestError` for a body that
        is not a STOW-RS multipart (nothing is stored then)."""
        parts = list(dicom_parts(content_type, body))
        started = datetime.now(UTC)
        result = StowResult()
        for media_type, payload in parts:
            part = self._one(media_type, payload, client)
            if part.failure is not None:
                result.failed.append((part.sop_class_uid, part.sop_instance_uid, part.failure))
            else:
                result.stored.append((part.sop_class_uid, part.sop_instance_uid))
                result.skipped += part.status == InstanceStatus.SKIPPED
                result.queued += part.status == InstanceStatus.QUEUED
        if result.queued:
            self.on_stored()
        self._audit(client, started, result)
        log.info(
            "STOW-RS: %d stored (%d skipped), %d failed",
            len(result.stored),
            result.skipped,
            len(result.failed),
        )
        return result

    def _one(self, media_type: str, payload: memoryview, client: str | None) -> Part:
        """Admit and keep one part (the C-STORE path); its outcome."""
        now = datetime.now(UTC)
        if media_type != DICOM or payload[128:132] != b"DICM":
            log.warning("STOW-RS part refused: not a DICOM Part 10 file (%s)", media_type)
            return Part(failure=CANNOT_UNDERSTAND)
        try:
            ds = pydicom.dcmread(BytesIO(payload))
            meta = ds.file_meta
            request = intake.Request(
                sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
                sop_class_uid=str(meta.MediaStorageSOPClassUID),
                transfer_syntax=str(meta.TransferSyntaxUID),
                calling_ae=None,
                calling_address=client,
            )
        except Exception as exc:  # noqa: BLE001 - any decode failure is "cannot understand"
            log.warning("STOW-RS part refused: cannot be decoded (%s)", type(exc).__name__)
            return Part(failure=CANNOT_UNDERSTAND)
        ids = (request.sop_class_uid, request.sop_instance_uid)
        refused = self._unsupported(request)
        if refused:
            log.warning("STOW-RS part refused: %s", refused[1])
            return Part(*ids, failure=refused[0])
        try:
            admitted = intake.check(ds, request, self.keeper.rules, now)
            status = self.keeper.keep(admitted, [payload], now)
        except Refusal as refusal:
            level = logging.ERROR if refusal.status == OUT_OF_RESOURCES else logging.WARNING
            log.log(level, "STOW-RS part refused: %s", refusal.reason)
            return Part(*ids, failure=refusal.status)
        except Exception:  # noqa: BLE001 - never let a bug answer "stored"
            log.exception("STOW-RS failed unexpectedly for %s", uid_hash(request.sop_instance_uid))
            return Part(*ids, failure=OUT_OF_RESOURCES)
        return Part(*ids, status=status)

    def _unsupported(self, request: intake.Request) -> tuple[int, str] | None:
        """What the SCP's presentation contexts would not accept, as a failure reason."""
        is_ct = request.sop_class_uid in CT_SOP_CLASSES
        if not is_ct and not self.settings.accept_other_objects:
            return SOP_CLASS_NOT_SUPPORTED, "not a CT image (accept_other_objects is off)"
        syntaxes = CT_TRANSFER_SYNTAXES if is_ct else OTHER_TRANSFER_SYNTAXES
        if request.transfer_syntax not in syntaxes:
            return TRANSFER_SYNTAX_NOT_SUPPORTED, "transfer syntax not supported"
        return None

    def _audit(self, client: str | None, started: datetime, result: StowResult) -> None:
        """The request's audit row, as an association's; a database failure is only logged."""
        record = audit.AssociationRecord(
            row_id=None,
            calling_ae=None,
            called_ae=self.settings.ae_title,
            peer_address=client,
            peer_port=None,
            started_at=started,
            n_received=len(result.stored),
            n_failed=len(result.failed),
            outcome=f"{AUDIT_OUTCOME}: {len(result.stored)} stored, {len(result.failed)} failed",
        )
        try:
            with self.sessions.begin() as session:
                audit.close_association(session, record)
        except SQLAlchemyError as exc:
            log.error("STOW-RS audit row not written: %s", type(exc).__name__)
