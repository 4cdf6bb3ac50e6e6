"""Broken and hostile input through real associations: every malformed dataset gets a defined
status and a reason (log line or row), leaves no file (not even a temp file) and no row, does
not take the node down, and does not make it allocate what the header claims.

Data sets are encoded by hand and sent at the DIMSE level, so nothing the SCU would refuse to
encode is out of reach. Runs on SQLite (the backend plays no part in refusing input).
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path

import numpy as np
import pytest
from dicom_client import echo, send_raw
from helpers import HOSTILE_PYDICOM_WARNINGS, ct_dataset, study, wait_for
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRBigEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import select

from ichnode.db.models import Instance, InstanceStatus
from ichnode.node.scp import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH, SUCCESS
from ichnode.store import Store

pytestmark = [pytest.mark.filterwarnings(f) for f in HOSTILE_PYDICOM_WARNINGS]

#: The backend plays no part in refusing input: node tests run on SQLite only.
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
#: A 65535 x 65535 x 16-bit image would be 8 GiB; the node may not come anywhere near.
MAX_RSS_GROWTH_BYTES = 256 * 1024 * 1024


def encode(ds: Dataset, little_endian: bool = True) -> bytes:
    """Explicit VR encoding of ``ds`` as it is (no validation)."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little_endian, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _ct(size: int = 32, **attrs: object) -> Dataset:
    ds = ct_dataset(np.full((size, size), 1000, np.uint16), **attrs)
    return ds


def _rows_as_text(ds: Dataset) -> bytes:
    """Rows written with VR LO and a non-numeric value."""
    raw = encode(ds)
    good = b"\x28\x00\x10\x00US\x02\x00" + int(ds.Rows).to_bytes(2, "little")
    assert good in raw
    return raw.replace(good, b"\x28\x00\x10\x00LO\x04\x00abc ")


def _unknown_vr(ds: Dataset, tag: bytes, vr: bytes) -> bytes:
    """``ds`` encoded, with the VR of element ``tag`` (4 bytes, little endian) made unknown.

    pydicom reads the data set and fails only when that element is first used.
    """
    raw = encode(ds)
    at = raw.index(tag, 132)  # after the preamble and file meta
    assert raw[at + 4 : at + 6] == vr
    return raw[: at + 4] + b"\x55\x90" + raw[at + 6 :]


def _length_overflow(ds: Dataset) -> bytes:
    """A SeriesDescription element claiming far more bytes than follow."""
    return encode(ds)[:200] + b"\x08\x00\x3e\x10LO\xff\xff" + b"x" * 16


def _case(name: str):  # noqa: ANN202
    """(payload, sop_class, sop_uid) for the named hostile case."""
    ds = _ct()
    uid = ds.SOPInstanceUID
    if name == "truncated pixel data":
        ds.PixelData = ds.PixelData[:-500]
    elif name == "rows x columns larger than the pixel data":
        ds.Rows, ds.Columns = 512, 512
    elif name == "65535 x 65535 header with tiny pixel data":
        ds.Rows, ds.Columns = 65535, 65535
    elif name == "frames x rows x columns larger than the pixel data":
        ds.NumberOfFrames = 100000
    elif name == "negative NumberOfFrames":
        ds.NumberOfFrames = -1
    elif name == "BitsAllocated 0":
        ds.BitsAllocated = 0
    elif name == "Rows with a wrong VR":
        return _rows_as_text(ds), CTImageStorage, uid
    elif name == "element length past the end":
        return _length_overflow(ds), CTImageStorage, uid
    elif name == "garbage bytes":
        return bytes(range(256)) * 8, CTImageStorage, uid
    elif name == "empty data set":
        return b"\x00", CTImageStorage, uid
    elif name == "unknown VR":
        return b"\x08\x00\x18\x00ZZ\x04\x001.2\x00", CTImageStorage, uid
    elif name == "Columns with an unknown VR":  # found by the property test
        return _unknown_vr(ds, b"\x28\x00\x11\x00", b"US"), CTImageStorage, uid
    elif name == "ImagePositionPatient with an unknown VR":
        return _unknown_vr(ds, b"\x20\x00\x32\x00", b"DS"), CTImageStorage, uid
    elif name == "invalid study UID":
        ds.StudyInstanceUID = "1.2.abc"
    elif name == "over-long series UID":
        ds.SeriesInstanceUID = "1." + "2" * 70
    elif name == "study UID with ../":
        ds.StudyInstanceUID = "../../../../tmp/ichnode-escape"
    elif name == "series UID with /":
        ds.SeriesInstanceUID = "/tmp/ichnode-escape"
    elif name == "series UID with backslash":
        ds.SeriesInstanceUID = "1.2\\..\\..\\3"
    elif name == "SOP instance UID with ../ in request and data set":
        uid = ds.SOPInstanceUID = "../../ichnode-escape"
    elif name == "SOP instance UID differs from the request":
        uid = generate_uid()
    elif name == "SOP class differs from the request":
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    else:
        raise AssertionError(name)
    return encode(ds), CTImageStorage, uid


