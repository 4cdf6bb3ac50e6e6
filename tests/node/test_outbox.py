"""The outbox sender on its own: claims, statuses, backoff, FAILED, wake-up, resend.

Real sockets (an in-process pynetdicom SCP answering a chosen status, or a closed port) and
real databases (SQLite and PostgreSQL through the ``db_url`` fixture).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from db_fixtures import add_instances
from helpers import ct_dataset, free_port, wait_for
from pki import certificate, write_pem
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from ichnode.config import Settings
from ichnode.db.delivery import backoff_delay
from ichnode.db.models import (
    DeliveryAttempt,
    DeliveryStatus,
    Instance,
    OutboxEntry,
    ReportKind,
    ReportObject,
    StudyResult,
    utcnow,
)
from ichnode.node import outbox as outbox_module
from ichnode.node.outbox import Outbox
from ichnode.node.scu import Outcome, check_destinations
from ichnode.node.statuses import (
    COERCION_OF_DATA_ELEMENTS,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    ELEMENTS_DISCARDED,
    SUCCESS,
)
from ichnode.resend import DeliveryError, resend
from ichnode.store import Store

#: The claims, locks and SQL here behave differently on the two databases.
pytestmark = pytest.mark.every_backend

OUT_OF_RESOURCES = 0xA700
PACS_AE = "PACS"


def settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "db_url": "sqlite:///unused.db",
        "store": tmp_path / "store",
        "delivery_backoff_seconds": 10.0,
        "delivery_max_attempts": 3,
        "network_timeout": 5.0,
    }
    return Settings(**(values | overrides))


def part10(ds) -> bytes:  # noqa: ANN001
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def queue_entries(session_factory, store: Store, port: int, n: int = 1) -> list[int]:  # noqa: ANN001
    """One study with a version-1 result and ``n`` PENDING entries for 127.0.0.1:``port``."""
    with session_factory.begin() as session:
        [instance_id] = add_instances(session, 1)
        study = session.get(Instance, instance_id).study
        study.result_version = 1
        result = StudyResult(
            study_id=study.id, version=1, model_id="test", flagged=False,
            n_instances=1, n_scored=1, n_failed=0, n_skipped=0,
        )  # fmt: skip
        session.add(result)
        session.flush()
        entries = []
        for _ in range(n):
            ds = ct_dataset(np.zeros((8, 8), dtype=np.uint16))
            relative = store.relative_path(
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
            )
            store.write(relative, part10(ds))
            obj = ReportObject(
                study_result_id=result.id,
                kind=ReportKind.SR,
                sop_class_uid=str(ds.SOPClassUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                path=relative,
            )
            entries.append(
                OutboxEntry(
                    report_object=obj,
                    destination="pacs",
                    ae_title=PACS_AE,
                    host="127.0.0.1",
                    port=port,
                )  # fmt: skip
            )
        session.add_all(entries)
        session.flush()
        return [e.id for e in entries]


@contextmanager
def status_scp(
    status: int, ssl_context: ssl.SSLContext | None = None
) -> Iterator[dict[str, object]]:
    """A pynetdicom storage SCP answering every C-STORE with ``status``; counts what it gets."""
    seen: dict[str, object] = {"associations": 0, "stored": []}
    ae = AE(ae_title=PACS_AE)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)

    def on_store(event: evt.Event) -> int:
        seen["stored"].append(str(event.request.AffectedSOPInstanceUID))
        return status

    def on_accepted(event: evt.Event) -> None:
        seen["associations"] += 1

    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_ACCEPTED, on_accepted)],
        ssl_context=ssl_context,
    )
    seen["port"] = port
    try:
        yield seen
    finally:
        server.shutdown()


def entry(session_factory, entry_id: int) -> OutboxEntry:  # noqa: ANN001
    """The outbox row, its report object loaded (``.report_object.path``...)."""
    with session_factory() as session:
        row = session.get(OutboxEntry, entry_id)
        assert row is not None and row.report_object is not None
        return row


def attempts(session_factory, entry_id: int) -> list[DeliveryAttempt]:  # noqa: ANN001
    with session_factory() as session:
        return session.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.outbox_id == entry_id)
            .order_by(DeliveryAttempt.id)
        ).all()


def test_closed_port_is_retried_with_exponential_backoff_then_failed(session_factory, tmp_path):
    s = settings(tmp_path)
    store = Store(s.store)
    [entry_id] = queue_entries(session_factory, store, free_port())
    outbox = Outbox(session_factory, store, s)
    t0 = utcnow()

    assert outbox.run_once(t0) == 1
    first = entry(session_factory, entry_id)
    assert (first.status, first.attempts) == (DeliveryStatus.PENDING, 1)
    assert first.next_attempt_at == t0 + timedelta(seconds=10)
    assert "no association" in first.last_error

    assert outbox.run_once(t0 + timedelta(seconds=9)) == 0  # not due yet
    t1 = t0 + timedelta(seconds=10)
    assert outbox.run_once(t1) == 1
    assert entry(session_factory, entry_id).next_attempt_at == t1 + timedelta(seconds=20)

    assert outbox.run_once(t1 + timedelta(seconds=20)) == 1
    last = entry(session_factory, entry_id)
    assert (last.status, last.attempts) == (DeliveryStatus.FAILED, 3)
    assert outbox.run_once(t1 + timedelta(days=1)) == 0  # FAILED is never picked again
    tries = attempts(session_factory, entry_id)
    assert len(tries) == 3
    assert all(a.status_code is None and "no association" in a.error for a in tries)


@pytest.mark.parametrize(
    "status",
    [SUCCESS, COERCION_OF_DATA_ELEMENTS, ELEMENTS_DISCARDED, DATA_SET_DOES_NOT_MATCH_SOP_CLASS],
    ids=lambda code: f"0x{code:04X}",
)
def test_success_and_warning_statuses_mark_the_entry_sent(session_factory, tmp_path, status):
    s = settings(tmp_path)
    store = Store(s.store)
    with status_scp(status) as scp:
        [entry_id] = queue_entries(session_factory, store, scp["port"])
        assert Outbox(session_factory, store, s).run_once() == 1
    sent = entry(session_factory, entry_id)
    assert (sent.status, sent.attempts, sent.last_error) == (DeliveryStatus.SENT, 1, None)
    assert sent.sent_at is not None
    assert [a.status_code for a in attempts(session_factory, entry_id)] == [status]
    assert scp["stored"] == [sent.report_object.sop_instance_uid]


def test_failure_status_is_recorded_and_retried(session_factory, tmp_path):
    s = settings(tmp_path)
    store = Store(s.store)
    with status_scp(OUT_OF_RESOURCES) as scp:
        [entry_id] = queue_entries(session_factory, store, scp["port"])
        Outbox(session_factory, store, s).run_once()
    retried = entry(session_factory, entry_id)
    assert (retried.status, retried.attempts) == (DeliveryStatus.PENDING, 1)
    assert "0xA700" in retried.last_error and "Out of Resources" in retried.last_error
    [attempt] = attempts(session_factory, entry_id)
    assert attempt.status_code == OUT_OF_RESOURCES


def test_entries_for_one_destination_share_one_association(session_factory, tmp_path):
    s = settings(tmp_path)
    store = Store(s.store)
    with status_scp(SUCCESS) as scp:
        ids = queue_entries(session_factory, store, scp["port"], n=3)
        assert Outbox(session_factory, store, s).run_once() == 3
    assert scp["associations"] == 1
    assert all(entry(session_factory, i).status == DeliveryStatus.SENT for i in ids)


def test_a_claimed_entry_is_not_claimed_by_a_second_sender(session_factory, tmp_path):
    s = settings(tmp_path)
    store = Store(s.store)
    [entry_id] = queue_entries(session_factory, store, free_port())
    now = utcnow()
    first = Outbox(session_factory, store, s).claim(now)
    assert [c.id for c in first] == [entry_id]
    assert Outbox(session_factory, store, s).claim(now) == []


def test_a_sender_whose_claim_lapsed_cannot_record_its_attempt(session_factory, tmp_path):
    """The claim carries a token: after the lease ends another sender takes the entry, and the
    first sender's late outcome is dropped instead of counting a second attempt."""
    s = settings(tmp_path)
    store = Store(s.store)
    [entry_id] = queue_entries(session_factory, store, free_port())
    now = utcnow()
    slow, fast = Outbox(session_factory, store, s), Outbox(session_factory, store, s)
    [stale] = slow.claim(now)
    later = now + timedelta(seconds=outbox_module.CLAIM_SECONDS + 1)
    [fresh] = fast.claim(later)
    assert fresh.id == stale.id == entry_id and fresh.claim_token != stale.claim_token
    assert slow.record(stale, Outcome(0x0000, None), later) is None
    assert entry(session_factory, entry_id).attempts == 0
    assert fast.record(fresh, Outcome(0xA700, "refused"), later) == DeliveryStatus.PENDING
    assert entry(session_factory, entry_id).attempts == 1


