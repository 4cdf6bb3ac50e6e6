"""What a received C-STORE must pass before it is stored: header read, checks, selection.

:func:`admit` reads, from a C-STORE's received bytes, only the elements the checks and the
rows need (:data:`HEADER_KEYWORDS`: pydicom skips every other value without building an
element for it; the plain values among them are converted from their bytes at once,
:func:`convert_plain`), and :func:`check` -- shared with STOW-RS
(:mod:`ichnode.node.stow`) -- checks its identifiers against the request and its pixel
description against the header, and describes the row to be (scored, or skipped with
the reason). A failure raises one :class:`Refusal` (status, reason); the SCP turns it into
the answer and the log line. The DIMSE C-STORE statuses are named here, once.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from typing import Any, BinaryIO, cast

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE

from ichnode.db import ingest
from ichnode.db.models import InstanceStatus
from ichnode.imaging import CT_SOP_CLASSES, MAX_PIXELS
from ichnode.node.selection import SelectionRules, geometry
from ichnode.node.statuses import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
)
from ichnode.store import uid_hash, valid_uid

#: The elements a received data set is read for: identifiers, the pixel description and
#: PixelData (its length is checked; its bytes are sliced from the buffer, not decoded), the
#: selection rules' inputs, slice geometry (top level or Enhanced CT's functional groups) and
#: the study/series/instance row fields (:meth:`ingest.Received.from_dataset`). The Specific
#: Character Set is always read (pydicom adds it).
HEADER_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "BodyPartExamined",
    "ProtocolName",
    "ImageType",
    "PatientID",
    "PatientName",
    "PatientSex",
    "PatientAge",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "Rows",
    "Columns",
    "BitsAllocated",
    "SamplesPerPixel",
    "NumberOfFrames",
    "PixelData",
)
HEADER_TAGS: list[BaseTag | int] = sorted(
    Tag(cast(int, tag_for_keyword(k))) for k in HEADER_KEYWORDS
)

#: BitsAllocated values a CT image can have (PS3.3 C.8.2.1.1.4 allows 16 only; we decode these).
BITS_ALLOCATED = (8, 16, 32)


class Refusal(Exception):  # noqa: N818 - a refusal is an answer, not an error
    """A C-STORE answered with ``status`` (not Success); ``reason`` goes into the log line.

    ``reason`` names no PHI: UIDs appear only as :func:`ichnode.store.uid_hash` tags.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Admitted:
    """A received instance that passed every check: its data set and its row to be."""

    dataset: Dataset
    received: ingest.Received
    is_ct: bool

    @property
    def uids(self) -> tuple[str, str, str]:
        r = self.received
        return r.study_uid, r.series_uid, r.sop_uid


