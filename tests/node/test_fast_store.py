"""The C-STORE fast path (node.fast_store), through real pynetdicom associations over loopback:
it answers C-STOREs however the sender cuts them into PDUs, writes the same file as
pynetdicom's path, and leaves every other message (C-ECHO, a deflated data set, a malformed
message) to pynetdicom.

The backend does not matter here: the tests run on SQLite only.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest
from dicom_client import send
from helpers import study, wait_for
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from ichnode.db.models import Instance
from ichnode.node import fast_store
from ichnode.node.scp import StorageSCP
from ichnode.node.scu import hold_responses_for_the_sender
from ichnode.node.statuses import SUCCESS

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def fast_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """SOP Instance UIDs the fast path handed to the SCP, in order."""
    calls: list[str] = []
    original = StorageSCP.handle_fast

    def counting(self, assoc, request):  # noqa: ANN001, ANN202
        calls.append(request.sop_instance_uid)
        return original(self, assoc, request)

    monkeypatch.setattr(StorageSCP, "handle_fast", counting)
    return calls


def _stored(node) -> dict[str, Path]:  # noqa: ANN001
    with node.sessions() as session:
        rows = session.execute(select(Instance.sop_instance_uid, Instance.path)).all()
    return {uid: node.store.path(path) for uid, path in rows}


@pytest.mark.parametrize("max_pdu", [262144, 4096, 0], ids=["256k", "4k", "unlimited"])
def test_the_fast_path_answers_every_c_store_however_it_is_cut_into_pdus(
    scp_factory, fast_calls, max_pdu
):
    node = scp_factory(max_pdu=max_pdu)
    datasets = study(3, size=96)
    assert send(node.settings.port, datasets) == [SUCCESS] * 3
    assert fast_calls == [str(ds.SOPInstanceUID) for ds in datasets]
    stored = _stored(node)
    for ds in datasets:
        kept = dcmread(stored[str(ds.SOPInstanceUID)])
        assert kept.PixelData == ds.PixelData
        assert kept.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert kept.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_a_command_split_over_pdus_is_assembled(scp_factory, fast_calls):
    # A 128-byte maximum PDU splits the C-STORE-RQ command set (about 160 bytes) in two.
    node = scp_factory(max_pdu=128)
    datasets = study(2, size=16)
    assert send(node.settings.port, datasets) == [SUCCESS, SUCCESS]
    assert len(fast_calls) == 2 and len(_stored(node)) == 2


def test_the_fast_path_writes_the_file_pynetdicoms_path_writes(scp_factory, fast_calls, tmp_path):
    datasets = study(2, size=32)
    fast = scp_factory()
    assert send(fast.settings.port, datasets) == [SUCCESS, SUCCESS]
    queues = scp_factory(
        fast_store=False, store=tmp_path / "other", db_url=f"sqlite:///{tmp_path / 'other.db'}"
    )
    assert send(queues.settings.port, datasets) == [SUCCESS, SUCCESS]
    assert len(fast_calls) == 2  # the second receiver never took the fast path
    a, b = _stored(fast), _stored(queues)
    for ds in datasets:
        uid = str(ds.SOPInstanceUID)
        assert a[uid].read_bytes() == b[uid].read_bytes()


def test_c_echo_and_c_store_alternate_on_one_association(scp_factory, fast_calls):
    node = scp_factory()
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = hold_responses_for_the_sender(
        ae.associate("127.0.0.1", node.settings.port, ae_title="ICHNODE")
    )
    assert assoc.is_established
    datasets = study(2, size=32)
    try:
        assert assoc.send_c_echo().Status == SUCCESS  # pynetdicom's path
        assert assoc.send_c_store(datasets[0]).Status == SUCCESS  # the fast path
        assert assoc.send_c_echo().Status == SUCCESS
        assert assoc.send_c_store(datasets[1]).Status == SUCCESS
    finally:
        assoc.release()
    assert fast_calls == [str(ds.SOPInstanceUID) for ds in datasets]


def test_a_deflated_data_set_is_left_to_pynetdicom(scp_factory, fast_calls):
    node = scp_factory()
    ds = study(1, size=32)[0]
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    assert send(node.settings.port, [ds]) == [SUCCESS]
    assert fast_calls == []  # pynetdicom inflates it; ichnode's handler stores it
    kept = dcmread(_stored(node)[str(ds.SOPInstanceUID)])
    assert kept.PixelData == ds.PixelData


def test_fast_store_off_leaves_every_message_to_pynetdicom(scp_factory, fast_calls):
    node = scp_factory(fast_store=False)
    assert send(node.settings.port, study(2, size=32)) == [SUCCESS, SUCCESS]
    assert fast_calls == [] and len(_stored(node)) == 2


def test_with_pynetdicom_debugging_every_message_goes_through_pynetdicom(
    scp_factory, fast_calls, caplog
):
    """``ichnode --debug`` sets pynetdicom's logger to DEBUG: the C-STOREs are then left to
    pynetdicom, whose log shows each of them (the fast path logs none)."""
    node = scp_factory()
    caplog.set_level(logging.DEBUG, logger="pynetdicom")
    assert send(node.settings.port, study(2, size=32)) == [SUCCESS, SUCCESS]
    assert fast_calls == [] and len(_stored(node)) == 2
    received = [r for r in caplog.records if "Received Store Request" in r.getMessage()]
    assert len(received) == 2


def test_a_data_set_fragment_without_its_command_goes_to_pynetdicom(scp_factory, fast_calls):
    """A message the fast path does not recognise is pynetdicom's to answer (it aborts the
    association); nothing is stored and the node carries on."""
    node = scp_factory()
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = hold_responses_for_the_sender(
        ae.associate("127.0.0.1", node.settings.port, ae_title="ICHNODE")
    )
    assert assoc.is_established
    context_id = assoc.accepted_contexts[0].context_id
    fragment = b"\x08\x00\x18\x00UI\x04\x001.2\x00"  # a data set, last fragment, no command
    pdv = struct.pack(">LBB", len(fragment) + 2, context_id, 0x02) + fragment
    assoc.dul.socket.send(struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv)
    wait_for(lambda: not assoc.is_alive(), timeout=30)
    assert fast_calls == [] and _stored(node) == {}
    assert send(node.settings.port, study(1, size=32)) == [SUCCESS]
    assert len(fast_calls) == 1


def test_a_pynetdicom_without_the_internals_gets_pynetdicoms_path(
    scp_factory, fast_calls, monkeypatch, caplog
):
    """A pynetdicom release that renamed an internal the fast path uses: no fast path, one
    warning, every C-STORE still answered."""
    monkeypatch.setattr(fast_store, "ASSOCIATION_INTERNALS", ("_renamed_in_a_later_release",))
    node = scp_factory()
    assert send(node.settings.port, study(2, size=32)) == [SUCCESS, SUCCESS]
    assert fast_calls == [] and len(_stored(node)) == 2
    assert "fast path off" in caplog.text and "_renamed_in_a_later_release" in caplog.text