REFUSED = {
    "truncated pixel data": DATASET_DOES_NOT_MATCH,
    "rows x columns larger than the pixel data": DATASET_DOES_NOT_MATCH,
    "65535 x 65535 header with tiny pixel data": DATASET_DOES_NOT_MATCH,
    "frames x rows x columns larger than the pixel data": DATASET_DOES_NOT_MATCH,
    "negative NumberOfFrames": DATASET_DOES_NOT_MATCH,
    "BitsAllocated 0": DATASET_DOES_NOT_MATCH,
    "Rows with a wrong VR": DATASET_DOES_NOT_MATCH,
    "element length past the end": DATASET_DOES_NOT_MATCH,  # read leniently: no UIDs left
    "garbage bytes": DATASET_DOES_NOT_MATCH,
    "unknown VR": CANNOT_UNDERSTAND,
    "Columns with an unknown VR": CANNOT_UNDERSTAND,
    "ImagePositionPatient with an unknown VR": CANNOT_UNDERSTAND,
    "empty data set": DATASET_DOES_NOT_MATCH,
    "invalid study UID": DATASET_DOES_NOT_MATCH,
    "over-long series UID": DATASET_DOES_NOT_MATCH,
    "study UID with ../": DATASET_DOES_NOT_MATCH,
    "series UID with /": DATASET_DOES_NOT_MATCH,
    "series UID with backslash": DATASET_DOES_NOT_MATCH,
    "SOP instance UID with ../ in request and data set": DATASET_DOES_NOT_MATCH,
    "SOP instance UID differs from the request": DATASET_DOES_NOT_MATCH,
    "SOP class differs from the request": DATASET_DOES_NOT_MATCH,
}


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _rows(node) -> list[Instance]:  # noqa: ANN001
    with node.sessions() as session:
        return list(session.scalars(select(Instance)))


@sqlite_only
def test_every_hostile_data_set_is_refused_with_its_status_and_leaves_nothing(
    scp_factory, tmp_path, caplog
):
    caplog.set_level(logging.WARNING, logger="ichnode.node.scp")
    node = scp_factory()
    outside_before = {p for p in _files(tmp_path) if not p.is_relative_to(node.store.root)}
    answers = {}
    for name in REFUSED:
        caplog.clear()
        answers[name] = send_raw(node.settings.port, *_case(name))
        assert any("C-STORE refused" in r.getMessage() for r in caplog.records), name
    assert answers == REFUSED
    assert _rows(node) == []
    assert _files(node.store.root) == []  # no file, no temp file
    outside_after = {
        p
        for p in _files(tmp_path)
        if not p.is_relative_to(node.store.root) and not p.name.startswith("ichnode.db")
    }
    assert outside_after <= outside_before  # nothing landed outside the store either
    assert not Path("/tmp/ichnode-escape").exists()
    assert echo(node.settings.port) == SUCCESS


