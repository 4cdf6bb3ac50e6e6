"""WADO-RS answers: which Accept headers allow the stored objects, and the multipart body
(read back by the STOW-RS intake's own multipart reader)."""

from __future__ import annotations

import pytest

from ichnode.node.stow import dicom_parts
from ichnode.web.wado import EXPLICIT_VR_LITTLE_ENDIAN as ELE
from ichnode.web.wado import Part, acceptable, multipart

JPEG = "1.2.840.10008.1.2.4.50"


@pytest.mark.parametrize(
    ("accept", "stored", "ok"),
    [
        (None, [ELE], True),
        ("*/*", [JPEG], True),
        ('multipart/related; type="application/dicom"', [ELE], True),
        ('multipart/related; type="application/dicom"', [ELE, JPEG], False),
        ("multipart/related; type=application/dicom; transfer-syntax=*", [ELE, JPEG], True),
        (f'multipart/related; type="application/dicom"; transfer-syntax={JPEG}', [ELE], False),
        (f'multipart/related; type="application/dicom"; transfer-syntax={JPEG}', [JPEG], True),
        ('multipart/related; type="image/jpeg"', [ELE], False),
        ("application/dicom+json", [ELE], False),
        ('application/json, Multipart/Related; Type="Application/DICOM"', [ELE], True),
    ],
)
def test_acceptable(accept, stored, ok):
    assert acceptable(accept, stored) is ok


def test_multipart_parts_read_back_as_sent():
    parts = [Part(b"DICM first\r\n--not-a-boundary", ELE), Part(b"\x00\x01second", JPEG)]
    body, media_type = multipart(parts)
    assert media_type.startswith('multipart/related; type="application/dicom"; boundary=')
    read = [(kind, bytes(data)) for kind, data in dicom_parts(media_type, body)]
    assert read == [("application/dicom", p.data) for p in parts]
    assert f"transfer-syntax={JPEG}".encode() in body
