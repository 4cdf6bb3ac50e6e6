"""Shared test helpers: DCMTK tools, free ports, polling, small CT datasets."""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

if TYPE_CHECKING:
    import pytest

DCMTK_DIR = Path("/usr/bin")
#: DCMTK tools stall ~45 ms per file on loopback without this.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk(tool: str) -> str:
    """Full path of a DCMTK tool (pynetdicom's apps of the same name shadow them on PATH)."""
    path = DCMTK_DIR / tool
    assert path.is_file(), f"{path} missing: .ci/run installs the Debian package dcmtk"
    return str(path)


def run_dcmtk(tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk(tool), *args], env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout
    )


#: pydicom's warnings about the invalid values that hostile-input tests write and read on
#: purpose (``pytestmark = [pytest.mark.filterwarnings(f) for f in HOSTILE_PYDICOM_WARNINGS]``).
HOSTILE_PYDICOM_WARNINGS = (
    r"ignore:Invalid value:UserWarning:pydicom\.",
    r"ignore:The value length \(\d+\) exceeds the maximum length:UserWarning:pydicom\.",
    r"ignore:A value of type '\w+' cannot be assigned to a tag with VR:UserWarning:pydicom\.",
    r"ignore:Expected explicit VR, but found implicit VR:UserWarning:pydicom\.",
)


def project_version() -> str:
    """The version in the checkout's pyproject.toml (what ``ichnode --version`` must print)."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    found = re.search(r'^version = "([^"]+)"$', text, re.MULTILINE)
    assert found, "no version in pyproject.toml"
    return found.group(1)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on (or holds) ``host:port``."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


#: Test ports: below Linux's ephemeral range (32768-60999, where the kernel picks the source
#: ports of the tests' own client connections and "port 0" listeners), one block of
#: :data:`PORT_BLOCK` per xdist worker, so that two workers never pick the same port and no
#: outgoing connection takes a port between the pick and the listener's bind.
PORT_BASE, PORT_BLOCK = 26000, 500
_next_port = itertools.count(os.getpid() % PORT_BLOCK)


def free_port() -> int:
    """A loopback port nothing holds, from this xdist worker's own block."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    base = PORT_BASE + (int(worker) if worker.isdigit() else 0) % 13 * PORT_BLOCK
    for _ in range(PORT_BLOCK):
        port = base + next(_next_port) % PORT_BLOCK
        with socket.socket() as s:
            try:  # no SO_REUSEADDR: a port still in TIME_WAIT is passed over too
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in {base}-{base + PORT_BLOCK - 1}")


def wait_for(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05):  # noqa: ANN201
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """A folder that ``build`` fills once per test run, then only read.

    Under pytest-xdist each worker has its own session, so a session fixture would be built
    once per worker (a training run twice on 2 cores); here the first worker builds it in the
    run's shared base folder under a file lock, and the others wait for it and read it. A
    build that failed part-way is removed and tried again by the next worker that asks.
    Without xdist (``-n 0``) it is a plain ``tmp_path_factory.mktemp(name)``.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent  # shared by the run's workers
    folder, done = root / name, root / f"{name}.built"
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def sample_file(name: str) -> Path:
    """A file shipped by pydicom or pydicom-data."""
    path = get_testdata_file(name)
    assert path, f"{name} not found in pydicom's test data"
    return Path(path)


def ct_dataset(
    pixels: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = -1024.0,
    signed: bool = False,
    bits_stored: int = 16,
    photometric: str = "MONOCHROME2",
    study_uid: str | None = None,
    series_uid: str | None = None,
    z: float = 0.0,
    **attrs: object,
) -> Dataset:
    """A minimal valid CT Image Storage dataset around ``pixels`` (stored values)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "Phantom^Test"
    ds.PatientID = "PHANTOM-0001"
    ds.AccessionNumber = "ACC0001"
    ds.StudyDate = "20260101"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BodyPartExamined = "HEAD"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-100.0, -100.0, float(z)]
    ds.PixelSpacing = [0.5, 0.5]
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    return ds


def study(n: int = 4, size: int = 64, **attrs: object) -> list[Dataset]:
    """``n`` axial slices of one study/series with a gradient image."""
    study_uid, series_uid = generate_uid(), generate_uid()
    base = (np.add.outer(np.arange(size), np.arange(size)) * 4 + 900).astype(np.uint16)
    return [
        ct_dataset(
            base + i,
            study_uid=study_uid,
            series_uid=series_uid,
            z=5.0 * i,
            InstanceNumber=i + 1,
            **attrs,
        )
        for i in range(n)
    ]


def write_all(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def which(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is not installed: .ci/run installs it"
    return path


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``ichnode ARGS`` in this process, through the console entry point
    (:func:`ichnode.cli.main`: its one-line errors and exit codes), under typer's
    ``CliRunner`` isolation. For error paths and help: no new interpreter and no second torch
    import; the main paths stay real subprocesses.
    """
    import sys

    from typer.testing import CliRunner

    from ichnode import cli

    code = 0
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    with CliRunner().isolation(env=env) as (out, err, _):
        sys.argv = ["ichnode", *args]
        try:
            if cwd is not None:
                os.chdir(cwd)
            cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = saved_argv
            os.chdir(saved_cwd)
            cli._state["debug"] = False
            sys.stdout.flush()  # the isolation's text wrappers buffer
            sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return subprocess.CompletedProcess(["ichnode", *args], code, stdout, stderr)
