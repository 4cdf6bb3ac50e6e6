"""Logs never carry PHI: a full flow (a phantom study sent, stored, scored and resulted, plus
refused and rejected traffic; and one received over STOW-RS whose notifications fail) with
every ichnode logger at DEBUG, grepped for the phantom's patient name, patient id, accession
number and birth date."""

from __future__ import annotations

import logging

from dicom_client import send
from dicomweb_client.api import DICOMwebClient
from helpers import wait_for
from notify_peers import FHIRListener, MLLPListener
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select
from web_fixtures import serve

from ichnode.db.models import DeliveryStatus, Notification
from ichnode.node.scp import SUCCESS
from ichnode.results import study_detail
from phantoms.synth import synth_study


def _phi_values(ds) -> list[str]:  # noqa: ANN001
    name = str(ds.PatientName)
    values = [name, *name.split("^"), str(ds.PatientID), str(ds.AccessionNumber)]
    values.append(str(ds.PatientBirthDate))
    return [v for v in values if len(v) >= 4]


def test_logs_at_debug_never_contain_patient_identifiers(node_factory, caplog):
    caplog.set_level(logging.DEBUG, logger="ichnode")
    node = node_factory(calling_ae_allow=["TESTSCU"])
    slices = [s.dataset for s in synth_study(seed=11, n_slices=4, size=64)]
    assert send(node.settings.port, slices) == [SUCCESS] * 4
    broken = synth_study(seed=12, n_slices=1, size=64)[0].dataset
    broken.PixelData = broken.PixelData[:-10]
    send(node.settings.port, [broken])  # refused; its log line must not name the patient
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(Verification)
    ae.associate("127.0.0.1", node.settings.port, ae_title="ICHNODE")  # rejected

    def resulted():  # noqa: ANN202
        with node.sessions() as session:
            d = study_detail(session, slices[0].StudyInstanceUID)
        return d and d["status"] == "resulted"

    wait_for(resulted, timeout=60)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("ichnode"))
    assert "association" in text and "refused" in text  # the flow was logged
    for ds in (slices[0], broken):
        for value in _phi_values(ds):
            assert value not in text, f"PHI value {value!r} found in the log"


def test_stow_rs_and_failed_notifications_log_no_patient_identifiers(node_factory, caplog):
    caplog.set_level(logging.DEBUG, logger="ichnode")
    with MLLPListener(ack_code="AE") as ris, FHIRListener(status=500) as ehr:
        node = node_factory(
            notify=[
                {"name": "ris", "kind": "hl7v2", "host": "127.0.0.1", "port": ris.port,
                 "when": "always"},
                {"name": "ehr", "kind": "fhir", "url": ehr.url, "when": "always"},
            ],
            delivery_max_attempts=1,
        )  # fmt: skip
        http = serve(node)
        try:
            slices = [s.dataset for s in synth_study(seed=13, n_slices=4, size=64)]
            answer = DICOMwebClient(f"{http.url}/dicom-web").store_instances(slices)
            assert len(answer.ReferencedSOPSequence) == 4

            def failed():  # noqa: ANN202
                with node.sessions() as session:
                    rows = session.scalars(select(Notification)).all()
                return len(rows) == 2 and all(r.status == DeliveryStatus.FAILED for r in rows)

            wait_for(failed, timeout=60)
        finally:
            http.stop()
    assert ris.messages and ehr.posts  # the identifiers did go to the receivers
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("ichnode"))
    assert "STOW-RS" in text and "notify" in text and "ACK AE" in text
    for value in _phi_values(slices[0]):
        assert value not in text, f"PHI value {value!r} found in the log"
