"""Result notifications end to end on their own: a result version queues its messages, the
notifier sends them to real receivers (an MLLP listener on the ``hl7`` package, an HTTP
listener), retries one that is down -- also after a restart -- and records every attempt.

Real sockets and real databases (SQLite and PostgreSQL through ``db_url``).
"""

from __future__ import annotations

import json
import ssl
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from db_fixtures import add_instances
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from helpers import free_port
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from notify_peers import FHIRListener, MLLPListener
from pki import certificate, write_pem
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from ichnode.audit import list_deliveries
from ichnode.config import Settings
from ichnode.db import metrics, notifications, worklist
from ichnode.db.models import (
    DeliveryStatus,
    Instance,
    Notification,
    NotificationAttempt,
    StudyResult,
    StudyStatus,
    utcnow,
)
from ichnode.node.notifier import Notifier, receivers
from ichnode.resend import resend
from ichnode.results import study_detail
from ichnode.store import Store
from ichnode.subtypes import SUBTYPES

pytestmark = pytest.mark.every_backend


def settings(tmp_path: Path, notify: list[dict], **overrides: object) -> Settings:
    values: dict[str, object] = {
        "db_url": "sqlite:///unused.db",
        "store": tmp_path / "store",
        "delivery_backoff_seconds": 10.0,
        "delivery_max_attempts": 3,
        "network_timeout": 5.0,
        "notify": notify,
    }
    return Settings(**(values | overrides))


def hl7_target(port: int, when: str = "flagged") -> dict:
    return {"name": "ris", "kind": "hl7v2", "host": "127.0.0.1", "port": port, "when": when,
            "sending_application": "ICHNODE", "receiving_application": "RIS"}  # fmt: skip


def add_result(session_factory, s: Settings, flagged: bool = True) -> int:  # noqa: ANN001
    """A study with a scored version-1 result, queued as the monitor queues it."""
    with session_factory.begin() as session:
        [instance_id] = add_instances(session, 1)
        study = session.get(Instance, instance_id).study
        study.patient_id, study.patient_name, study.accession_number = "P1", "Doe^Jane", "A1"
        study.study_date, study.patient_sex = "20261205", "F"
        study.result_version, study.status = 1, StudyStatus.RESULTED
        result = StudyResult(
            study_id=study.id, version=1, model_id="0" * 64, flagged=flagged,
            flagged_subtypes="subdural,any" if flagged else "",
            n_instances=1, n_scored=1, n_failed=0, n_skipped=0, created_at=utcnow(),
        )  # fmt: skip
        result.set_probabilities([0.01, 0.02, 0.03, 0.04, 0.9 if flagged else 0.1,
                                  0.95 if flagged else 0.1])  # fmt: skip
        session.add(result)
        session.flush()
        notifications.enqueue(session, result, receivers(s), utcnow())
        return result.id


def rows(session_factory) -> list[Notification]:  # noqa: ANN001
    with session_factory() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


def test_flagged_result_reaches_the_mllp_listener_as_a_valid_oru(tmp_path, session_factory):
    with MLLPListener() as ris:
        s = settings(tmp_path, [hl7_target(ris.port)])
        add_result(session_factory, s)
        assert Notifier(session_factory, s).run_once() == 1
    [text] = ris.messages
    message = parse_message(text.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.STRICT)
    message.validate()
    assert len([s for s in text.split("\r") if s.startswith("OBX")]) == len(SUBTYPES)
    [row] = rows(session_factory)
    assert row.status == DeliveryStatus.SENT and row.attempts == 1
    with session_factory() as session:
        [attempt] = session.scalars(select(NotificationAttempt)).all()
        assert attempt.response == "AA" and attempt.error is None


def test_fhir_listener_gets_a_diagnostic_report_that_fhir_resources_parses(
    tmp_path, session_factory
):
    with FHIRListener() as ehr:
        target = {"name": "ehr", "kind": "fhir", "url": ehr.url, "token": "s3cret"}
        s = settings(tmp_path, [target])
        add_result(session_factory, s)
        assert Notifier(session_factory, s).run_once() == 1
    [(path, headers, body)] = ehr.posts
    assert path == "/fhir/DiagnosticReport"
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["Content-Type"] == "application/fhir+json"
    report = DiagnosticReport.model_validate_json(body)
    assert [c.coding[0].code for c in report.conclusionCode] == ["35486000", "1386000"]
    assert json.loads(body)["status"] == "preliminary"
    assert rows(session_factory)[0].status == DeliveryStatus.SENT


def test_unflagged_result_queues_only_for_always_receivers(tmp_path, session_factory):
    s = settings(
        tmp_path,
        [
            hl7_target(free_port()),
            {"name": "ehr", "kind": "fhir", "url": "http://127.0.0.1:9", "when": "always"},
        ],  # fmt: skip
    )
    add_result(session_factory, s, flagged=False)
    assert [r.target for r in rows(session_factory)] == ["ehr"]


def test_receiver_that_is_down_gets_the_message_after_a_restart(tmp_path, engine):
    port = free_port()
    s = settings(tmp_path, [hl7_target(port)])
    first = sessionmaker(engine)
    add_result(first, s)
    now = utcnow()
    assert Notifier(first, s).run_once(now) == 1  # nobody listens: a failed attempt
    [row] = rows(first)
    assert row.status == DeliveryStatus.PENDING and row.attempts == 1
    assert row.next_attempt_at >= now + timedelta(seconds=10)
    assert row.last_error and "MLLP" in row.last_error
    engine.dispose()  # the node stops; a new one starts on the same database
    second = sessionmaker(engine)
    with MLLPListener(port=port) as ris:
        assert Notifier(second, s).run_once(now) == 0  # not due yet: backoff
        assert Notifier(second, s).run_once(now + timedelta(seconds=11)) == 1
    assert len(ris.messages) == 1
    [row] = rows(second)
    assert row.status == DeliveryStatus.SENT and row.attempts == 2
    assert ris.messages[0].split("\r")[0].split("|")[9] == f"ICHNODE{row.id}"  # MSH-10


