"""The Part 10 header of a received instance: preamble, prefix and File Meta Information.

pynetdicom's ``Event.encoded_dataset()`` builds it per instance with ``create_file_meta`` and
``encode_file_meta`` (a pydicom dataset of seven elements, validated and encoded element by
element): about 0.27 ms an instance, a tenth of what ichnode spent on a C-STORE in all
(docs/performance.md). Of its bytes only the Media Storage SOP Instance UID (0002,0003) and
the group length (0002,0000) differ between instances of one SOP class and transfer syntax;
:func:`file_meta` has pynetdicom encode the rest once per pair and writes those two elements
itself, by the rules the File Meta Information is always encoded with (PS3.10 7.1: Explicit VR
Little Endian; a UI value padded to even length with a NUL, PS3.5 6.2). The bytes equal
pynetdicom's (``tests/node/test_file_meta.py``).
"""

from __future__ import annotations

import functools
import struct

from pydicom.uid import UID
from pynetdicom.dsutils import create_file_meta, encode_file_meta

#: The 128-byte preamble and the "DICM" prefix (PS3.10 7.1).
PREAMBLE = b"\x00" * 128 + b"DICM"
#: (0002,0000) File Meta Information Group Length, UL, a 4-byte value.
_GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"
#: (0002,0003) Media Storage SOP Instance UID, UI.
_INSTANCE_UID = b"\x02\x00\x03\x00UI"
#: The instance UID the shared bytes are encoded around (any valid UID would do).
_PLACEHOLDER = "1.2"


def _instance_uid_element(uid: str) -> bytes:
    value = uid.encode("ascii")
    value += b"\x00" * (len(value) % 2)
    return _INSTANCE_UID + struct.pack("<H", len(value)) + value


@functools.lru_cache(maxsize=64)
def _around_instance_uid(sop_class_uid: str, transfer_syntax: str) -> tuple[bytes, bytes]:
    """pynetdicom's File Meta Information for this SOP class and transfer syntax, without its
    group length, split around the instance UID element."""
    encoded = encode_file_meta(
        create_file_meta(
            sop_class_uid=UID(sop_class_uid),
            sop_instance_uid=UID(_PLACEHOLDER),
            transfer_syntax=UID(transfer_syntax),
        )
    )
    if not encoded.startswith(_GROUP_LENGTH):
        raise ValueError("pynetdicom's File Meta Information does not start with its length")
    body = encoded[len(_GROUP_LENGTH) + 4 :]
    head, found, tail = body.partition(_instance_uid_element(_PLACEHOLDER))
    if not found:
        raise ValueError("pynetdicom's File Meta Information has no instance UID element")
    return head, tail


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, prefix and File Meta Information of one instance, as pynetdicom's
    ``Event.encoded_dataset()`` writes them. The UIDs are valid ones (checked at intake)."""
    head, tail = _around_instance_uid(sop_class_uid, transfer_syntax)
    body = head + _instance_uid_element(sop_instance_uid) + tail
    return PREAMBLE + _GROUP_LENGTH + struct.pack("<I", len(body)) + body