def test_an_error_quoting_a_nul_is_recorded(session_factory, tmp_path):
    """A peer's words may hold NUL (PostgreSQL refuses it in text): recorded as U+FFFD."""
    s = settings(tmp_path)
    store = Store(s.store)
    [entry_id] = queue_entries(session_factory, store, free_port())
    outbox = Outbox(session_factory, store, s)
    [claimed] = outbox.claim(utcnow())
    assert outbox.record(claimed, Outcome(0xA700, "peer said A\x00"), utcnow()) is not None
    assert entry(session_factory, entry_id).last_error == "peer said A\ufffd"


def test_a_send_cancelled_at_shutdown_releases_its_claim(session_factory, tmp_path, monkeypatch):
    # Found in CI: entries claimed just before a stop kept their 10-minute claim, so the
    # restarted node did not send them. A cancelled send is no attempt and is due at once.
    monkeypatch.setattr(outbox_module, "PARALLEL_DESTINATIONS", 1)
    s = settings(tmp_path)
    store = Store(s.store)
    [entry_id] = queue_entries(session_factory, store, free_port())
    outbox = Outbox(session_factory, store, s)
    gate = threading.Event()
    outbox._pool.submit(gate.wait)  # the only send thread is taken: the next send waits
    claimed, [future] = outbox.dispatch()
    assert claimed == 1 and Outbox(session_factory, store, s).claim(utcnow()) == []
    outbox._pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert future.cancelled() and outbox.busy() == set()
    assert entry(session_factory, entry_id).attempts == 0
    again = Outbox(session_factory, store, s).claim(utcnow())
    assert [c.id for c in again] == [entry_id]


