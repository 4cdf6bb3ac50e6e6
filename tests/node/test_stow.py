"""STOW-RS in on its own: the web route over a real database and store, without a node.

Each request goes through the C-STORE intake (checks, durable file, row before the answer);
the answers are PS3.18's: 200 all stored, 202 partial with a Failed SOP Sequence, 409 none,
415 a wrong media type, 400 a malformed body, 413 too large, 401 without the token.
"""

from __future__ import annotations

import contextlib
import tracemalloc
import uuid
from io import BytesIO
from types import SimpleNamespace

import httpx
import pydicom
import pytest
from helpers import study
from sqlalchemy import select
from web_fixtures import serve

from ichnode.config import HTTPSettings, Settings
from ichnode.db.models import Association, Instance, InstanceStatus
from ichnode.node.scu import check_destinations
from ichnode.node.statuses import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH
from ichnode.node.stow import StowReceiver
from ichnode.store import Store
from ichnode.web import WebContext

#: The intake's inserts and duplicate handling differ between the databases.
pytestmark = pytest.mark.every_backend

TOKEN = "stow-token"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILURE_REASON = "00081197"


@contextlib.contextmanager
def stow_client(  # noqa: ANN201
    tmp_path,  # noqa: ANN001
    session_factory,  # noqa: ANN001
    max_stow_bytes: int = 2_000_000,
    min_free_bytes: int = 0,
):
    """The web app served on a loopback port over a real database and store; a client."""
    settings = Settings(
        db_url="sqlite:///unused.db",
        store=tmp_path / "store",
        min_free_bytes=min_free_bytes,
        http=HTTPSettings(token=TOKEN, max_stow_bytes=max_stow_bytes),
    )
    store = Store(settings.store, min_free_bytes)
    woken = SimpleNamespace(count=0)
    receiver = StowReceiver(
        settings, store, session_factory, on_stored=lambda: setattr(woken, "count", woken.count + 1)
    )
    ctx = WebContext(session_factory, store, settings, stow=receiver)
    handle = serve(ctx, token=TOKEN)
    try:
        with httpx.Client(
            base_url=handle.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as client:
            client.woken = woken
            yield client
    finally:
        handle.stop()


@pytest.fixture
def app(tmp_path, session_factory):  # noqa: ANN001, ANN201
    with stow_client(tmp_path, session_factory) as client:
        yield client


def part10(ds: pydicom.Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def multipart(parts: list[bytes], media_type: str = "application/dicom") -> tuple[bytes, str]:
    """A multipart/related body with a 73-character boundary, as Orthanc sends."""
    boundary = uuid.uuid4().hex * 2 + "abcdefghi"
    assert len(boundary) == 73
    body = b"".join(
        b"--" + boundary.encode() + f"\r\nContent-Type: {media_type}\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def post(client: httpx.Client, parts: list[bytes], **kw: str):  # noqa: ANN201
    body, content_type = multipart(parts, **kw)
    return client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})


def test_all_instances_stored_answers_200_and_queues_them(app, session_factory, tmp_path):
    datasets = study(2, size=16)
    answer = post(app, [part10(ds) for ds in datasets])
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/dicom+json")
    refs = answer.json()[REFERENCED_SOP_SEQUENCE]["Value"]
    assert len(refs) == 2 and FAILED_SOP_SEQUENCE not in answer.json()
    with session_factory() as session:
        rows = session.scalars(select(Instance)).all()
        assert {r.status for r in rows} == {InstanceStatus.QUEUED}
        assert all((tmp_path / "store" / r.path).is_file() for r in rows)
        [audit] = session.scalars(select(Association)).all()
        assert audit.n_received == 2 and audit.outcome.startswith("stow-rs")
    assert app.woken.count == 1


def test_a_bad_part_among_good_ones_answers_202_with_its_failure_reason(app):
    good, bad = study(2, size=16)
    bad.SOPInstanceUID = "not a uid"
    answer = post(app, [part10(good), part10(bad)])
    assert answer.status_code == 202
    [failed] = answer.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [DATASET_DOES_NOT_MATCH]


def test_a_part_whose_sop_class_is_not_a_uid_is_refused_a900(app, session_factory):
    """With accept_other_objects (the default) any SOP class is taken as a non-CT object;
    one that is not a UID (here longer than a UID column) is refused, not 0xA700."""
    ds = study(1, size=16)[0]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2." + "3" * 80
    answer = post(app, [part10(ds)])
    assert answer.status_code == 409
    [failed] = answer.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [DATASET_DOES_NOT_MATCH]
    with session_factory() as session:
        assert session.scalars(select(Instance)).all() == []


def test_nothing_stored_answers_409(app):
    answer = post(app, [b"\x00" * 300])
    assert answer.status_code == 409
    [failed] = answer.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [CANNOT_UNDERSTAND]


def test_a_repeat_is_stored_once_and_answered_as_stored(app, session_factory):
    [ds] = study(1, size=16)
    assert post(app, [part10(ds)]).status_code == 200
    assert post(app, [part10(ds)]).status_code == 200
    with session_factory() as session:
        [row] = session.scalars(select(Instance)).all()
        assert row.times_received == 2


def test_wrong_media_type_answers_415_and_stores_nothing(app, session_factory):
    answer = app.post(
        "/dicom-web/studies", content=b"{}", headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 415
    with session_factory() as session:
        assert session.scalars(select(Instance)).all() == []


def test_multipart_without_boundary_answers_400(app):
    answer = app.post(
        "/dicom-web/studies",
        content=b"x",
        headers={"Content-Type": 'multipart/related; type="application/dicom"'},
    )
    assert answer.status_code == 400


def test_body_over_the_limit_answers_413(app):
    answer = post(app, [b"\x00" * 2_100_000])
    assert answer.status_code == 413


def test_a_large_body_waits_on_the_stores_disk_not_in_memory(tmp_path, session_factory):
    """The body is spooled to a scratch file in the store's folder of writes in progress and
    read through a memory map: the request's Python allocations stay well under its size
    (it held the whole body in memory), and the scratch file is gone afterwards."""
    datasets = study(24, size=512)
    body, content_type = multipart([part10(ds) for ds in datasets])
    with stow_client(tmp_path, session_factory, max_stow_bytes=64 << 20) as client:
        tracemalloc.start()
        try:
            # Sent in chunks: httpx copies the rest of a bytes body at every partial send.
            chunks = (body[i : i + (256 << 10)] for i in range(0, len(body), 256 << 10))
            answer = client.post(
                "/dicom-web/studies",
                content=chunks,
                headers={"Content-Type": content_type, "Content-Length": str(len(body))},
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert answer.status_code == 200
    assert len(answer.json()[REFERENCED_SOP_SEQUENCE]["Value"]) == 24
    assert len(body) > 12_000_000 and peak < len(body) / 2
    incoming = tmp_path / "store" / ".incoming"
    assert [f for f in incoming.rglob("*") if f.is_file()] == []


def test_without_the_token_answers_401(app):
    body, content_type = multipart([part10(study(1, size=16)[0])])
    answer = app.post(
        "/dicom-web/studies",
        content=body,
        headers={"Content-Type": content_type, "Authorization": "Bearer wrong"},
    )
    assert answer.status_code == 401


def test_qido_refuses_a_search_by_patient_while_identifiers_are_hidden(tmp_path, session_factory):
    settings = Settings(store=tmp_path / "store", http=HTTPSettings(show_patient_identifiers=False))
    ctx = WebContext(session_factory, Store(settings.store, 0), settings)
    handle = serve(ctx, show_patient_identifiers=False)
    try:
        with httpx.Client(base_url=handle.url) as client:
            assert client.get("/dicom-web/studies", params={"PatientID": "P1"}).status_code == 400
            answer = client.get("/dicom-web/studies")
            assert answer.status_code == 200 and answer.json() == []
    finally:
        handle.stop()


def test_destinations_check_searches_a_dicomweb_destination(app, tmp_path):
    def destination(token: str) -> dict:
        url = f"{app.base_url}".rstrip("/") + "/dicom-web"
        return {"name": "web", "kind": "dicomweb", "url": url, "token": token}

    s = Settings(store=tmp_path / "store", destinations=[destination(TOKEN)])
    [row] = check_destinations(s)
    assert row.ok and row.status == "OK" and row.round_trip_ms is not None
    s = Settings(store=tmp_path / "store", destinations=[destination("wrong")])
    [row] = check_destinations(s)
    assert not row.ok and row.status == "HTTP 401"