def test_application_error_ack_is_a_failed_attempt(tmp_path, session_factory):
    with MLLPListener(ack_code="AE") as ris:
        s = settings(tmp_path, [hl7_target(ris.port)], delivery_max_attempts=1)
        add_result(session_factory, s)
        Notifier(session_factory, s).run_once()
    [row] = rows(session_factory)
    assert row.status == DeliveryStatus.FAILED
    assert row.last_error.endswith("ACK AE")


def test_notifications_show_in_the_study_detail_and_resend_queues_them_again(
    tmp_path, session_factory
):
    with MLLPListener() as ris:
        s = settings(tmp_path, [hl7_target(ris.port)])
        result_id = add_result(session_factory, s)
        Notifier(session_factory, s).run_once()
        with session_factory.begin() as session:
            assert notifications.resend(session, result_id, utcnow()) == 1
        Notifier(session_factory, s).run_once()
    assert len(ris.messages) == 2
    with session_factory() as session:
        uid = session.get(StudyResult, result_id).study.study_instance_uid
        detail = study_detail(session, uid)
    shown = [d for d in detail["deliveries"] if d["kind"] == "hl7v2"]
    assert [d["status"] for d in shown] == ["sent", "sent"]
    assert shown[0]["destination"] == "ris"


def test_resend_queues_the_notifications_of_a_version_without_report_objects(
    tmp_path, session_factory
):
    s = settings(tmp_path, [hl7_target(free_port())])
    result_id = add_result(session_factory, s)
    with session_factory.begin() as session:
        uid = session.get(StudyResult, result_id).study.study_instance_uid
        done = resend(session, Store(tmp_path / "store", 0), uid)
    assert done.notified == 1 and done.queued == 0
    assert [r.status for r in rows(session_factory)] == [DeliveryStatus.PENDING] * 2


def test_audit_lists_notification_attempts_with_the_receivers_answer(tmp_path, session_factory):
    with MLLPListener(ack_code="AR") as ris:
        s = settings(tmp_path, [hl7_target(ris.port)])
        add_result(session_factory, s)
        Notifier(session_factory, s).run_once()
    with session_factory() as session:
        [row] = list_deliveries(session)
    assert (row["destination"], row["kind"], row["status"]) == ("ris", "hl7v2", "AR")
    assert "ACK AR" in row["error"]


def test_https_fhir_receiver_is_verified_against_the_configured_ca(tmp_path, session_factory):
    folder = tmp_path / "pki"
    folder.mkdir()
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("notify test CA", ca_key, "notify test CA", ca_key, ca=True)
    ca_file = write_pem(folder, "ca", ca)[0]
    cert_file, key_file = write_pem(folder, "ehr", certificate("127.0.0.1", key, "notify test CA",
                                                               ca_key, ca=False), key)  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(cert_file), str(key_file))
    with FHIRListener(ssl_context=server) as ehr:
        target = [{"name": "ehr", "kind": "fhir", "url": ehr.url}]
        untrusted = settings(tmp_path, target, delivery_max_attempts=1)
        add_result(session_factory, untrusted)
        Notifier(session_factory, untrusted).run_once()  # system CAs: refused
        trusted = settings(tmp_path, target, tls={"ca": ca_file})
        add_result(session_factory, trusted)
        Notifier(session_factory, trusted).run_once()
    first, second = rows(session_factory)
    assert first.status == DeliveryStatus.FAILED and "SSLError" in first.last_error
    assert second.status == DeliveryStatus.SENT
    assert len(ehr.posts) == 1


def test_a_failed_notification_marks_the_study_delivery_failed_and_counts_in_metrics(
    tmp_path, session_factory
):
    s = settings(tmp_path, [hl7_target(free_port())], delivery_max_attempts=1)
    result_id = add_result(session_factory, s)
    Notifier(session_factory, s).run_once()
    with session_factory() as session:
        uid = session.get(StudyResult, result_id).study.study_instance_uid
        assert worklist.state_of(session, uid) == worklist.WorklistState.DELIVERY_FAILED
        assert metrics.notifications_by_status(session) == {"failed": 1}


def test_a_notifier_whose_claim_lapsed_cannot_record_its_attempt(tmp_path, session_factory):
    # Notifier A claims and stalls past its lease; notifier B takes the row over and sends it.
    s = settings(tmp_path, [hl7_target(9)])
    add_result(session_factory, s)
    now = utcnow()
    with session_factory.begin() as session:
        [slow] = notifications.claim(session, now, 10, 30.0)
        assert notifications.claim(session, now + timedelta(seconds=29), 10, 30.0) == []
    with session_factory.begin() as session:
        [fast] = notifications.claim(session, now + timedelta(seconds=31), 10, 30.0)
    assert fast.id == slow.id and fast.claim_token != slow.claim_token
    record = {"now": now, "max_attempts": 3, "backoff_seconds": 10.0}
    with session_factory.begin() as session:
        assert notifications.record(session, slow, None, "stale", **record) is None
    with session_factory.begin() as session:
        assert notifications.record(session, fast, "AA", None, **record) == DeliveryStatus.SENT
    [row] = rows(session_factory)
    assert (row.status, row.attempts, row.last_error) == (DeliveryStatus.SENT, 1, None)
