"""``ichnode.node.stow.dicom_parts``: a STOW-RS body split into its parts (RFC 2046) without
copying it, whatever the preamble, padding, boundary length and transfer encoding."""

from __future__ import annotations

import base64
import os

import pytest

from ichnode.node.stow import StowRequestError, dicom_parts

BOUNDARY = "b" * 73  # Orthanc's are this long
TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
DELIMITER = b"--" + BOUNDARY.encode()


def _part(payload: bytes, headers: bytes = b"Content-Type: application/dicom\r\n") -> bytes:
    return DELIMITER + b"\r\n" + headers + b"\r\n" + payload + b"\r\n"


def test_parts_are_views_of_the_body_not_copies():
    first, second = os.urandom(4096), b"x\r\n" + DELIMITER[:-1] + b"\r\n--" + b"tail"
    body = (
        b"a preamble, ignored\r\n"
        + _part(first)
        + DELIMITER + b"  \t\r\n"  # transport padding after the delimiter
        + b"content-type: Application/DICOM\r\n\r\n" + second + b"\r\n"
        + DELIMITER + b"--\r\nan epilogue, ignored\r\n"
    )  # fmt: skip
    parts = list(dicom_parts(TYPE, body))
    assert [(t, bytes(p)) for t, p in parts] == [
        ("application/dicom", first),
        ("application/dicom", second),  # a near-boundary inside a part is content
    ]
    assert all(isinstance(p, memoryview) and p.obj is body for _, p in parts)


def test_a_part_without_headers_is_text_and_a_base64_part_is_decoded():
    payload = os.urandom(300)
    encoded = base64.encodebytes(payload)  # lines of 76 characters
    headers = b"Content-Type: application/dicom\r\nContent-Transfer-Encoding: base64\r\n"
    body = (
        _part(b"plain", headers=b"")
        + _part(encoded, headers)
        + DELIMITER + b"--\r\n"
    )  # fmt: skip
    parts = list(dicom_parts(TYPE, body))
    assert [t for t, _ in parts] == ["text/plain", "application/dicom"]
    assert bytes(parts[0][1]) == b"plain" and bytes(parts[1][1]) == payload


@pytest.mark.parametrize(
    "body",
    [
        b"no delimiter at all",
        _part(b"never closed"),  # the body ends inside a part
        DELIMITER + b"\r\nContent-Type: application/dicom",  # headers never end
    ],
)
def test_a_body_whose_parts_cannot_be_found_answers_400(body):
    with pytest.raises(StowRequestError) as caught:
        list(dicom_parts(TYPE, body))
    assert caught.value.status == 400