@sqlite_only
def test_huge_header_does_not_make_the_node_allocate_it(scp_factory):
    node = scp_factory()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(5):
        status = send_raw(node.settings.port, *_case("65535 x 65535 header with tiny pixel data"))
        assert status == DATASET_DOES_NOT_MATCH
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert growth < MAX_RSS_GROWTH_BYTES, f"peak RSS grew by {growth / 2**20:.0f} MiB"


@sqlite_only
def test_private_tags_are_accepted_and_stored_as_received(scp_factory):
    node = scp_factory()
    ds = _ct()
    block = ds.private_block(0x0011, "ICHNODE HOSTILE", create=True)
    block.add_new(0x01, "LO", "private value")
    block.add_new(0x02, "OB", b"\x00\xff" * 64)
    payload = encode(ds)
    assert send_raw(node.settings.port, payload, CTImageStorage, ds.SOPInstanceUID) == SUCCESS
    (row,) = _rows(node)
    assert node.store.path(row.path).read_bytes().endswith(payload)


@sqlite_only
def test_multi_frame_ct_is_stored_and_recorded_as_skipped(scp_factory):
    node = scp_factory()
    ds = _ct(NumberOfFrames=2)
    ds.PixelData = ds.PixelData * 2
    assert send_raw(node.settings.port, encode(ds), CTImageStorage, ds.SOPInstanceUID) == SUCCESS
    (row,) = _rows(node)
    assert row.status == InstanceStatus.SKIPPED and "multi-frame" in row.reason
    assert node.store.path(row.path).is_file()


@sqlite_only
def test_non_image_object_is_accepted_and_recorded_as_skipped(scp_factory):
    node = scp_factory()
    ds = Dataset()
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (generate_uid() for _ in "abc")
    ds.Modality = "SR"
    assert send_raw(node.settings.port, encode(ds), BASIC_TEXT_SR, ds.SOPInstanceUID) == SUCCESS
    (row,) = _rows(node)
    assert row.status == InstanceStatus.SKIPPED and row.path is None
    assert _files(node.store.root) == []


@sqlite_only
@pytest.mark.parametrize(
    "transfer_syntax", [ExplicitVRBigEndian, HTJ2K_LOSSLESS], ids=["big-endian", "htj2k"]
)
def test_unsupported_transfer_syntax_context_is_rejected(scp_factory, transfer_syntax):
    node = scp_factory()
    for sop_class in (CTImageStorage, BASIC_TEXT_SR):
        ae = AE(ae_title="HOSTILE")
        ae.add_requested_context(sop_class, transfer_syntax)
        assoc = ae.associate("127.0.0.1", node.settings.port, ae_title="ICHNODE")
        assert not assoc.is_established or not assoc.accepted_contexts
        if assoc.is_established:
            assoc.release()
    assert echo(node.settings.port) == SUCCESS


def test_store_paths_refuse_traversal_and_non_uid_names(tmp_path):
    store = Store(tmp_path / "store")
    for relative in ("../x.dcm", "a/../../x.dcm", "/etc/passwd", "1.2/../../../x"):
        with pytest.raises(ValueError):
            store.path(relative)
    for uid in ("../1", "1.2/3", "1.2\\3", "1.2.abc", "1." + "2" * 70, "", "01.2"):
        with pytest.raises(ValueError):
            store.relative_path(uid, "1.2", "1.3")
        with pytest.raises(ValueError):
            store.relative_path("1.2", "1.3", uid)
    assert _files(tmp_path) == []


@sqlite_only
def test_node_still_stores_valid_data_after_the_corpus(scp_factory):
    node = scp_factory()
    for name in REFUSED:
        send_raw(node.settings.port, *_case(name))
    good = study(1, size=32)[0]
    assert send_raw(node.settings.port, encode(good), CTImageStorage, good.SOPInstanceUID) == 0
    (row,) = wait_for(lambda: _rows(node))
    assert node.store.path(row.path).is_file()