def test_missing_file_is_an_attempt_with_an_error(session_factory, tmp_path):
    s = settings(tmp_path)
    store = Store(s.store)
    with status_scp(SUCCESS) as scp:
        [entry_id] = queue_entries(session_factory, store, scp["port"])
        store.remove(entry(session_factory, entry_id).report_object.path)
        Outbox(session_factory, store, s).run_once()
    failed = entry(session_factory, entry_id)
    assert failed.status == DeliveryStatus.PENDING and "missing" in failed.last_error
    assert scp["stored"] == []


def test_woken_sender_sends_a_new_entry_without_waiting_for_its_poll(
    session_factory, tmp_path, monkeypatch
):
    monkeypatch.setattr(outbox_module, "POLL_SECONDS", 3600.0)  # the poll never comes
    s = settings(tmp_path)
    store = Store(s.store)
    stop = threading.Event()
    outbox = Outbox(session_factory, store, s)
    with status_scp(SUCCESS) as scp:
        thread = threading.Thread(target=outbox.run, args=(stop,), daemon=True)
        thread.start()
        try:
            [entry_id] = queue_entries(session_factory, store, scp["port"])
            outbox.wake.set()
            wait_for(lambda: entry(session_factory, entry_id).status == DeliveryStatus.SENT, 30)
        finally:
            stop.set()
            outbox.wake.set()
            thread.join(10)
    assert not thread.is_alive()


