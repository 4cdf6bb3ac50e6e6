"""The fast path's C-STORE-RSP, decoded by pynetdicom's own DIMSE decoder."""

from __future__ import annotations

import struct
from io import BytesIO

from pynetdicom.dsutils import decode

from ichnode.node.fast_store import C_STORE_RQ, StoreRequest, encode_response


def test_the_response_is_a_c_store_rsp_for_the_request():
    command = {
        0x0002: b"1.2.840.10008.5.1.4.1.1.2\x00",
        0x0100: struct.pack("<H", C_STORE_RQ),
        0x0110: struct.pack("<H", 7),
        0x0800: struct.pack("<H", 0x0000),
        0x1000: b"1.2.3.4\x00",
    }
    rsp = decode(BytesIO(encode_response(command, 0xA700)), True, True)
    assert rsp.CommandField == 0x8001 and rsp.MessageIDBeingRespondedTo == 7
    assert rsp.Status == 0xA700 and rsp.CommandDataSetType == 0x0101
    assert rsp.AffectedSOPInstanceUID == "1.2.3.4"
    assert rsp.AffectedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert rsp.CommandGroupLength == len(encode_response(command, 0)) - 12


def test_the_file_meta_is_pynetdicoms():
    request = StoreRequest("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1", b"")
    meta = request.file_meta()
    assert meta[:132] == b"\x00" * 128 + b"DICM"
    ds = decode(BytesIO(meta[132:]), False, True)
    assert ds.MediaStorageSOPInstanceUID == "1.2.3.4"
    assert ds.TransferSyntaxUID == "1.2.840.10008.1.2.1"
