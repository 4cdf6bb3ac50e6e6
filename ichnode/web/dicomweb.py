"""DICOMweb on the node's HTTP port: STOW-RS in, a minimal QIDO-RS over ichnode's results
(WADO-RS, which retrieves what it finds, is :mod:`ichnode.web.wado`).

``POST /dicom-web/studies`` hands the request to the node's STOW-RS intake
(:class:`ichnode.node.stow.StowReceiver`, the same path as a C-STORE), reading at most
``http.max_stow_bytes`` (413 past it) into a scratch file on the store's disk
(:meth:`ichnode.store.Store.spool`), which the intake reads through a memory map: a request
holds disk, not memory (it held its whole body in memory, up to 1 GiB at the default limit).
``GET /dicom-web/studies`` and ``GET /dicom-web/studies/{uid}/series`` find the studies
ichnode produced results for and their SR / summary / KOS series (PS3.18 10.6,
``application/dicom+json``), so a DICOMweb viewer can find them. Token auth is the rest of
the API's (:mod:`ichnode.web.auth`).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool

from ichnode.db import dicomweb as produced
from ichnode.db.models import ReportKind, Study
from ichnode.node.stow import DICOM_JSON, Body, StowRequestError
from ichnode.store import Store, StoreError
from ichnode.web.context import Context
from ichnode.web.responses import IDENTIFIERS_HIDDEN, UID_PATH, UNAUTHORIZED, Responses

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicom-web", tags=["DICOMweb"])


class DicomJSONResponse(JSONResponse):
    """A DICOM JSON answer (PS3.18 F.2)."""

    media_type = DICOM_JSON


def _described(text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {}}}


STOW_RESPONSES: Responses = UNAUTHORIZED | {
    200: {"description": "Every instance stored (Referenced SOP Sequence)."},
    202: {
        "description": "Some instances stored, the others in the Failed SOP Sequence.",
        "content": {DICOM_JSON: {}},
    },
    409: {"description": "No instance stored (Failed SOP Sequence).", "content": {DICOM_JSON: {}}},
    400: _described("A malformed multipart body."),
    413: _described("A body larger than http.max_stow_bytes."),
    415: _described('Not multipart/related; type="application/dicom".'),
    503: _described("This server does not receive instances, or its disk cannot hold the body."),
}

#: The Modality of each kind of report series.
MODALITY = {ReportKind.SR: "SR", ReportKind.SUMMARY: "OT", ReportKind.KOS: "KO"}
MAX_LIMIT = 500
MAX_OFFSET = 1_000_000
#: Bytes of a STOW-RS body gathered before each write to its spool file.
SPOOL_WRITE = 1 << 20


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


async def _spooled(request: Request, limit: int, store: Store, spool: BinaryIO) -> int | None:
    """Copy the request body into ``spool`` (writes of about :data:`SPOOL_WRITE` bytes, off
    the event loop, each within the store's ``min_free_bytes``: StoreError past it); its
    size, or None once it grows past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            return None
        store.make_room(int(declared))
    size = 0
    pending = bytearray()
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        pending += chunk
        if len(pending) >= SPOOL_WRITE:
            await run_in_threadpool(_write_all, store, spool, pending)
            pending = bytearray()
    await run_in_threadpool(_write_all, store, spool, pending)
    return size


def _write_all(store: Store, spool: BinaryIO, data: bytearray) -> None:
    """Write ``data`` whole if the store has room for it. The spool is unbuffered (a write
    may take part of it): a buffered one would keep what a full disk refused and raise
    again when it is closed, after the 503 was chosen."""
    store.make_room(len(data))
    view = memoryview(data)
    while view:
        view = view[spool.write(view) :]


def _cannot_take(reason: str) -> JSONResponse:
    """503 for a request body the store's disk cannot hold; one log line."""
    log.error("STOW-RS request refused: %s", reason)
    return _error(503, f"cannot take the request: {reason}")


def _release(body: Body) -> None:
    """Unmap a spooled body. A view of it still held (an exception's traceback keeps the
    parts' frames) defers that to the garbage collector."""
    if isinstance(body, mmap.mmap):
        with contextlib.suppress(BufferError):
            body.close()


@router.post(
    "/studies",
    summary="STOW-RS: store instances (multipart/related DICOM)",
    response_class=DicomJSONResponse,
    responses=STOW_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                'multipart/related; type="application/dicom"': {
                    "schema": {"type": "string", "format": "binary"}
                }
            },
        }
    },
)
async def stow(request: Request, ctx: Context) -> Response:
    receiver = ctx.stow
    if receiver is None:
        return _error(503, "this server does not receive instances")
    client = request.client.host if request.client else None
    store = receiver.keeper.store
    try:
        spool = store.spool()
    except StoreError as exc:
        return _cannot_take(str(exc))
    with spool:
        try:
            size = await _spooled(request, receiver.settings.http.max_stow_bytes, store, spool)
        except StoreError as exc:
            return _cannot_take(str(exc))
        except OSError as exc:  # the disk filled up under it
            return _cannot_take(f"cannot write to the store: {exc.strerror or exc}")
        if size is None:
            return _error(413, "request larger than http.max_stow_bytes")
        body: Body = mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        try:
            result = await run_in_threadpool(
                receiver.receive, request.headers.get("content-type", ""), body, client
            )
        except StowRequestError as exc:
            return _error(exc.status, str(exc))
        finally:
            _release(body)
    return DicomJSONResponse(result.answer(), status_code=result.http_status)


