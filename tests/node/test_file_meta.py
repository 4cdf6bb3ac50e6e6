"""The Part 10 header the fast path writes equals pynetdicom's ``encoded_dataset()`` header, and
a file written with it reads back with pydicom."""

from __future__ import annotations

from io import BytesIO

import pydicom
from hypothesis import given
from hypothesis import strategies as st
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from ichnode.node.file_meta import file_meta
from ichnode.store import valid_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
SR = "1.2.840.10008.5.1.4.1.1.88.33"
SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
]

#: Valid UIDs of every length from 1 to 64 characters: numbers without leading zeros, dotted.
components = st.one_of(st.just("0"), st.from_regex(r"[1-9][0-9]{0,20}", fullmatch=True))
uids = st.lists(components, min_size=1, max_size=16).map(".".join).filter(valid_uid)


def pynetdicoms(sop_class: str, sop_instance: str, syntax: str) -> bytes:
    meta = create_file_meta(
        sop_class_uid=UID(sop_class),
        sop_instance_uid=UID(sop_instance),
        transfer_syntax=UID(syntax),
    )
    return b"\x00" * 128 + b"DICM" + encode_file_meta(meta)


@given(
    sop_instance=uids,
    sop_class=st.sampled_from([CT, ENHANCED_CT, SR]),
    syntax=st.sampled_from(SYNTAXES),
)
def test_the_header_is_byte_for_byte_pynetdicoms(sop_instance, sop_class, syntax):
    assert file_meta(sop_class, sop_instance, syntax) == pynetdicoms(
        sop_class, sop_instance, syntax
    )


def test_odd_and_even_and_longest_uids():
    for uid in ("1.2", "1.23", "1.2.3", "2.25." + "9" * 59, "1." + "2" * 62):
        assert valid_uid(uid)
        expected = pynetdicoms(CT, uid, ExplicitVRLittleEndian)
        assert file_meta(CT, uid, ExplicitVRLittleEndian) == expected


def test_a_file_with_the_header_reads_back(tmp_path):
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = CT, "1.2.826.0.1.3680043.8.498.1", "P1"
    body = BytesIO()
    ds.save_as(body, implicit_vr=False, little_endian=True, enforce_file_format=False)
    path = tmp_path / "x.dcm"
    path.write_bytes(file_meta(CT, ds.SOPInstanceUID, ExplicitVRLittleEndian) + body.getvalue())
    back = pydicom.dcmread(path)
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.PatientID == "P1"
