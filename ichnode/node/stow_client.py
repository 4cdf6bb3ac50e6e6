"""STOW-RS out: send stored report objects to a DICOMweb destination (``kind = "dicomweb"``).

The outbox (:mod:`ichnode.node.outbox`) calls :func:`stow_files` for a destination with a
``url``, with the entries it claimed for it, and records one attempt per object as for a
C-STORE: the answer is mapped onto the same status codes (HTTP 200: Success for each; 202:
the Failure Reason of each object in the Failed SOP Sequence, Success for the others; any
other answer, or none: no status, the error says why), so retries, backoff and records are
the outbox's. The request is made by ``dicomweb-client`` (one multipart request per batch);
an ``https`` URL is verified against ``tls.ca`` or the system CAs.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from ichnode.config import Destination, Settings
from ichnode.node.scu import Outcome
from ichnode.node.statuses import SUCCESS


def _headers(destination: Destination | None) -> dict[str, str]:
    if destination is not None and destination.token:
        return {"Authorization": f"Bearer {destination.token}"}
    return {}


def check(settings: Settings, destination: Destination) -> str:
    """``OK`` when the DICOMweb server answers a QIDO-RS search (``destinations check``),
    else why not."""
    assert destination.url is not None
    try:
        answer = _session(settings, destination).get(
            f"{destination.url}/studies",
            params={"limit": "1"},
            headers={"Accept": "application/dicom+json", **_headers(destination)},
            timeout=settings.network_timeout,
        )
    except requests.RequestException as exc:
        return f"no answer ({type(exc).__name__})"
    return "OK" if answer.status_code in (200, 204) else f"HTTP {answer.status_code}"


class _Session(requests.Session):
    """A session whose ``verify`` (``tls.ca``) holds for every request. requests lets
    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace a session's CA when a request names none
    (psf/requests#3829), and dicomweb-client's requests name none: where those variables are
    set, the configured CA was ignored and the peer refused (SSLError)."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # noqa: ANN001, ANN201
        merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:
            merged["verify"] = self.verify
        return merged


def _session(settings: Settings, destination: Destination | None) -> requests.Session:
    session = _Session()
    session.verify = str(settings.tls.ca) if settings.tls.ca else True
    if destination is not None and destination.username:
        session.auth = (destination.username, destination.password or "")
    return session


def stow_files(
    settings: Settings, destination: Destination | None, url: str, paths: list[Path]
) -> list[Outcome]:
    """STOW-RS the files to ``url`` (its ``/studies`` endpoint); one outcome per file."""
    outcomes: list[Outcome | None] = [None] * len(paths)
    datasets, index = [], []
    for i, path in enumerate(paths):
        try:
            datasets.append(pydicom.dcmread(path))
            index.append(i)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            outcomes[i] = Outcome(None, f"stored file unreadable ({type(exc).__name__})")
    if datasets:
        client = DICOMwebClient(
            url,
            session=_session(settings, destination),
            headers=_headers(destination),
            timeout=settings.network_timeout,
        )
        try:
            answer = client.store_instances(datasets)
            failed = {
                str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0xC000))
                for item in answer.get("FailedSOPSequence", [])
            }
            for i, ds in zip(index, datasets, strict=True):
                reason = failed.get(str(ds.SOPInstanceUID))
                outcomes[i] = Outcome(
                    SUCCESS if reason is None else reason,
                    None if reason is None else f"STOW-RS failure reason 0x{reason:04X}",
                )
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            for i in index:
                outcomes[i] = Outcome(None, f"STOW-RS answered HTTP {code}")
        except Exception as exc:  # noqa: BLE001 - no answer, or one that cannot be read
            for i in index:
                outcomes[i] = Outcome(None, f"STOW-RS failed ({type(exc).__name__})")
    return [o if o is not None else Outcome(None, "not sent") for o in outcomes]