def test_resend_queues_the_latest_objects_again_as_new_rows(session_factory, tmp_path):
    s = settings(tmp_path)
    store = Store(s.store)
    with status_scp(SUCCESS) as scp:
        ids = queue_entries(session_factory, store, scp["port"], n=2)
        Outbox(session_factory, store, s).run_once()
        with session_factory.begin() as session:
            old = session.get(OutboxEntry, ids[0])
            study_uid = old.report_object.study_result.study.study_instance_uid
        with session_factory.begin() as session:
            # Both rows are kind "sr" to one destination: the newest is the one re-queued.
            assert resend(session, store, study_uid).queued == 1
        assert Outbox(session_factory, store, s).run_once() == 1
    with session_factory() as session:
        rows = session.scalars(select(OutboxEntry).order_by(OutboxEntry.id)).all()
    assert len(rows) == 3
    assert rows[2].status == DeliveryStatus.SENT
    assert rows[2].report_object_id == rows[1].report_object_id  # the same object again


def test_resend_of_an_unknown_study_is_a_one_line_error(session_factory, tmp_path):
    store = Store(tmp_path / "store")
    with session_factory() as session, pytest.raises(DeliveryError, match="no study"):
        resend(session, store, "1.2.3.4")


def test_check_destinations_reports_ok_with_round_trip_and_failures(tmp_path):
    with status_scp(SUCCESS) as scp:
        s = settings(
            tmp_path,
            destinations=[
                {"name": "up", "ae_title": PACS_AE, "host": "127.0.0.1", "port": scp["port"]},
                {"name": "down", "ae_title": PACS_AE, "host": "127.0.0.1", "port": free_port()},
            ],
        )
        up, down = check_destinations(s)
    assert (up.name, up.ok, up.status) == ("up", True, "OK") and up.round_trip_ms > 0
    assert (down.name, down.ok, down.round_trip_ms) == ("down", False, None)
    assert "no association" in down.status


@pytest.fixture(scope="module")
def tls_pacs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("outbox test CA", ca_key, "outbox test CA", ca_key, ca=True)
    cert = certificate("127.0.0.1", key, "outbox test CA", ca_key, ca=False)
    files = {"ca": write_pem(folder, "ca", ca)[0]}
    files["cert"], files["key"] = write_pem(folder, "pacs", cert, key)
    return files


