"""Real DICOM destinations for tests: Orthanc (a PACS with a REST API) and DCMTK storescp.

``Orthanc`` writes a temporary JSON configuration (its own storage and index folders, DICOM
and HTTP ports on 127.0.0.1, no remote access, no authentication, every C-STORE accepted),
starts ``/usr/sbin/Orthanc`` (Debian package ``orthanc``) and waits for the REST API. Only
``urllib`` is used: no extra packages. ``StoreSCP`` runs ``/usr/bin/storescp`` writing what it
receives into a folder.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
from helpers import DCMTK_ENV, dcmtk, free_port, wait_for
from pydicom.dataset import Dataset

ORTHANC = Path("/usr/sbin/Orthanc")
#: The DICOMweb plugin (Debian package ``orthanc-dicomweb``).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_AE = "ORTHANC"
#: Seconds to wait for Orthanc's REST API after the process starts.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class OrthancError(AssertionError):
    """Orthanc did not start, or a REST call failed."""


class Orthanc:
    """One Orthanc process. ``modalities``: ``{name: (ae_title, host, port)}`` it may send to."""

    def __init__(
        self,
        folder: Path,
        modalities: dict[str, tuple[str, str, int]] | None = None,
        *,
        dicom_port: int | None = None,
        http_port: int | None = None,
        dicomweb_servers: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.modalities = modalities or {}
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        #: With the DICOMweb plugin: its server at ``url + "/dicom-web"``, and the DICOMweb
        #: servers it may send to (``{name: {"Url": ..., "HttpHeaders": {...}}}``).
        self.dicomweb_servers = dicomweb_servers
        self.process: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ process

    def config(self) -> dict[str, Any]:
        return {
            "Name": "ichnode-test",
            "DicomAet": ORTHANC_AE,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomModalities": {
                name: [ae, host, port] for name, (ae, host, port) in self.modalities.items()
            },
            "Plugins": [str(DICOMWEB_PLUGIN)] if self.dicomweb_servers is not None else [],
            "DicomWeb": {
                "Enable": self.dicomweb_servers is not None,
                "Root": "/dicom-web/",
                "Servers": self.dicomweb_servers or {},
            },
            "HttpServerEnabled": True,
            "StableAge": 1,
            "SaveJobs": False,
            "ConcurrentJobs": 2,
        }

    def start(self) -> Orthanc:
        """Start the process and wait until its REST API answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            [str(ORTHANC), str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise OrthancError(f"Orthanc exited with {self.process.returncode}: {self.log()}")
            try:
                self.get("/system")
                return self
            except (OSError, OrthancError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise OrthancError(f"Orthanc did not answer in {START_TIMEOUT} s") from None
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the process and wait for it (kill if it does not stop in time)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def log(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace")[-4000:] if path.is_file() else ""

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ REST

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise OrthancError(f"{method} {path}: HTTP {exc.code} {detail}") from None

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def post(self, path: str, payload: Any) -> Any:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        answer = self.request("POST", path, raw)
        return json.loads(answer) if answer else None

    def upload(self, part10: bytes) -> str:
        """POST /instances: store one DICOM file; returns its Orthanc id."""
        return self.post("/instances", part10)["ID"]

    def study_id(self, study_uid: str) -> str | None:
        """The Orthanc id of a study by StudyInstanceUID, None when absent."""
        found = self.post("/tools/lookup", study_uid.encode())
        return next((f["ID"] for f in found if f["Type"] == "Study"), None)

    def send_study(self, modality: str, study_uid: str) -> Any:
        """C-STORE a whole study to a configured modality (synchronously)."""
        orthanc_id = self.study_id(study_uid)
        if orthanc_id is None:
            raise OrthancError("study not in Orthanc")
        return self.post(f"/modalities/{modality}/store", {"Resources": [orthanc_id]})

    def instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of a study with its main tags (empty when the study is absent)."""
        orthanc_id = self.study_id(study_uid)
        if orthanc_id is None:
            return []
        out = []
        for inst in self.get(f"/studies/{orthanc_id}/instances"):
            tags = self.get(f"/instances/{inst['ID']}/simplified-tags")
            out.append({"ID": inst["ID"], **tags})
        return out

    def file(self, instance_id: str) -> bytes:
        """The stored DICOM file of an instance."""
        return self.request("GET", f"/instances/{instance_id}/file")

    def delete_instance(self, instance_id: str) -> None:
        self.request("DELETE", f"/instances/{instance_id}")


STORESCP_AE = "STORESCP"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class StoreSCP:
    """``/usr/bin/storescp`` writing every received object into ``folder`` (bit-preserving)."""

    def __init__(self, folder: Path, port: int | None = None, ae_title: str = STORESCP_AE) -> None:
        self.folder = Path(folder)
        self.port = port or free_port()
        self.ae_title = ae_title
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder.parent / f"{self.folder.name}.log").open("ab")
        self.process = subprocess.Popen(
            [dcmtk("storescp"), "-aet", self.ae_title, "-od", str(self.folder), "+B",
             "-fe", ".dcm", str(self.port)],
            env=DCMTK_ENV, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        wait_for(lambda: port_open(self.port) or self.process.poll() is not None, timeout=15)
        assert self.process.poll() is None, "storescp exited at start"
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def __enter__(self) -> StoreSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))

    def received(self) -> dict[str, Dataset]:
        """Received objects by SOP Instance UID (headers only)."""
        out = {}
        for path in self.files():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            out[str(ds.SOPInstanceUID)] = ds
        return out
