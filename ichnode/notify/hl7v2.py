"""HL7 v2.5.1 ORU^R01 of a result version, sent over MLLP; the receiver's ACK decides.

The message (:func:`build_oru`): MSH; PID (patient id, name, sex from the study); PV1 (patient
class ``U``: the node knows no visit); OBR with the accession number as placer and filler
order number, the procedure as LOINC 24725-4 "CT Head" and result status ``P`` (preliminary);
an NTE with the non-diagnostic statement; one OBX per finding: the finding coded as CWE
(SNOMED CT where confirmed, else ichnode's local code plus RadElement, :mod:`.codes`), the
probability as NM with the UCUM unit ``{probability}``, and the call as the abnormal flag
(``A``: part of the flag, ``N``: not). Segments end with ``\\r``; text is escaped (HL7 v2 2.7).

:func:`send` writes it in an MLLP block with the ``hl7`` package's stream client and waits for
the ACK: ``AA``/``CA`` is delivered; ``AE``/``AR``/``CE``/``CR``, no answer within the
timeout, or a closed connection is a failed attempt (the notifier retries).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import hl7
from hl7.mllp import open_hl7_connection

from ichnode.notify import NotifyError
from ichnode.notify.codes import CT_HEAD_LOINC, Coding, finding_codes
from ichnode.notify.facts import ResultFacts
from ichnode.subtypes import SUBTYPES

VERSION = "2.5.1"
#: HL7 table 0008: acknowledgment codes that mean the message was accepted.
ACCEPTED = frozenset({"AA", "CA"})
#: UCUM annotation for a dimensionless probability (as in the SR).
PROBABILITY_UNIT = "{probability}^probability^UCUM"
#: HL7 table 0078 abnormal flags for the call.
FLAGGED, NOT_FLAGGED = "A", "N"
#: HL7 table 0085/0123 result status: preliminary (automated, not reviewed).
PRELIMINARY = "P"
#: HL7 table 0004 patient class: unknown (the node receives no visit).
UNKNOWN_CLASS = "U"
_SEXES = {"M": "M", "F": "F", "O": "O"}


def escape(text: str) -> str:
    """``text`` with the HL7 delimiters escaped (``|^~\\&``) and line breaks as ``\\.br\\``."""
    out = text.replace("\\", "\\E\\")
    for char, code in (("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\")):
        out = out.replace(char, code)
    return out.replace("\r\n", "\\.br\\").replace("\n", "\\.br\\").replace("\r", "\\.br\\")


def _cwe(codes: tuple[Coding, ...]) -> str:
    """A CWE: identifier^text^system, and the alternate's three components when there is one."""
    parts = [p for c in codes[:2] for p in (c.code, c.display, c.scheme)]
    return "^".join(escape(p) for p in parts)


def _name(dicom_name: str) -> str:
    """A DICOM PN (``Family^Given^Middle^Prefix^Suffix``, first group) as an XPN."""
    family, given, middle = ([*dicom_name.split("=")[0].split("^"), "", ""])[:3]
    return "^".join(escape(p.strip()) for p in (family, given, middle)).rstrip("^")


def _ts(date: str, time: str) -> str:
    """DICOM DA + TM as an HL7 DTM (``YYYYMMDDHHMMSS``); the date alone when no time."""
    if len(date) != 8 or not date.isdigit():
        return ""
    digits = "".join(ch for ch in time.split(".")[0] if ch.isdigit())[:6]
    return date + digits


def _now(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def build_oru(
    facts: ResultFacts,
    sending_application: str,
    receiving_application: str,
    control_id: str | None = None,
    now: datetime | None = None,
) -> str:
    """The ORU^R01 of ``facts`` as text (segments joined by ``\\r``)."""
    now = now or datetime.now(UTC)
    control_id = control_id or uuid.uuid4().hex[:20]
    observed = _ts(facts.study_date, facts.study_time)
    resulted = _now(facts.resulted_at)
    accession = escape(facts.accession_number)
    procedure = f"{CT_HEAD_LOINC[0]}^{CT_HEAD_LOINC[1]}^LN"
    segments = [
        "|".join(
            [
                "MSH",
                "^~\\&",
                escape(sending_application),
                "",
                escape(receiving_application),
                "",
                _now(now),
                "",
                "ORU^R01^ORU_R01",
                control_id,
                "P",
                VERSION,
            ]
        ),
        "|".join(
            [
                "PID",
                "1",
                "",
                escape(facts.patient_id),
                "",
                _name(facts.patient_name),
                "",
                "",
                _SEXES.get(facts.patient_sex.strip().upper(), "U"),
            ]
        ),
        f"PV1|1|{UNKNOWN_CLASS}",
        "|".join(
            ["OBR", "1", accession, accession, procedure, "", "", observed]
            + [""] * 14
            + [resulted, "", "CT", PRELIMINARY]
        ),
        f"NTE|1|L|{escape(facts.statement)}",
    ]
    for i, name in enumerate(SUBTYPES, start=1):
        segments.append(
            "|".join(
                [
                    "OBX",
                    str(i),
                    "NM",
                    _cwe(finding_codes(name)),
                    str(i),
                    f"{facts.probabilities[name]:.4f}",
                    PROBABILITY_UNIT,
                    "",
                    FLAGGED if facts.called(name) else NOT_FLAGGED,
                    "",
                    "",
                    PRELIMINARY,
                    "",
                    "",
                    resulted,
                ]
            )
        )
    return "\r".join(segments)


async def _exchange(message: str, host: str, port: int, timeout: float) -> hl7.Message:
    reader, writer = await asyncio.wait_for(
        open_hl7_connection(host, port, encoding="utf-8"), timeout
    )
    try:
        writer.writemessage(message)
        await asyncio.wait_for(writer.drain(), timeout)
        return await asyncio.wait_for(reader.readmessage(), timeout)
    finally:
        writer.close()


def send(message: str, host: str, port: int, timeout: float) -> str:
    """Send one message over MLLP and return the ACK code (``AA``); :class:`NotifyError` when
    the receiver cannot be reached, does not answer in ``timeout`` or does not accept it."""
    try:
        ack = asyncio.run(_exchange(message, host, port, timeout))
    except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
        raise NotifyError(f"no ACK from {host}:{port} within {timeout:g} s") from None
    except OSError as exc:
        raise NotifyError(f"MLLP {host}:{port}: {exc.strerror or type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - a malformed answer (hl7 parse, MLLP framing)
        raise NotifyError(f"MLLP {host}:{port}: bad answer ({type(exc).__name__})") from None
    try:
        code = str(ack.segment("MSA")[1])
    except (KeyError, IndexError):
        raise NotifyError(f"MLLP {host}:{port}: answer has no MSA segment") from None
    if code not in ACCEPTED:
        raise NotifyError(f"MLLP {host}:{port}: ACK {code}", response=code)
    return code
