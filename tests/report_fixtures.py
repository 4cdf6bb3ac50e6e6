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
from helpers import ct_dataset
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ichnode.report.findings import StudyFindings
from ichnode.subtypes import SUBTYPES

DCIODVFY = "/usr/bin/dciodvfy"
DSRDUMP = "/usr/bin/dsrdump"
SHA = "ab" * 32


def synth_ct_study(n_slices: int = 4, size: int = 64, *, seed: int = 0) -> list[Dataset]:
    """``n_slices`` CT slices (int16, HU = stored - 1024) of one study and one series: a skull,
    brain and a small "bleed", built by :func:`helpers.ct_dataset` with the patient, study and
    equipment attributes a PACS sends (what the report objects copy and dciodvfy checks)."""
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
        out.append(
            ct_dataset(
                (hu + 1024).astype(np.int16),
                signed=True,
                study_uid=study_uid,
                series_uid=series_uid,
                SpecificCharacterSet="ISO_IR 100",
                PatientName="Test^Patient",
                PatientID="PAT-0001",
                PatientBirthDate="19600101",
                PatientSex="F",
                FrameOfReferenceUID=frame_uid,
                StudyDate="20240102",
                StudyTime="101500",
                StudyID="S1",
                AccessionNumber="ACC123",
                ReferringPhysicianName="Ref^Doctor",
                SeriesDate="20240102",
                SeriesTime="101600",
                SeriesNumber=2,
                InstanceNumber=i + 1,
                Manufacturer="Synthetic",
                PatientPosition="HFS",
                ImagePositionPatient=[-120.0, -120.0, 5.0 * i],
                SliceThickness=5.0,
                PositionReferenceIndicator="",
                KVP=120,
                AcquisitionNumber=1,
                RescaleType="HU",
                WindowCenter=40,
                WindowWidth=80,
            )
        )
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
