"""The C-STORE header read (``intake.read_header``): only the elements the checks and the
rows need are read from the received bytes, in both little-endian syntaxes, and what is read
is enough for :func:`intake.check` to admit the slice with its row fields."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from helpers import ct_dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
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
