"""DICOMweb with real peers: Orthanc (with its DICOMweb plugin) STOWs a phantom study to
ichnode and gets the SR back over STOW-RS into the same study; ``dicomweb-client`` is a second
client of ichnode's STOW-RS and QIDO-RS.

The node is in-process, with its web app served on a loopback port behind a token.
"""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest
from delivery_fixtures import all_sent, bleed_study
from dicomweb_client.api import DICOMwebClient
from helpers import free_port, wait_for
from orthanc import Orthanc
from web_fixtures import serve

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
