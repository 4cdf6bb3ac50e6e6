"""The DICOM client: C-STORE stored files to a node, C-ECHO it.

The outbox (:mod:`ichnode.node.outbox`) sends report objects with :func:`send_files`;
``ichnode destinations check`` echoes every destination with :func:`check_destinations`.
Files are sent as stored: one presentation context per (SOP class, transfer syntax), no
re-encoding. TLS verifies the peer against ``tls.ca`` (or the system CAs).
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from ichnode.config import Settings
from ichnode.node.statuses import DELIVERED, SUCCESS

#: Limit for one C-ECHO in ``destinations check``.
ECHO_TIMEOUT = 10.0


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt: the DIMSE status (None when there was no answer) and why."""

    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status in DELIVERED


def status_text(code: int) -> str:
    """``0xA700 Failure: Refused: Out of Resources`` (PS3.4 names via pynetdicom)."""
    category, meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, ("Unknown", "unknown status"))
    return f"0x{code:04X} {category}: {meaning}"


def client_tls_context(settings: Settings) -> ssl.SSLContext:
    """TLS for sending: verify the peer against ``tls.ca`` or the system CAs; our cert if set."""
    ca = str(settings.tls.ca) if settings.tls.ca else None
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.tls.cert and settings.tls.key:
        ctx.load_cert_chain(str(settings.tls.cert), str(settings.tls.key))
    return ctx


def _scu(settings: Settings, timeout: float) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def hold_responses_for_the_sender(assoc: Association) -> Association:
    """Close pynetdicom's race between its reactor and ``send_c_store``/``send_c_echo``.

    The sender pauses the association's reactor (clears its checkpoint, waits until the reactor
    says it is paused) before sending the request, then waits for the response. The reactor
    says "paused", passes the checkpoint if it was still set, and only then marks itself
    running and takes any message waiting (``get_msg(block=False)``): a sender that cleared the
    checkpoint in between sees "paused", sends, and on a loaded host the reactor can take the
    response first ("Received unexpected C-STORE service message"), leaving the sender to wait
    out the DIMSE timeout and abort. Seen in CI as outbox sends that failed under load. Here the
    reactor's look (the only non-blocking one) finds nothing while the checkpoint is cleared,
    so a response waits for the sender that asked for it.
    """
    take = assoc.dimse.get_msg
    checkpoint = assoc._reactor_checkpoint

    def get_msg(block: bool = False) -> Any:
        if not block and not checkpoint.is_set():
            return None, None
        return take(block)

    assoc.dimse.get_msg = get_msg  # type: ignore[method-assign]
    return assoc


def _no_association(assoc: object, where: str) -> str:
    if getattr(assoc, "is_rejected", False):
        return f"association rejected by {where}"
    return f"no association with {where} (unreachable, or aborted)"


def send_files(
    settings: Settings,
    ae_title: str,
    host: str,
    port: int,
    paths: list[Path],
    tls: bool = False,
) -> list[Outcome]:
    """C-STORE stored files on one association; one :class:`Outcome` per file, in order.

    Each file goes in its own encoding: one presentation context per (SOP class, transfer
    syntax) is proposed, so the bytes are sent as stored.
    """
    where = f"{ae_title}@{host}:{port}"
    metas: list[tuple[str, str] | None] = []
    for path in paths:
        try:
            header = read_file_meta_info(path)
            metas.append((str(header.MediaStorageSOPClassUID), str(header.TransferSyntaxUID)))
        except (OSError, ValueError, AttributeError):
            metas.append(None)
    ae = _scu(settings, settings.network_timeout)
    for pair in sorted({m for m in metas if m is not None}):
        ae.add_requested_context(pair[0], [pair[1]])
    if not ae.requested_contexts:
        return [Outcome(None, "file missing from the store or unreadable")] * len(paths)
    try:
        tls_args = (client_tls_context(settings), host) if tls else None
        assoc = hold_responses_for_the_sender(
            ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
        )
    except (OSError, ssl.SSLError) as exc:  # TLS set-up or handshake
        return [Outcome(None, f"no association with {where}: {exc}")] * len(paths)
    if not assoc.is_established:
        return [Outcome(None, _no_association(assoc, where))] * len(paths)
    outcomes: list[Outcome] = []
    try:
        for path, meta in zip(paths, metas, strict=True):
            if meta is None:
                outcomes.append(Outcome(None, "file missing from the store or unreadable"))
                continue
            if not assoc.is_established:
                outcomes.append(Outcome(None, f"association with {where} ended early"))
                continue
            try:
                answer = assoc.send_c_store(path)
            except (ValueError, RuntimeError, OSError) as exc:  # no accepted context, bad file
                outcomes.append(Outcome(None, f"not sent: {exc}"))
                continue
            if "Status" not in answer:
                outcomes.append(Outcome(None, f"no C-STORE response from {where}"))
                continue
            code = int(answer.Status)
            error = None if code == SUCCESS else status_text(code)
            outcomes.append(Outcome(code, error))
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


@dataclass(frozen=True)
class EchoResult:
    """One row of ``ichnode destinations check``."""

    name: str
    ae_title: str
    host: str
    port: int
    ok: bool
    status: str
    round_trip_ms: float | None


def echo(settings: Settings, ae_title: str, host: str, port: int, tls: bool = False) -> str:
    """C-ECHO a node; returns ``"OK"`` or why it failed."""
    ae = _scu(settings, min(settings.network_timeout, ECHO_TIMEOUT))
    ae.add_requested_context(Verification)
    where = f"{ae_title}@{host}:{port}"
    try:
        tls_args = (client_tls_context(settings), host) if tls else None
        assoc = hold_responses_for_the_sender(
            ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
        )
    except (OSError, ssl.SSLError) as exc:  # TLS set-up or handshake
        return f"no association with {where}: {exc}"
    if not assoc.is_established:
        return _no_association(assoc, where)
    try:
        answer = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in answer:
        return f"no C-ECHO response from {where}"
    code = int(answer.Status)
    return "OK" if code == SUCCESS else f"C-ECHO status 0x{code:04X}"


def check_destinations(settings: Settings) -> list[EchoResult]:
    """C-ECHO every configured destination (a QIDO-RS search for a DICOMweb one), with the
    round-trip time of the ones that answer."""
    rows = []
    for d in settings.destinations:
        started = time.monotonic()
        if d.kind == "dicomweb":  # a QIDO-RS search instead of a C-ECHO
            from ichnode.node.stow_client import check

            status = check(settings, d)
            ms = 1000 * (time.monotonic() - started)
            ok = status == "OK"
            rows.append(EchoResult(d.name, "", d.url or "", 0, ok, status, ms if ok else None))
            continue
        status = echo(settings, d.ae_title, d.host, d.port, d.tls)
        ms = 1000 * (time.monotonic() - started)
        ok = status == "OK"
        rows.append(EchoResult(d.name, d.ae_title, d.host, d.port, ok, status, ms if ok else None))
    return rows
