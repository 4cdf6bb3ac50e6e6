"""WADO-RS: retrieve the report objects ichnode built (SR, summary image, KOS) by their UIDs.

QIDO-RS (:mod:`ichnode.web.dicomweb`) finds them; these routes hand them out as stored, in a
``multipart/related; type="application/dicom"`` body (PS3.18 10.4), one part per instance
with its transfer syntax named. Only report objects are served: ichnode is not an archive of
the images it received. Nothing is transcoded: a request that accepts only another transfer
syntax than an object's is answered 406. The objects carry the patient's name and ID, so a
server that hides patient identifiers (``http.show_patient_identifiers = false``) refuses to
hand them out (403). Token auth is the rest of the API's.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from ichnode.db import dicomweb as produced
from ichnode.node.stow import DICOM
from ichnode.store import Store, uid_hash
from ichnode.web.context import Context
from ichnode.web.responses import UID_PATH, UNAUTHORIZED, Responses

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicom-web", tags=["DICOMweb"])

MULTIPART = "multipart/related"
#: The transfer syntax of ``application/dicom`` when a request names none (PS3.18 8.7.3.5.2).
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

RETRIEVE_RESPONSES: Responses = UNAUTHORIZED | {
    200: {
        "description": "The report objects, one part each.",
        "content": {f'{MULTIPART}; type="{DICOM}"': {"schema": {"type": "string"}}},
    },
    403: {"description": "Patient identifiers are hidden on this server; the objects hold them."},
    404: {"description": "ichnode built no report object under these UIDs."},
    406: {"description": 'The request accepts neither multipart/related; type="application/dicom"'
                         " nor the objects' transfer syntax (nothing is transcoded)."},
}  # fmt: skip


@dataclass(frozen=True)
class Part:
    """One instance of a retrieve answer: its Part 10 bytes and their transfer syntax."""

    data: bytes
    transfer_syntax: str


def _params(text: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; c="d"`` -> ("type/subtype", {"a": "b", "c": "d"}), lower-cased
    names and media type, values unquoted."""
    media, *rest = (p.strip() for p in text.split(";"))
    params = {}
    for item in rest:
        name, _, value = item.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    return media.lower(), params


def acceptable(accept: str | None, transfer_syntaxes: Iterable[str]) -> bool:
    """Whether an ``Accept`` header allows a multipart of these objects as they are stored:
    it names ``multipart/related`` (with ``type`` ``application/dicom`` or none) or a
    wildcard, and a ``transfer-syntax`` each of them is in (``*``, or none given: explicit VR
    little endian, what ichnode writes)."""
    stored = set(transfer_syntaxes)
    if not accept or not accept.strip():
        return True
    for item in accept.split(","):
        media, params = _params(item)
        if media in ("*/*", "multipart/*"):
            return True
        if media != MULTIPART or params.get("type", DICOM).lower() != DICOM:
            continue
        wanted = params.get("transfer-syntax", EXPLICIT_VR_LITTLE_ENDIAN)
        if wanted == "*" or stored <= {wanted}:
            return True
    return False


def multipart(parts: list[Part]) -> tuple[bytes, str]:
    """The body of a ``multipart/related; type="application/dicom"`` answer and its content
    type (PS3.18 8.6.1.2: each part names its transfer syntax)."""
    boundary = uuid.uuid4().hex
    chunks = []
    for part in parts:
        head = f"--{boundary}\r\nContent-Type: {DICOM}; transfer-syntax={part.transfer_syntax}"
        chunks += [head.encode("ascii"), b"\r\n\r\n", part.data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks), f'{MULTIPART}; type="{DICOM}"; boundary={boundary}'


def _read(store: Store, relative: str) -> Part | None:
    """A stored report object, or None when its file is gone or unreadable (logged)."""
    try:
        path = store.path(relative)
        meta = read_file_meta_info(path)
        return Part(path.read_bytes(), str(meta.TransferSyntaxUID))
    except (OSError, InvalidDicomError, AttributeError, ValueError) as exc:
        log.warning("WADO-RS: report object %s unreadable (%s)", uid_hash(relative),
                    type(exc).__name__)  # fmt: skip
        return None


def _retrieve(
    ctx: Context,
    accept: str | None,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> Response:
    if not ctx.show_patient_identifiers:
        return JSONResponse(
            {"detail": "patient identifiers are hidden on this server; report objects hold them"},
            status_code=403,
        )
    if any("\x00" in (v or "") for v in (study_uid, series_uid, sop_uid)):
        found = []  # no DICOM UID holds NUL (and PostgreSQL refuses it)
    else:
        with ctx.sessions() as session:
            found = produced.produced_instances(session, study_uid, series_uid, sop_uid)
    parts = [p for p in (_read(ctx.store, i.path) for i in found) if p is not None]
    if not parts:
        return JSONResponse({"detail": "no report object under these UIDs"}, status_code=404)
    if not acceptable(accept, (p.transfer_syntax for p in parts)):
        stored = ", ".join(sorted({p.transfer_syntax for p in parts}))
        detail = f'only multipart/related; type="{DICOM}" in the stored transfer syntax ({stored})'
        return JSONResponse({"detail": detail}, status_code=406)
    body, media_type = multipart(parts)
    return Response(body, media_type=media_type)


AcceptHeader = Annotated[str | None, Header(max_length=4096)]


@router.get(
    "/studies/{study_uid}",
    summary="WADO-RS: the report objects of a study",
    response_class=Response,
    responses=RETRIEVE_RESPONSES,
)
def retrieve_study(
    study_uid: Annotated[str, UID_PATH], ctx: Context, accept: AcceptHeader = None
) -> Response:
    return _retrieve(ctx, accept, study_uid)


@router.get(
    "/studies/{study_uid}/series/{series_uid}",
    summary="WADO-RS: the report objects of a series",
    response_class=Response,
    responses=RETRIEVE_RESPONSES,
)
def retrieve_series(
    study_uid: Annotated[str, UID_PATH],
    series_uid: Annotated[str, UID_PATH],
    ctx: Context,
    accept: AcceptHeader = None,
) -> Response:
    return _retrieve(ctx, accept, study_uid, series_uid)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
    summary="WADO-RS: one report object",
    response_class=Response,
    responses=RETRIEVE_RESPONSES,
)
def retrieve_instance(
    study_uid: Annotated[str, UID_PATH],
    series_uid: Annotated[str, UID_PATH],
    sop_uid: Annotated[str, UID_PATH],
    ctx: Context,
    accept: AcceptHeader = None,
) -> Response:
    return _retrieve(ctx, accept, study_uid, series_uid, sop_uid)