@dataclass(frozen=True)
class Request:
    """What the sender says about one instance: the C-STORE request's identifiers and the
    association's, or a STOW-RS part's File Meta Information and the HTTP client's."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    calling_ae: str | None
    calling_address: str | None


def admit(event: evt.Event, rules: SelectionRules, now: datetime) -> Admitted:
    """Check one C-STORE's data set as pynetdicom delivers it; raises :class:`Refusal` if it
    cannot be stored."""
    syntax = event.context.transfer_syntax
    message = cast(C_STORE, event.request)
    request = Request(
        sop_instance_uid=str(message.AffectedSOPInstanceUID),
        sop_class_uid=str(message.AffectedSOPClassUID),
        transfer_syntax=str(syntax),
        calling_ae=event.assoc.requestor.ae_title,
        calling_address=event.assoc.requestor.address,
    )
    if syntax == DeflatedExplicitVRLittleEndian:
        # A deflated data set is inflated (and decoded) by pynetdicom.
        return check(_decoded(lambda: event.dataset), request, rules, now)
    stream = cast(BinaryIO, message.DataSet)
    return check(_decoded(lambda: read_header(stream, syntax)), request, rules, now)


def admit_encoded(
    dataset: bytes, request: Request, rules: SelectionRules, now: datetime
) -> Admitted:
    """Check one C-STORE's data set from its bytes as received (``request.transfer_syntax``,
    not deflated); raises :class:`Refusal` if it cannot be stored."""
    syntax = UID(request.transfer_syntax)
    ds = _decoded(lambda: read_header(BytesIO(dataset), syntax))
    return check(ds, request, rules, now)


def _decoded(read: Callable[[], Dataset]) -> Dataset:
    """``read()``; any decode failure is the refusal "cannot understand"."""
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - any decode failure is "cannot understand"
        raise Refusal(
            CANNOT_UNDERSTAND, f"dataset cannot be decoded ({type(exc).__name__})"
        ) from None


def read_header(received: BinaryIO, transfer_syntax: UID) -> Dataset:
    """The :data:`HEADER_KEYWORDS` of a data set encoded in ``transfer_syntax`` (not deflated),
    read from its bytes as received; every other value is skipped unread. The plain values
    among them are converted at once (:func:`convert_plain`)."""
    received.seek(0)
    ds = read_dataset(
        received,
        transfer_syntax.is_implicit_VR,
        transfer_syntax.is_little_endian,
        specific_tags=HEADER_TAGS,
    )
    convert_plain(ds)
    return ds


#: Text VRs whose value is the decoded string, stripped of trailing spaces and NULs as a whole
#: and then split at backslashes (pydicom's ``convert_UI``, ``convert_string``, ``convert_PN``;
#: DA and TM only while pydicom's ``datetime_conversion`` is off)...
_WHOLE_STRIPPED = frozenset({"UI", "AE", "AS", "CS", "DA", "TM", "PN"})
#: ... and those split first, each value stripped (``convert_text``).
_EACH_STRIPPED = frozenset({"SH", "LO"})
_INTEGER = re.compile(rb" *[+-]?[0-9]+ *")
_DECIMAL = re.compile(rb" *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *")


def convert_plain(ds: Dataset) -> None:
    """Convert, in place, the still-raw elements of ``ds`` whose value is plain: ASCII text
    of the VRs above, an IS or DS made of digits, one US. The values are those pydicom gives
    (``str``/``int``/``float``, a ``list`` of them when multi-valued, not its value classes),
    without pydicom's per-element machinery -- hooks, validation, value classes -- which cost
    three quarters of the header check (``benchmarks/header_read.py``). Anything else
    (empty, non-ASCII, escape sequences, sequences, malformed numbers) is left to pydicom's
    own conversion when it is read, so a malformed element still raises there.
    """
    whole = _WHOLE_STRIPPED
    if pydicom_config.datetime_conversion:
        whole = whole - {"DA", "TM"}
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement) or not raw.value:
            continue
        vr = raw.VR or _dictionary_vr(tag)
        value = _plain_value(vr, raw.value, raw.is_little_endian, whole)
        if value is not None:
            ds[tag] = DataElement(tag, vr, value, already_converted=True)


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _plain_value(vr: str | None, value: bytes, little_endian: bool, whole: frozenset[str]) -> Any:
    """``value`` as pydicom converts it, if it is plain (see :func:`convert_plain`); else None."""
    if vr in whole or vr in _EACH_STRIPPED:
        if not value.isascii() or b"\x1b" in value:
            return None  # another character set may apply: pydicom decodes it
        text = value.decode("ascii")
        items = (
            text.rstrip("\0 ").split("\\")
            if vr in whole
            else [v.rstrip("\0 ") for v in text.split("\\")]
        )
        return items[0] if len(items) == 1 else items
    if vr == "US" and len(value) == 2:
        return struct.unpack("<H" if little_endian else ">H", value)[0]
    if vr in ("IS", "DS"):
        pattern, kind = (_INTEGER, int) if vr == "IS" else (_DECIMAL, float)
        parts = value.rstrip(b"\0").split(b"\\")
        if not all(pattern.fullmatch(p) for p in parts):
            return None
        numbers = [kind(p) for p in parts]
        return numbers[0] if len(numbers) == 1 else numbers
    return None


def check(ds: Dataset, request: Request, rules: SelectionRules, now: datetime) -> Admitted:
    """Check a received data set against its request (C-STORE or STOW-RS alike); raises
    :class:`Refusal` if it cannot be stored."""
    try:
        ids = (
            str(ds.get("StudyInstanceUID", "")),
            str(ds.get("SeriesInstanceUID", "")),
            str(ds.get("SOPInstanceUID", "")),
        )
        sop_class = str(ds.get("SOPClassUID", ""))
    except Exception as exc:  # noqa: BLE001 - any decode failure is "cannot understand"
        raise Refusal(
            CANNOT_UNDERSTAND, f"dataset cannot be decoded ({type(exc).__name__})"
        ) from None
    sop_uid = ids[2]
    names = ("study", "series", "SOP instance", "SOP class")
    bad = [n for n, u in zip(names, (*ids, sop_class), strict=True) if not valid_uid(u)]
    if bad:
        raise Refusal(DATASET_DOES_NOT_MATCH, f"missing or invalid {' and '.join(bad)} UID")
    if sop_uid != request.sop_instance_uid:
        raise Refusal(
            DATASET_DOES_NOT_MATCH,
            f"SOP Instance UID {uid_hash(sop_uid)} differs from the request's",
        )
    if sop_class != request.sop_class_uid:
        raise Refusal(
            DATASET_DOES_NOT_MATCH,
            f"SOP Class UID differs from the request's ({uid_hash(sop_uid)})",
        )
    is_ct = sop_class in CT_SOP_CLASSES
    try:
        # pydicom decodes an element when it is first read: a malformed one (an unknown VR,
        # a bad length) raises here, in the header checks or the metadata read.
        problem = pixel_problem(ds, request.transfer_syntax) if is_ct else None
        if not problem:
            received = describe(request, ds, rules, sop_class, now)
    except Exception as exc:  # noqa: BLE001 - any decode failure is "cannot understand"
        raise Refusal(
            CANNOT_UNDERSTAND,
            f"instance {uid_hash(sop_uid)} cannot be decoded ({type(exc).__name__})",
        ) from None
    if problem:
        raise Refusal(DATASET_DOES_NOT_MATCH, f"CT instance {uid_hash(sop_uid)}: {problem}")
    return Admitted(ds, received, is_ct)


def describe(
    request: Request, ds: Dataset, rules: SelectionRules, sop_class: str, now: datetime
) -> ingest.Received:
    """The instance's row to be: header fields, z, and SKIPPED with a reason if so."""
    geo = geometry(ds)
    received = ingest.Received.from_dataset(
        ds,
        calling_ae=request.calling_ae,
        calling_address=request.calling_address,
        transfer_syntax=request.transfer_syntax,
        z=geo.z,
        received_at=now,
    )
    if sop_class not in CT_SOP_CLASSES:
        received.status = InstanceStatus.SKIPPED
        received.reason = f"not a CT image ({_sop_name(sop_class)})"
    else:
        reason = rules.skip_reason(ds, geo)
        if reason:
            received.status, received.reason = InstanceStatus.SKIPPED, reason
    return received


def pixel_problem(ds: Dataset, transfer_syntax: str) -> str | None:
    """Why a CT dataset's pixel data cannot be right, checked from the header (no decoding)."""
    pixels = ds.get("PixelData")  # None when absent or present with no value
    if not pixels:
        return "no pixel data"
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return "missing or malformed Rows/Columns/BitsAllocated"
    if rows <= 0 or cols <= 0 or rows * cols > MAX_PIXELS:
        return f"implausible image size {rows}x{cols}"
    if bits not in BITS_ALLOCATED or samples not in (1, 3) or frames < 1:
        return "unsupported BitsAllocated, SamplesPerPixel or NumberOfFrames"
    if UID(transfer_syntax).is_compressed:
        return None  # the length of a compressed stream says nothing; the worker decodes it
    expected = rows * cols * samples * frames * bits // 8
    actual = len(pixels)
    if actual < expected:
        return f"pixel data has {actual} bytes, Rows x Columns needs {expected}"
    return None


def _sop_name(uid: str) -> str:
    name = UID(uid).name
    return name if name != uid else f"SOP class {uid}"
