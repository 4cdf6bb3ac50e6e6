"""DICOMweb with real peers: Orthanc (with its DICOMweb plugin) STOWs a phantom study to
ichnode and gets the SR back over STOW-RS into the same study, or retrieves ichnode's report
objects over WADO-RS; ``dicomweb-client`` is a second client of ichnode's STOW-RS, QIDO-RS and
WADO-RS.

The node is in-process, with its web app served on a loopback port behind a token.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from io import BytesIO

import certifi
import httpx
import pydicom
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from delivery_fixtures import all_sent, bleed_study, rows
from dicom_client import send
from dicomweb_client.api import DICOMwebClient
from helpers import free_port, wait_for
from orthanc import Orthanc
from pki import certificate, write_pem
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker
from web_fixtures import serve

from ichnode.config import Settings
from ichnode.db.models import DeliveryStatus, Instance, ReportObject
from ichnode.db.session import open_database
from ichnode.node.statuses import SUCCESS
from ichnode.node.stow import StowReceiver
from ichnode.store import Store
from ichnode.web import WebContext
from ichnode.web.app import create_app

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]

TOKEN = "dicomweb-t0ken"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def part10(ds: pydicom.Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_orthanc_stows_a_study_to_ichnode_and_gets_the_sr_back_over_stow_rs(tmp_path, node_factory):
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb_servers={})
    node = node_factory(
        destinations=[
            {"name": "orthanc-web", "kind": "dicomweb", "url": f"{orthanc.url}/dicom-web",
             "objects": ["sr"]}
        ]
    )  # fmt: skip
    http = serve(node, token=TOKEN)
    orthanc.dicomweb_servers = {
        "ichnode": {
            "Url": f"{http.url}/dicom-web/",
            "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"},
        }
    }
    datasets = bleed_study(seed=3, n_slices=6)
    study_uid = str(datasets[0].StudyInstanceUID)
    try:
        with orthanc:
            for ds in datasets:
                orthanc.upload(part10(ds))
            answer = orthanc.post(
                "/dicom-web/servers/ichnode/stow", {"Resources": [orthanc.study_id(study_uid)]}
            )
            assert answer is not None
            [row] = wait_for(lambda: all_sent(node, count=1), timeout=120)
            assert row.destination == "orthanc-web" and row.kind == "sr"
            srs = [i for i in orthanc.instances(study_uid) if i["SOPClassUID"] == COMPREHENSIVE_SR]
            assert [i["SOPInstanceUID"] for i in srs] == [row.sop_instance_uid]
            assert srs[0]["StudyInstanceUID"] == study_uid
    finally:
        http.stop()


def _https_pki(folder) -> tuple:  # noqa: ANN001
    """(the peer's certificate and key, the CA that signed it, another CA)."""
    folder.mkdir()
    ca_key, key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = write_pem(folder, "ca", certificate("web CA", ca_key, "web CA", ca_key, ca=True))[0]
    other = write_pem(folder, "other", certificate("other", other_key, "other", other_key, ca=True))
    crt, pem = write_pem(
        folder, "peer", certificate("127.0.0.1", key, "web CA", ca_key, ca=False), key
    )
    return (crt, pem), ca, other[0]


@contextlib.contextmanager
def _https_stow_peer(folder, cert: tuple) -> Iterator[tuple[str, sessionmaker]]:  # noqa: ANN001
    """A second ichnode's STOW-RS endpoint served over HTTPS by uvicorn (with ``cert``): its
    DICOMweb root URL and its database. (Orthanc 1.10's HTTPS server, the Debian package's,
    died with SIGSEGV at its first connection here.)"""
    settings = Settings(
        db_url=f"sqlite:///{folder / 'peer.db'}", store=folder / "store", min_free_bytes=0
    )
    engine, sessions = open_database(settings)
    store = Store(settings.store)
    context = WebContext(sessions, store, settings, stow=StowReceiver(settings, store, sessions))
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_app(context),
        log_level="warning",
        lifespan="off",
        ssl_certfile=str(cert[0]),
        ssl_keyfile=str(cert[1]),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, timeout=30)
    try:
        yield f"https://127.0.0.1:{sock.getsockname()[1]}/dicom-web", sessions
    finally:
        server.should_exit = True
        thread.join(10)
        engine.dispose()


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-ca", "other-ca"])
def test_the_sr_goes_to_a_dicomweb_destination_over_https_verified_against_tls_ca(
    tmp_path, node_factory, trusted, monkeypatch
):
    """STOW-RS out to a DICOMweb peer serving HTTPS: sent when its certificate's CA is the
    node's ``tls.ca``; with another CA nothing arrives and the attempt names the TLS failure.
    ``REQUESTS_CA_BUNDLE`` is set, as on many hosts: requests let it replace ``tls.ca``."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    cert, ca, other = _https_pki(tmp_path / "pki")
    (tmp_path / "peer").mkdir()
    with _https_stow_peer(tmp_path / "peer", cert) as (url, peer):
        node = node_factory(
            destinations=[{"name": "peer", "kind": "dicomweb", "url": url, "objects": ["sr"]}],
            tls={"ca": ca if trusted else other},
            delivery_max_attempts=1,
        )
        assert set(send(node.settings.port, bleed_study(seed=3, n_slices=6))) == {SUCCESS}
        with peer() as session:
            received = lambda: session.scalars(select(Instance.sop_instance_uid)).all()  # noqa: E731
            if trusted:
                [row] = wait_for(lambda: all_sent(node, count=1), timeout=120)
                assert row.destination == "peer" and row.kind == "sr"
                assert received() == [row.sop_instance_uid]
            else:
                [row] = wait_for(lambda: _failed(node), timeout=120)
                assert "SSL" in (row.last_error or "") and received() == []


def _failed(node):  # noqa: ANN001, ANN202
    found = rows(node)
    return found if found and all(r.status == DeliveryStatus.FAILED for r in found) else None


def test_dicomweb_client_stores_over_stow_rs_and_finds_the_results_over_qido_rs(node_factory):
    # Report objects are built for a destination: one that is down is enough here.
    pacs = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}
    node = node_factory(destinations=[pacs])
    http = serve(node, token=TOKEN)
    try:
        client = DICOMwebClient(
            f"{http.url}/dicom-web", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        datasets = bleed_study(seed=5, n_slices=6)
        study_uid = str(datasets[0].StudyInstanceUID)
        answer = client.store_instances(datasets)
        stored = {str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence}
        assert stored == {str(ds.SOPInstanceUID) for ds in datasets}
        assert "FailedSOPSequence" not in answer

        def found():  # noqa: ANN202
            series = client.search_for_series(study_uid)
            return series if series else None

        series = wait_for(found, timeout=120, interval=0.5)
        modalities = {pydicom.Dataset.from_json(s).Modality for s in series}
        assert "SR" in modalities
        studies = client.search_for_studies(search_filters={"StudyInstanceUID": study_uid})
        assert [pydicom.Dataset.from_json(s).StudyInstanceUID for s in studies] == [study_uid]
    finally:
        http.stop()


def _resulted_with_objects(node_factory, seed: int):  # noqa: ANN001, ANN202
    """A node that built report objects (for a destination that is down) for one phantom study
    sent over DICOM: (node, study UID, {SOP instance UID: stored bytes})."""
    pacs = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}
    node = node_factory(destinations=[pacs], delivery_max_attempts=1)
    datasets = bleed_study(seed=seed, n_slices=6)
    assert set(send(node.settings.port, datasets)) == {SUCCESS}
    wait_for(lambda: rows(node) or None, timeout=120, interval=0.5)
    with node.sessions() as session:
        stored = session.execute(select(ReportObject.sop_instance_uid, ReportObject.path)).all()
    objects = {uid: node.store.path(path).read_bytes() for uid, path in stored}
    assert len(objects) >= 2  # the SR and the summary image at least
    return node, str(datasets[0].StudyInstanceUID), objects


def test_dicomweb_client_finds_and_retrieves_the_report_objects_over_qido_and_wado_rs(
    node_factory,
):
    node, study_uid, objects = _resulted_with_objects(node_factory, seed=7)
    http = serve(node, token=TOKEN)
    hidden = serve(node, token=TOKEN, show_patient_identifiers=False)
    try:
        client = DICOMwebClient(
            f"{http.url}/dicom-web", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        retrieved = {}
        for series in client.search_for_series(study_uid):
            series_uid = pydicom.Dataset.from_json(series).SeriesInstanceUID
            found = client.search_for_instances(study_uid, series_uid)
            for item in map(pydicom.Dataset.from_json, found):
                ds = client.retrieve_instance(study_uid, series_uid, item.SOPInstanceUID)
                assert ds.SOPClassUID == item.SOPClassUID and ds.StudyInstanceUID == study_uid
                retrieved[str(ds.SOPInstanceUID)] = part10(ds)
            whole = client.retrieve_series(study_uid, series_uid)
            assert {str(ds.SOPInstanceUID) for ds in whole} == {
                pydicom.Dataset.from_json(i).SOPInstanceUID for i in found
            }
        assert retrieved.keys() == objects.keys()
        study = client.retrieve_study(study_uid)
        assert {str(ds.SOPInstanceUID) for ds in study} == objects.keys()
        # What the wire carries is the stored file, byte for byte, its transfer syntax named.
        auth = {"Authorization": f"Bearer {TOKEN}"}
        answer = httpx.get(f"{http.url}/dicom-web/studies/{study_uid}", headers=auth)
        assert answer.status_code == 200
        media = answer.headers["content-type"]
        assert media.startswith('multipart/related; type="application/dicom"')
        assert all(data in answer.content for data in objects.values())
        assert b"transfer-syntax=1.2.840.10008.1.2.1" in answer.content
        # Nothing is transcoded; unknown UIDs and hidden identifiers are refused.
        jpeg = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
        refused = httpx.get(f"{http.url}/dicom-web/studies/{study_uid}",
                            headers=auth | {"Accept": jpeg})  # fmt: skip
        assert refused.status_code == 406
        unknown = httpx.get(f"{http.url}/dicom-web/studies/1.2.3.4", headers=auth)
        assert unknown.status_code == 404
        blocked = httpx.get(f"{hidden.url}/dicom-web/studies/{study_uid}", headers=auth)
        assert blocked.status_code == 403 and blocked.content.find(b"DICM") == -1
        assert httpx.get(f"{http.url}/dicom-web/studies/{study_uid}").status_code == 401
    finally:
        http.stop()
        hidden.stop()


def test_orthanc_retrieves_ichnodes_report_objects_over_wado_rs(tmp_path, node_factory):
    """Orthanc's DICOMweb plugin, given ichnode as a DICOMweb server, pulls the study's report
    objects into Orthanc (its /dicom-web/servers/{name}/retrieve: QIDO-RS, then WADO-RS)."""
    node, study_uid, objects = _resulted_with_objects(node_factory, seed=9)
    http = serve(node, token=TOKEN)
    servers = {
        "ichnode": {
            "Url": f"{http.url}/dicom-web/",
            "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"},
        }
    }
    try:
        with Orthanc(tmp_path / "orthanc", dicomweb_servers=servers) as orthanc:
            orthanc.post(
                "/dicom-web/servers/ichnode/retrieve",
                {"Resources": [{"Study": study_uid}], "Synchronous": True},
            )
            pulled = {i["SOPInstanceUID"]: i["ID"] for i in orthanc.instances(study_uid)}
            assert pulled.keys() == objects.keys()
            for uid, orthanc_id in pulled.items():
                assert orthanc.file(orthanc_id) == objects[uid]
    finally:
        http.stop()
