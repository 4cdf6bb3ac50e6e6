"""A pynetdicom storage SCU for tests: real associations over loopback."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import Verification


def send(
    port: int,
    datasets: Sequence[Dataset],
    *,
    called_ae: str = "ICHNODE",
    calling_ae: str = "TESTSCU",
    host: str = "127.0.0.1",
) -> list[int]:
    """C-STORE every dataset on one association; returns the status of each (-1: no answer)."""
    ae = AE(ae_title=calling_ae)
    pairs = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    for sop_class, ts in pairs:
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate(host, port, ae_title=called_ae)
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
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()
