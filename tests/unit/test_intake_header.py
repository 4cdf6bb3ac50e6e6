"""The C-STORE header read (``intake.read_header``): only the elements the checks and the
rows need are read from the received bytes, in both little-endian syntaxes, and what is read
is enough for :func:`intake.check` to admit the slice with its row fields."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from io import BytesIO

import numpy as np
import pydicom
import pytest
from helpers import ct_dataset, sample_file
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ichnode.config import SelectionSettings
from ichnode.db.models import InstanceStatus
from ichnode.node import intake
from ichnode.node.selection import SelectionRules


def _encoded(syntax: UID) -> tuple[DicomBytesIO, object]:
    ds = ct_dataset(np.full((16, 16), 1000, np.uint16), z=12.5)
    ds.ReferringPhysicianName = "Not^Needed"
    ds.InstanceNumber = 7
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, syntax.is_implicit_VR
    write_dataset(fp, ds)
    fp.seek(0, 2)  # as pynetdicom leaves it: at the end of what was received
    return fp, ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_header_read_keeps_only_the_elements_checks_and_rows_need(syntax):
    fp, sent = _encoded(syntax)
    ds = intake.read_header(fp, syntax)
    assert "ReferringPhysicianName" not in ds
    assert ds.SOPInstanceUID == sent.SOPInstanceUID
    assert ds.PatientName == sent.PatientName
    assert ds.PixelData == sent.PixelData
    assert {elem.keyword for elem in ds} <= {*intake.HEADER_KEYWORDS, "SpecificCharacterSet"}


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_header_read_slice_is_admitted_with_its_row_fields(syntax):
    fp, sent = _encoded(syntax)
    request = intake.Request(
        sop_instance_uid=sent.SOPInstanceUID,
        sop_class_uid=sent.SOPClassUID,
        transfer_syntax=str(syntax),
        calling_ae="SCU",
        calling_address="127.0.0.1",
    )
    rules = SelectionRules(SelectionSettings())
    admitted = intake.check(intake.read_header(fp, syntax), request, rules, datetime.now(UTC))
    row = admitted.received
    assert admitted.is_ct and row.status == InstanceStatus.QUEUED
    assert (row.study_uid, row.patient_id, row.instance_number) == (
        sent.StudyInstanceUID,
        sent.PatientID,
        7,
    )
    assert row.z == pytest.approx(12.5)


def test_pixel_data_shorter_than_the_header_says_is_refused_after_a_header_read():
    ds = ct_dataset(np.full((16, 16), 1000, np.uint16))
    ds.PixelData = ds.PixelData[:100]
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    header = intake.read_header(fp, ExplicitVRLittleEndian)
    assert "pixel data has 100 bytes" in (
        intake.pixel_problem(header, ExplicitVRLittleEndian) or ""
    )


def _values(ds) -> dict[str, object]:
    """The header elements' values, compared as text (UID, PersonName and friends are str
    subclasses; IS and DS compare equal to int and float)."""

    def plain(value: object) -> object:
        if isinstance(value, (list, MultiValue)):
            return [plain(v) for v in value]
        if isinstance(value, (int, float)):
            return value
        return str(value)

    return {
        kw: plain(ds.get(kw))
        for kw in intake.HEADER_KEYWORDS
        if kw in ds and ds[kw].VR != "SQ" and kw != "PixelData"
    }


def _header_of_file(path: str):
    """(read_header's data set, pydicom's full read) of a Part 10 file."""
    full = pydicom.dcmread(path)
    meta = full.file_meta
    # Preamble and prefix (132 bytes), the group length element (12), the rest of the group.
    start = 132 + 12 + meta.FileMetaInformationGroupLength
    with open(path, "rb") as fp:
        data = BytesIO(fp.read()[start:])  # as a C-STORE's data set arrives
    return intake.read_header(data, meta.TransferSyntaxUID), full


def _received_as_is(path: str) -> bool:
    """A Part 10 file whose data set a C-STORE would carry as it is (not deflated)."""
    try:
        meta = pydicom.dcmread(path).file_meta
        return "FileMetaInformationGroupLength" in meta and not meta.TransferSyntaxUID.is_deflated
    except Exception:  # noqa: BLE001 - a file pydicom cannot read whole: not a case here
        return False


@pytest.mark.filterwarnings("ignore")  # some of pydicom's test files are malformed on purpose
@pytest.mark.parametrize(
    "path",
    # Every file of pydicom's and pydicom-data's test sets (real CT among them, e.g.
    # 693_UNCR.dcm) and its character-set files, found on disk (get_testdata_files("*")
    # would try to download the ones not installed).
    [
        str(f)
        for root in (sample_file("CT_small.dcm").parents[1], sample_file("693_UNCR.dcm").parent)
        for f in sorted(root.rglob("*.dcm"))
        if _received_as_is(str(f))
    ],
    ids=lambda p: p.rsplit("/", 1)[-1],
)
def test_header_values_are_those_of_a_full_pydicom_read(path):
    header, full = _header_of_file(path)
    assert _values(header) == _values(full)


def test_plain_values_are_converted_by_the_header_read_and_match_pydicom():
    ds = ct_dataset(np.full((16, 16), 1000, np.uint16), z=-12.5)
    ds.SeriesDescription = "AXIAL \\HEAD  "  # two LO values, each padded
    ds.ProtocolName = "A\\B"
    ds.InstanceNumber = "+7"
    ds.ImagePositionPatient = [" -1.5E+1", "0.25 ", ".5"]
    ds.PatientName = "Ünal^Ayşe"  # not ASCII: left to pydicom's character sets
    ds.SpecificCharacterSet = "ISO_IR 192"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    header = intake.read_header(fp, ExplicitVRLittleEndian)
    # The plain ones were converted by read_header itself; the UTF-8 name was not.
    assert isinstance(header.get_item("StudyInstanceUID"), DataElement)
    assert isinstance(header.get_item("ImagePositionPatient"), DataElement)
    assert isinstance(header.get_item("PatientName"), RawDataElement)
    fp.seek(0)
    full = read_dataset(fp, False, True)
    assert _values(header) == _values(full)
    assert header.SeriesDescription == ["AXIAL", "HEAD"]
    assert header.ImagePositionPatient == [-15.0, 0.25, 0.5]
    assert str(header.PatientName) == "Ünal^Ayşe"


@pytest.mark.parametrize(
    ("keyword", "vr", "raw"),
    [("InstanceNumber", "IS", b"12a "), ("ImagePositionPatient", "DS", b"1\\x\\3 ")],
)
def test_a_malformed_number_is_left_to_pydicom(keyword, vr, raw):
    ds = ct_dataset(np.full((16, 16), 1000, np.uint16))
    ds[keyword] = RawDataElement(Tag(tag_for_keyword(keyword)), vr, len(raw), raw, 0, False, True)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid value it writes
        write_dataset(fp, ds)
    request = intake.Request(
        ds.SOPInstanceUID, ds.SOPClassUID, str(ExplicitVRLittleEndian), "SCU", "127.0.0.1"
    )
    rules, now = SelectionRules(SelectionSettings()), datetime.now(UTC)
    header = intake.read_header(fp, ExplicitVRLittleEndian)
    assert isinstance(header.get_item(keyword), RawDataElement)
    fp.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid value
        row = intake.check(header, request, rules, now).received
        expected = intake.check(read_dataset(fp, False, True), request, rules, now).received
    assert row == expected
    assert (row.instance_number, row.z) == (
        (None, 0.0) if keyword == "InstanceNumber" else (row.instance_number, None)
    )