def _server_context(files: dict[str, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(files["cert"]), str(files["key"]))
    return ctx


def _tls_destination(port: int) -> list[dict[str, object]]:
    return [{"name": "pacs", "ae_title": PACS_AE, "host": "127.0.0.1", "port": port, "tls": True}]


def test_tls_destination_is_sent_over_tls_verified_against_the_configured_ca(
    session_factory, tmp_path, tls_pacs
):
    with status_scp(SUCCESS, _server_context(tls_pacs)) as scp:
        s = settings(
            tmp_path, tls={"ca": tls_pacs["ca"]}, destinations=_tls_destination(scp["port"])
        )
        store = Store(s.store)
        [entry_id] = queue_entries(session_factory, store, scp["port"])
        Outbox(session_factory, store, s).run_once()
    assert entry(session_factory, entry_id).status == DeliveryStatus.SENT
    assert len(scp["stored"]) == 1


def test_tls_destination_with_an_untrusted_certificate_is_not_sent(
    session_factory, tmp_path, tls_pacs
):
    with status_scp(SUCCESS, _server_context(tls_pacs)) as scp:
        # No tls.ca: the system CAs, which do not know the test CA.
        s = settings(tmp_path, destinations=_tls_destination(scp["port"]))
        store = Store(s.store)
        [entry_id] = queue_entries(session_factory, store, scp["port"])
        Outbox(session_factory, store, s).run_once()
    retried = entry(session_factory, entry_id)
    assert (retried.status, retried.attempts) == (DeliveryStatus.PENDING, 1)
    assert "no association" in retried.last_error
    assert scp["stored"] == []


def test_destination_that_aborts_mid_store_is_retried_and_nothing_is_lost(
    session_factory, tmp_path
):
    """A PACS that accepts the association, then aborts on the C-STORE: the attempt is
    recorded, the entry stays pending, and the next pass delivers it to a working PACS."""
    s = settings(tmp_path)
    store = Store(s.store)
    ae = AE(ae_title=PACS_AE)
    ae.supported_contexts = AllStoragePresentationContexts

    def abort(event: evt.Event) -> int:
        event.assoc.abort()
        return 0xA700

    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, abort)]
    )
    try:
        [entry_id] = queue_entries(session_factory, store, port)
        Outbox(session_factory, store, s).run_once()
    finally:
        server.shutdown()
    pending = entry(session_factory, entry_id)
    assert (pending.status, pending.attempts) == (DeliveryStatus.PENDING, 1)
    [failed] = attempts(session_factory, entry_id)
    assert failed.error and failed.status_code is None
    # The PACS is fixed (here: a working SCP); the retry delivers the object.
    with status_scp(0) as scp:
        with session_factory.begin() as session:
            row = session.get(OutboxEntry, entry_id)
            row.port, row.next_attempt_at = scp["port"], utcnow()
        Outbox(session_factory, store, s).run_once()
        assert scp["stored"] == [pending.report_object.sop_instance_uid]
    assert entry(session_factory, entry_id).status == DeliveryStatus.SENT


def test_a_destination_that_hangs_holds_up_no_other(session_factory, tmp_path):
    # A peer that accepts the TCP connection and never answers the association request.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    s = settings(tmp_path, network_timeout=30.0)
    store = Store(s.store)
    stop = threading.Event()
    outbox = Outbox(session_factory, store, s)
    with status_scp(SUCCESS) as scp:
        [hang_id] = queue_entries(session_factory, store, silent.getsockname()[1])
        [up_id] = queue_entries(session_factory, store, scp["port"])
        with session_factory.begin() as session:
            session.get(OutboxEntry, hang_id).destination = "hang"  # claimed first
            session.get(OutboxEntry, up_id).destination = "up"
        thread = threading.Thread(target=outbox.run, args=(stop,), daemon=True)
        thread.start()
        try:
            wait_for(lambda: entry(session_factory, up_id).status == DeliveryStatus.SENT, 20)
            # Sent while the silent peer still holds its association attempt. The sender
            # records SENT before it lets go of "up": wait for that, not for the silent peer.
            wait_for(lambda: "up" not in outbox.busy(), 5)
            assert outbox.busy() == {"hang"}
            assert entry(session_factory, hang_id).attempts == 0
        finally:
            silent.close()  # the hanging attempt ends at once
            stop.set()
            outbox.wake.set()
            thread.join(30)
    assert not thread.is_alive()
    hung = entry(session_factory, hang_id)
    assert hung.attempts == 1 and hung.status == DeliveryStatus.PENDING


def test_the_backoff_stops_doubling_at_its_maximum(session_factory, tmp_path):
    s = settings(tmp_path, delivery_max_attempts=5, delivery_backoff_max_seconds=25.0)
    store = Store(s.store)
    [entry_id] = queue_entries(session_factory, store, free_port())
    outbox = Outbox(session_factory, store, s)
    now, waits = utcnow(), []
    for _ in range(4):
        assert outbox.run_once(now) == 1
        due = entry(session_factory, entry_id).next_attempt_at
        waits.append((due - now).total_seconds())
        now = due
    assert waits == [10.0, 20.0, 25.0, 25.0]  # 10 x 2^(n-1), at most 25


def test_backoff_delay_of_many_attempts_is_the_maximum_not_an_overflow():
    assert backoff_delay(1, 5.0) == 5.0
    assert backoff_delay(4, 5.0) == 40.0
    assert backoff_delay(5000, 5.0, 3600.0) == 3600.0