def _study_json(study: Study, n_series: int, identifiers: bool) -> dict[str, Any]:
    ds = Dataset()
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date or ""
    ds.StudyTime = study.study_time or ""
    ds.ModalitiesInStudy = "SR"
    ds.NumberOfStudyRelatedSeries = n_series
    if identifiers:
        ds.PatientID = study.patient_id or ""
        ds.PatientName = study.patient_name or ""
        ds.AccessionNumber = study.accession_number or ""
    return ds.to_json_dict()


@router.get(
    "/studies",
    summary="QIDO-RS: studies with ichnode results",
    response_class=DicomJSONResponse,
    responses=UNAUTHORIZED | IDENTIFIERS_HIDDEN,
)
def search_studies(
    ctx: Context,
    study_uid: Annotated[str | None, Query(alias="StudyInstanceUID", max_length=64)] = None,
    patient_id: Annotated[str | None, Query(alias="PatientID", max_length=64)] = None,
    accession: Annotated[str | None, Query(alias="AccessionNumber", max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Response:
    identifiers = ctx.show_patient_identifiers
    if any("\x00" in (v or "") for v in (study_uid, patient_id, accession)):
        return DicomJSONResponse([])  # no DICOM value holds NUL (and PostgreSQL refuses it)
    if not identifiers and (patient_id or accession):
        return _error(400, "patient identifiers are hidden on this server")
    with ctx.sessions() as session:
        rows = produced.produced_studies(
            session,
            study_uid=study_uid,
            patient_id=patient_id,
            accession_number=accession,
            limit=limit,
            offset=offset,
        )
        found = [_study_json(study, n, identifiers) for study, n in rows]
    return DicomJSONResponse(found)


@router.get(
    "/studies/{study_uid}/series",
    summary="QIDO-RS: ichnode's series of a study",
    response_class=DicomJSONResponse,
    responses=UNAUTHORIZED,
)
def search_series(study_uid: Annotated[str, UID_PATH], ctx: Context) -> Response:
    """The series of a study ichnode has none for (or not a UID) is an empty list."""
    with ctx.sessions() as session:
        series = produced.produced_series(session, study_uid)
    found = []
    for s in series:
        ds = Dataset()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = s.series_instance_uid
        ds.Modality = MODALITY[s.kind]
        ds.NumberOfSeriesRelatedInstances = s.instances
        found.append(ds.to_json_dict())
    return DicomJSONResponse(found)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances",
    summary="QIDO-RS: ichnode's report objects of a series",
    response_class=DicomJSONResponse,
    responses=UNAUTHORIZED,
)
def search_instances(
    study_uid: Annotated[str, UID_PATH], series_uid: Annotated[str, UID_PATH], ctx: Context
) -> Response:
    """The report objects of one series (retrieved by ``ichnode.web.wado``); none: []."""
    if "\x00" in study_uid + series_uid:
        return DicomJSONResponse([])
    with ctx.sessions() as session:
        instances = produced.produced_instances(session, study_uid, series_uid)
    found = []
    for i in instances:
        ds = Dataset()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = i.series_instance_uid
        ds.SOPClassUID = i.sop_class_uid
        ds.SOPInstanceUID = i.sop_instance_uid
        ds.Modality = MODALITY[i.kind]
        found.append(ds.to_json_dict())
    return DicomJSONResponse(found)
