"""Who may connect: calling AE allow-list, AE titles tied to addresses, the called AE title,
the A-ASSOCIATE-RJ reasons peers see, one log line per rejection, and the audit trail.

Real associations from pynetdicom and DCMTK over loopback.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from dicom_client import echo, send
from helpers import run_dcmtk, study, wait_for, write_all
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from ichnode.audit import (
    AssociationRecord,
    AuditPruner,
    close_association,
    list_associations,
    render,
)
from ichnode.config import Settings
from ichnode.db.session import open_database
from ichnode.node.associations import (
    CALLED_AE_NOT_RECOGNISED,
    CALLING_AE_NOT_RECOGNISED,
    REJECTED_PERMANENT,
    SOURCE_SERVICE_USER,
)
from ichnode.node.statuses import SUCCESS

SCP_LOGGER = "ichnode.node.associations"  # association policy and audit


def _associate(port: int, calling: str, called: str = "ICHNODE"):  # noqa: ANN202
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=called)


def _rejection(assoc) -> tuple[int, int, int]:  # noqa: ANN001
    assert assoc.is_rejected, "the association was not rejected"
    rj = assoc.acceptor.primitive
    return rj.result, rj.result_source, rj.diagnostic


def _audit(node) -> list[dict]:  # noqa: ANN001
    with node.sessions() as session:
        return list_associations(session)


def _rejection_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "association rejected" in r.getMessage()]


def test_unknown_calling_ae_is_rejected_with_reason_3_and_one_log_line(scp_factory, caplog):
    caplog.set_level(logging.INFO, logger=SCP_LOGGER)
    node = scp_factory(calling_ae_allow=["GOODSCU"])
    assoc = _associate(node.settings.port, "EVILSCU")
    assert _rejection(assoc) == (
        REJECTED_PERMANENT,
        SOURCE_SERVICE_USER,
        CALLING_AE_NOT_RECOGNISED,
    )
    lines = wait_for(lambda: _rejection_lines(caplog))
    assert len(lines) == 1 and "calling AE title not recognised" in lines[0]
    assert "EVILSCU" in lines[0]
    assert echo(node.settings.port, calling_ae="GOODSCU") == SUCCESS


def test_wrong_called_ae_is_rejected_with_reason_7(scp_factory, caplog):
    caplog.set_level(logging.INFO, logger=SCP_LOGGER)
    node = scp_factory()
    assoc = _associate(node.settings.port, "TESTSCU", called="NOTUS")
    assert _rejection(assoc) == (REJECTED_PERMANENT, SOURCE_SERVICE_USER, CALLED_AE_NOT_RECOGNISED)
    assert len(wait_for(lambda: _rejection_lines(caplog))) == 1


def test_called_ae_is_not_checked_when_so_configured(scp_factory):
    node = scp_factory(require_called_ae=False)
    assert echo(node.settings.port, called_ae="ANYTHING") == SUCCESS


def test_calling_ae_tied_to_addresses_is_rejected_from_elsewhere(scp_factory):
    node = scp_factory(
        calling_ae_hosts={"FARPACS": ["10.9.9.9", "192.168.77.0/24"], "NEARPACS": ["127.0.0.0/8"]}
    )
    port = node.settings.port
    assert _rejection(_associate(port, "FARPACS")) == (
        REJECTED_PERMANENT,
        SOURCE_SERVICE_USER,
        CALLING_AE_NOT_RECOGNISED,
    )
    assert echo(port, calling_ae="NEARPACS") == SUCCESS
    # Listing titles with addresses makes them the allow-list: others are not recognised.
    assert _rejection(_associate(port, "STRANGER"))[2] == CALLING_AE_NOT_RECOGNISED


def test_dcmtk_echoscu_and_storescu_are_rejected_for_unknown_calling_ae(scp_factory, tmp_path):
    node = scp_factory(calling_ae_allow=["GOODSCU"])
    port = str(node.settings.port)
    done = run_dcmtk("echoscu", "-aet", "EVILSCU", "-aec", "ICHNODE", "127.0.0.1", port)
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stderr + done.stdout
    files = write_all(study(1, size=32), tmp_path / "send")
    done = run_dcmtk(
        "storescu", "-aet", "EVILSCU", "-aec", "ICHNODE", "127.0.0.1", port, *map(str, files)
    )
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stderr + done.stdout
    done = run_dcmtk("echoscu", "-aet", "GOODSCU", "-aec", "WRONG", "127.0.0.1", port)
    assert "Called AE Title Not Recognized" in done.stderr + done.stdout
    done = run_dcmtk(
        "storescu", "-aet", "GOODSCU", "-aec", "ICHNODE", "127.0.0.1", port, *map(str, files)
    )
    assert done.returncode == 0, done.stderr


def test_every_association_gets_an_audit_row_rejected_ones_too(scp_factory):
    node = scp_factory(calling_ae_allow=["GOODSCU"])
    port = node.settings.port
    slices = study(2, size=32)
    assert send(port, slices, calling_ae="GOODSCU") == [SUCCESS, SUCCESS]
    _associate(port, "EVILSCU")
    assoc = _associate(port, "GOODSCU")
    assoc.abort()
    rows = wait_for(
        lambda: (r := _audit(node)) and len(r) == 3 and all(x["ended_at"] for x in r) and r
    )
    by_outcome = {r["outcome"]: r for r in rows}
    assert set(by_outcome) == {
        "released",
        "rejected: calling AE title not recognised",
        "aborted",
    }
    released = by_outcome["released"]
    assert released["calling_ae"] == "GOODSCU" and released["called_ae"] == "ICHNODE"
    assert (released["n_received"], released["n_failed"]) == (2, 0)
    assert released["peer"].startswith("127.0.0.1:")
    assert by_outcome["rejected: calling AE title not recognised"]["calling_ae"] == "EVILSCU"
    table = render(rows)
    assert "EVILSCU" in table and "released" in table and table.count("\n") == 3


@pytest.mark.filterwarnings(r"ignore:Invalid value for VR UI:UserWarning:pydicom\.")  # on purpose
def test_audit_counts_failed_instances(scp_factory):
    node = scp_factory()
    ds = study(1, size=32)[0]
    ds.SOPInstanceUID = "1.2.3.x"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.x"
    send(node.settings.port, [ds])
    (row,) = wait_for(lambda: [r for r in _audit(node) if r["ended_at"]])
    assert (row["n_received"], row["n_failed"], row["outcome"]) == (0, 1, "released")


def test_audit_list_is_newest_first_and_limited(scp_factory):
    node = scp_factory()
    for _ in range(3):
        echo(node.settings.port)
    rows = wait_for(lambda: (r := _audit(node)) and len(r) == 3 and r)
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    with node.sessions() as session:
        assert len(list_associations(session, limit=2)) == 2
        assert list_associations(session, since=rows[0]["started_at"])[0]["id"] == rows[0]["id"]
    assert "no associations" in render([])


def test_audit_rows_past_their_retention_are_removed_by_the_node(node_factory, db_url):
    # Rows from 40 and 10 days ago, written as the SCP writes them; then a node keeping 30 days.
    engine, sessions = open_database(Settings(db_url=db_url))
    now = datetime.now(UTC)
    with sessions.begin() as session:
        for days in (40, 10):
            record = AssociationRecord("OLDSCU", "ICHNODE", "10.0.0.1", 104,
                                       now - timedelta(days=days), 0, 0, "released")  # fmt: skip
            close_association(session, record)
    engine.dispose()
    node = node_factory(audit_retention_days=30)
    echo(node.settings.port)
    rows = wait_for(lambda: (r := _audit(node)) and len(r) == 2 and r)  # 10 days old, and ours
    assert {r["calling_ae"] for r in rows} == {"OLDSCU", "TESTSCU"}
    assert min(r["started_at"] for r in rows) > now - timedelta(days=30)
    # Nothing is removed when nothing is that old; retention 0 (the default) keeps every row.
    assert AuditPruner(node.sessions, 30).run_once() == 0
    assert node_factory().settings.audit_retention_days == 0
