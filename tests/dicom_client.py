"""A pynetdicom storage SCU for tests: real associations over loopback."""

from __future__ import annotations

import time
from collections.abc import Sequence
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification

from ichnode.node.scu import hold_responses_for_the_sender


def send(
    port: int,
    datasets: Sequence[Dataset],
    *,
    called_ae: str = "ICHNODE",
    calling_ae: str = "TESTSCU",
    host: str = "127.0.0.1",
) -> list[int]:
    """C-STORE every dataset on one association; returns the status of each (-1: no answer).

    Nothing to send opens no association and returns ``[]``.
    """
    if not datasets:
        return []
    ae = AE(ae_title=calling_ae)
    pairs = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    for sop_class, ts in pairs:
        ae.add_requested_context(sop_class, ts)
    assoc = hold_responses_for_the_sender(ae.associate(host, port, ae_title=called_ae))
    assert assoc.is_established, "association was not established"
    statuses = []
    try:
        for ds in datasets:
            answer = assoc.send_c_store(ds)
            statuses.append(int(answer.Status) if "Status" in answer else -1)
    finally:
        assoc.release()
    return statuses


def echo(port: int, *, called_ae: str = "ICHNODE", calling_ae: str = "TESTSCU") -> int:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    assoc = hold_responses_for_the_sender(ae.associate("127.0.0.1", port, ae_title=called_ae))
    assert assoc.is_established
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def send_raw(
    port: int, payload: bytes, sop_class: str, sop_uid: str, ts: str = ExplicitVRLittleEndian
) -> int:
    """One C-STORE whose data set is ``payload`` verbatim; returns the status."""
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="ICHNODE")
    assert assoc.is_established and assoc.accepted_contexts
    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_uid
    req.Priority = 2
    req.DataSet = BytesIO(payload)
    # Pause the association's reactor as pynetdicom's own send_c_* do, so that it does not take
    # the response first.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, assoc.accepted_contexts[0].context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
        assoc.release()
    assert rsp is not None, "no C-STORE response"
    return int(rsp.Status)
