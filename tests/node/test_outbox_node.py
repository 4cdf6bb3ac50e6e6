"""Results back to DICOM destinations from a running node, with DCMTK ``storescp`` as the PACS.

The node (``node_factory``) receives a phantom study with a forced
bleed, results it, builds the report objects and sends them; ``storescp`` writes what it
receives. Assertions never depend on which findings the shipped model produces.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pydicom
import pytest
from db_fixtures import add_instances, drain_queue
from delivery_fixtures import (
    SR_MODALITY,
    Row,
    all_sent,
    bleed_study,
    dciodvfy_errors,
    destination,
    latest_result,
    rows,
)
from dicom_client import send
from helpers import free_port, wait_for
from orthanc import StoreSCP
from typer.testing import CliRunner

from ichnode.cli import app
from ichnode.db.models import DeliveryStatus, utcnow


def test_report_objects_reach_storescp_valid_and_in_the_studys_own_series(node_factory, tmp_path):
    with StoreSCP(tmp_path / "received") as scp:
        node = node_factory(destinations=[destination(scp.port)])
        datasets = bleed_study()
        assert set(send(node.settings.port, datasets)) == {0}
        sent = wait_for(lambda: all_sent(node), timeout=60)
        result = latest_result(node)
        received = wait_for(lambda: len(scp.files()) == len(sent) and scp.received(), 10)

    study_uid = str(datasets[0].StudyInstanceUID)
    ct_series = {str(ds.SeriesInstanceUID) for ds in datasets}
    kinds = {r.kind: r for r in sent}
    # The KOS goes out for a positive study only.
    assert set(kinds) == ({"sr", "summary", "kos"} if result.flagged else {"sr", "summary"})
    assert set(received) == {r.sop_instance_uid for r in sent}
    modalities = {kind: received[r.sop_instance_uid].Modality for kind, r in kinds.items()}
    assert modalities["sr"] == SR_MODALITY and modalities["summary"] in ("OT", "SC")
    series = set()
    for r in sent:
        ds = received[r.sop_instance_uid]
        assert str(ds.StudyInstanceUID) == study_uid
        assert str(ds.SeriesInstanceUID) not in ct_series
        series.add(str(ds.SeriesInstanceUID))
        assert r.attempts == 1 and r.sent_at is not None
    assert len(series) == len(sent)  # each object in its own series
    for path in scp.files():  # the objects as they went over the wire
        assert dciodvfy_errors(path) == [], path.name


def test_reopened_study_gets_an_sr_that_references_the_previous_one(node_factory, tmp_path):
    with StoreSCP(tmp_path / "received") as scp:
        node = node_factory(destinations=[destination(scp.port, ["sr", "summary"])])
        datasets = bleed_study(seed=2, n_slices=9)
        send(node.settings.port, datasets[:8])
        first = {r.kind: r for r in wait_for(lambda: all_sent(node, 1, 2), timeout=60)}
        send(node.settings.port, datasets[8:])
        second = {r.kind: r for r in wait_for(lambda: all_sent(node, 2, 2), timeout=60)}

    def stored(entry: Row) -> pydicom.Dataset:
        return pydicom.dcmread(node.store.path(entry.path), stop_before_pixels=True)

    old_sr, new_sr = stored(first["sr"]), stored(second["sr"])
    assert new_sr.SOPInstanceUID != old_sr.SOPInstanceUID
    ref = new_sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old_sr.SOPInstanceUID
    assert new_sr.SeriesInstanceUID == old_sr.SeriesInstanceUID
    assert (old_sr.InstanceNumber, new_sr.InstanceNumber) == (1, 2)
    # The new summary joins the first one's series.
    assert stored(second["summary"]).SeriesInstanceUID == stored(first["summary"]).SeriesInstanceUID


def test_study_without_a_scored_slice_gets_no_report_objects(node_factory, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ichnode.node.reporting")
    node = node_factory(destinations=[destination(free_port())])
    datasets = bleed_study(seed=3, n_slices=3, size=64)
    for ds in datasets:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]  # skipped by the selection rules
    send(node.settings.port, datasets)
    result = wait_for(lambda: latest_result(node), timeout=30)
    assert result.n_scored == 0
    wait_for(lambda: "no scored slice, no report objects" in caplog.text, timeout=10)
    assert rows(node) == []


def test_report_failure_is_logged_and_the_node_keeps_reporting(
    node_factory, session_factory, tmp_path, caplog
):
    # A scored study whose files are not in the store: its reports cannot be built.
    with session_factory.begin() as session:
        add_instances(session, 2)
    drain_queue(session_factory, "pre-filled", batch=10)
    with StoreSCP(tmp_path / "received") as scp:
        node = node_factory(destinations=[destination(scp.port, ["sr"])])
        wait_for(lambda: "not built" in caplog.text, timeout=30)
        send(node.settings.port, bleed_study(seed=4, n_slices=4, size=128))
        [sent] = wait_for(lambda: all_sent(node), timeout=60)
    assert sent.kind == "sr"
    assert "not built: key slice" in caplog.text and "stored file unreadable" in caplog.text


def test_pending_objects_are_sent_after_a_node_restart(node_factory, tmp_path):
    port = free_port()
    settings = {
        "destinations": [destination(port, ["sr", "summary"])],
        "delivery_backoff_seconds": 0.2,
        "delivery_max_attempts": 100,
        # Found in CI: with the default 0.5 s a loaded machine resulted the study at 3 of its
        # 4 slices, then again at 4, and the second version's objects made 4 rows, not 2.
        "stable_seconds": 3.0,
    }
    node = node_factory(**settings)
    send(node.settings.port, bleed_study(seed=5, n_slices=4, size=128))
    wait_for(lambda: len(rows(node)) == 2 and all(r.attempts >= 1 for r in rows(node)), 60)
    node.stop()
    assert all(r.status == DeliveryStatus.PENDING for r in rows(node))
    with StoreSCP(tmp_path / "received", port=port) as scp:
        again = node_factory(**settings)
        # Due again after the backoff of the attempts made while the PACS was down.
        sent = wait_for(lambda: all_sent(again), timeout=60)
        wait_for(lambda: len(scp.files()) == 2, timeout=10)
    assert all(r.attempts >= 2 for r in sent)  # failed while down, then sent
    assert {r.kind for r in sent} == {"sr", "summary"}


def test_results_go_back_to_the_calling_ae_at_its_address(node_factory, tmp_path):
    with StoreSCP(tmp_path / "received") as scp:
        node = node_factory(return_to_sender={"TESTSCU": scp.port})
        send(node.settings.port, bleed_study(seed=6, n_slices=4, size=128), calling_ae="TESTSCU")
        sent = wait_for(lambda: all_sent(node, count=2), timeout=60)
        wait_for(lambda: len(scp.files()) == 2, timeout=10)
    assert {(r.destination, r.ae_title, r.host, r.port) for r in sent} == {
        ("return:TESTSCU", "TESTSCU", "127.0.0.1", scp.port)
    }
    assert {r.kind for r in sent} == {"sr", "summary"}


def test_results_go_back_to_the_sender_after_the_audit_rows_are_pruned(node_factory, tmp_path):
    """The sender's address is kept on the study when it arrives, not looked up in the audit
    table, whose rows the pruner deletes."""
    from ichnode.audit import prune_associations

    with StoreSCP(tmp_path / "received") as scp:
        node = node_factory(return_to_sender={"TESTSCU": scp.port}, stable_seconds=2.0)
        send(node.settings.port, bleed_study(seed=6, n_slices=4, size=128), calling_ae="TESTSCU")
        with node.sessions.begin() as session:
            assert prune_associations(session, utcnow() + timedelta(days=1)) >= 1
        sent = wait_for(lambda: all_sent(node, count=2), timeout=60)
    assert {(r.destination, r.host) for r in sent} == {("return:TESTSCU", "127.0.0.1")}


def test_results_command_shows_the_delivery_state(node_factory, tmp_path, db_url):
    node = node_factory(
        destinations=[destination(free_port(), ["sr"])],
        delivery_backoff_seconds=60.0,
    )
    datasets = bleed_study(seed=7, n_slices=3, size=128)
    send(node.settings.port, datasets)
    wait_for(lambda: rows(node) and rows(node)[0].attempts == 1, timeout=60)
    uid = str(datasets[0].StudyInstanceUID)
    runner = CliRunner()
    as_json = runner.invoke(
        app, ["results", "--study", uid, "--db-url", db_url, "--format", "json"]
    )
    assert as_json.exit_code == 0, as_json.output
    [delivery] = json.loads(as_json.output)[0]["deliveries"]
    assert delivery["kind"] == "sr" and delivery["destination"] == "scp"
    assert (delivery["status"], delivery["attempts"]) == ("pending", 1)
    assert "no association" in delivery["last_error"] and delivery["sent_at"] is None
    table = runner.invoke(app, ["results", "--study", uid, "--db-url", db_url])
    assert table.exit_code == 0 and "report objects sent to the PACS" in table.output
    assert "pending" in table.output


def test_resend_command_sends_the_objects_again(node_factory, tmp_path, db_url):
    with StoreSCP(tmp_path / "received") as scp:
        node = node_factory(destinations=[destination(scp.port, ["sr", "summary"])])
        datasets = bleed_study(seed=8, n_slices=3, size=128)
        send(node.settings.port, datasets)
        wait_for(lambda: all_sent(node, count=2), timeout=60)
        uid = str(datasets[0].StudyInstanceUID)
        done = CliRunner().invoke(
            app, ["resend", "--study", uid, "--db-url", db_url, "--store", str(tmp_path / "store")]
        )
        assert done.exit_code == 0, done.output
        assert "queued 2 report object(s)" in done.output
        again = wait_for(lambda: all_sent(node, count=4), timeout=10)
    assert [r.sop_instance_uid for r in again[2:]] == [r.sop_instance_uid for r in again[:2]]


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        ("ISO_IR 100", "Müller^Jürgen"),
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),  # as Japanese sites send
    ],
    ids=["latin1", "iso2022-japanese"],
)
def test_patient_names_reach_the_pacs_intact_in_every_report_object(
    node_factory, tmp_path, charset, name
):
    datasets = bleed_study(seed=8, n_slices=4, size=128)
    for ds in datasets:
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
    with StoreSCP(tmp_path / "received") as scp:
        # stable_seconds 3 (not 0.5): this test timed out once in CI on three xdist workers
        # (not reproduced); the likely cause, as in test_pending_objects_are_sent_after_a_
        # node_restart, is a loaded machine resulting the study before its last slice.
        node = node_factory(destinations=[destination(scp.port)], stable_seconds=3.0)
        assert set(send(node.settings.port, datasets)) == {0}
        sent = wait_for(lambda: all_sent(node), timeout=60)
        received = wait_for(lambda: len(scp.files()) == len(sent) and scp.received(), 10)
    assert {r.kind for r in sent} >= {"sr", "summary"}
    for r in sent:  # read back from the bytes the destination stored
        ds = received[r.sop_instance_uid]
        assert str(ds.PatientName) == name, r.kind
