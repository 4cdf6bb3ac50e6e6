"""Result notifications from a running node: a flagged phantom study, received over DICOM,
reaches a real MLLP listener as an ORU^R01 that hl7apy validates and a real HTTP listener as
a DiagnosticReport that fhir.resources parses; a receiver that is down gets it after a restart.

The phantom (seed 2, a large intraparenchymal bleed) is one the shipped demo model flags (the
web tests rely on it too); the flag is asserted first, so a model change fails loudly here.
"""

from __future__ import annotations

from dicom_client import send
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from helpers import free_port, wait_for
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from notify_peers import FHIRListener, MLLPListener
from sqlalchemy import select

from ichnode.db.models import DeliveryStatus, Notification, StudyResult
from phantoms.synth import synth_study

FLAGGED_PHANTOM = dict(seed=2, n_slices=8, size=256, subtypes=("intraparenchymal",))


def flagged_study() -> list:
    return [s.dataset for s in synth_study(**FLAGGED_PHANTOM)]


def hl7(port: int) -> dict:
    return {"name": "ris", "kind": "hl7v2", "host": "127.0.0.1", "port": port}


def notes(node) -> list[Notification]:  # noqa: ANN001
    with node.sessions() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


def flagged(node) -> bool:  # noqa: ANN001
    with node.sessions() as session:
        return bool(session.scalar(select(StudyResult.flagged).order_by(StudyResult.id.desc())))


def test_flagged_study_notifies_the_ris_and_the_ehr(node_factory):
    with MLLPListener() as ris, FHIRListener() as ehr:
        node = node_factory(notify=[hl7(ris.port), {"name": "ehr", "kind": "fhir", "url": ehr.url}])
        datasets = flagged_study()
        assert set(send(node.settings.port, datasets)) == {0}
        sent = wait_for(
            lambda: (n := notes(node)) and len(n) == 2
            and all(x.status == DeliveryStatus.SENT for x in n) and n,
            timeout=90,
        )  # fmt: skip
        assert flagged(node)
    assert {n.kind for n in sent} == {"hl7v2", "fhir"}
    [text] = ris.messages
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    message.validate()
    [obr] = [line for line in text.split("\r") if line.startswith("OBR|")]
    assert obr.split("|")[3] == str(datasets[0].AccessionNumber)
    [(_, _, body)] = ehr.posts
    report = DiagnosticReport.model_validate_json(body)
    assert report.imagingStudy[0].identifier.value.endswith(str(datasets[0].StudyInstanceUID))
    assert "1386000" in [c.coding[0].code for c in report.conclusionCode]


def test_a_ris_that_is_down_gets_the_oru_after_the_node_restarts(node_factory):
    port = free_port()
    settings = {"notify": [hl7(port)], "delivery_backoff_seconds": 0.2,
                "delivery_max_attempts": 100, "stable_seconds": 3.0}  # fmt: skip
    node = node_factory(**settings)
    send(node.settings.port, flagged_study())
    wait_for(lambda: (n := notes(node)) and n[0].attempts >= 1, timeout=90)
    node.stop()
    [pending] = notes(node)
    assert pending.status == DeliveryStatus.PENDING and "MLLP" in pending.last_error
    with MLLPListener(port=port) as ris:
        again = node_factory(**settings)
        [sent] = wait_for(
            lambda: (n := notes(again)) and n[0].status == DeliveryStatus.SENT and n, timeout=30
        )
        wait_for(lambda: ris.messages, timeout=5)
    assert sent.attempts >= 2
    assert len(ris.messages) == 1
