"""Shared helpers for the report tests: a synthetic head-CT study and validators.

The study is made here, in the tests, with pydicom: a few 64×64 int16 CT slices of one
study with valid UIDs and the patient/study attributes a PACS would send.
"""

from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ichnode.report.findings import StudyFindings
from ichnode.subtypes import SUBTYPES

DCIODVFY = "/usr/bin/dciodvfy"
DSRDUMP = "/usr/bin/dsrdump"
SHA = "ab" * 32


def synth_ct_study(n_slices: int = 4, size: int = 64, *, seed: int = 0) -> list[Dataset]:
    """``n_slices`` CT slices (int16, HU = stored - 1024) of one study and one series."""
    rng = np.random.default_rng(seed)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    out = []
    for i in range(n_slices):
        hu = np.full((size, size), -1000.0)
        hu[r < size * 0.45] = 1000.0  # skull
        hu[r < size * 0.40] = 35.0  # brain
        hu[(r < size * 0.1) & (xx > size / 2)] = 70.0  # a "bleed"
        hu += rng.normal(0, 3, hu.shape)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.PatientName, ds.PatientID = "Test^Patient", "PAT-0001"
        ds.PatientBirthDate, ds.PatientSex = "19600101", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20240102", "101500", "S1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "ACC123", "Ref^Doctor"
        ds.SeriesDate, ds.SeriesTime = "20240102", "101600"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 2, i + 1
        ds.Manufacturer = "Synthetic"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-120.0, -120.0, 5.0 * i]
        ds.SliceThickness, ds.PixelSpacing = 5.0, [0.5, 0.5]
        ds.PositionReferenceIndicator = ""
        ds.KVP, ds.AcquisitionNumber = 120, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 80
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        out.append(ds)
    return out


def headers(study: list[Dataset]) -> list[Dataset]:
    """The study as a node would hold it: read back from bytes without pixel data."""
    return [pydicom.dcmread(BytesIO(encode(ds)), stop_before_pixels=True) for ds in study]


def make_findings(key_uid: str, *, positive: bool = True, version: int = 1) -> StudyFindings:
    probs = dict.fromkeys(SUBTYPES, 0.02)
    if positive:
        probs.update(subdural=0.91, any=0.95, subarachnoid=0.40)
    return StudyFindings(
        probabilities=probs,
        thresholds=dict.fromkeys(SUBTYPES, 0.5),
        key_sop_instance_uid=key_uid,
        model_id=f"ichnet-{SHA[:12]}",
        model_architecture="ichnet",
        model_sha256=SHA,
        version=version,
        ichnode_version="0.1.0",
    )


def encode(ds: Dataset) -> bytes:
    """Write ``ds`` as a Part 10 file with pydicom's strict writing validation."""
    old = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    try:
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
    finally:
        pydicom.config.settings.writing_validation_mode = old
    return buf.getvalue()


def roundtrip(ds: Dataset) -> Dataset:
    """Encode strictly and read back."""
    return pydicom.dcmread(BytesIO(encode(ds)))


def dciodvfy(ds: Dataset, tmp_path: Path, name: str) -> tuple[list[str], list[str]]:
    """Run dciodvfy on the encoded object: (error lines, warning lines)."""
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(encode(ds))
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [line for line in lines if "Error" in line]
    warnings = [line for line in lines if "Warning" in line]
    return errors, warnings


def dsrdump(ds: Dataset, tmp_path: Path, name: str = "sr") -> str:
    """dsrdump's rendering of an SR object."""
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(encode(ds))
    proc = subprocess.run([DSRDUMP, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
