"""A FHIR R4 DiagnosticReport of a result version, POSTed as JSON to the receiver.

The report (:func:`build_report`): status ``preliminary``; category Radiology (HL7 v2 table
0074 ``RAD``, the FHIR R4 example); code LOINC 24725-4 "CT Head"; the patient as a logical
reference by identifier; the ImagingStudy as a logical reference by its StudyInstanceUID
(``urn:dicom:uid``); one contained Observation per finding (the finding coded as in the SR,
the probability as a UCUM ``{probability}`` quantity, the call as interpretation ``POS`` or
``NEG``); ``conclusion`` the non-diagnostic statement; ``conclusionCode`` the flagged findings.

:func:`send` POSTs it (``Content-Type: application/fhir+json``); 2xx is delivered, anything
else or no answer is a failed attempt (the notifier retries).
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import requests

from ichnode.notify import NotifyError
from ichnode.notify.codes import CT_HEAD_LOINC, LOINC, finding_codes
from ichnode.notify.facts import ResultFacts
from ichnode.subtypes import SUBTYPES

MEDIA_TYPE = "application/fhir+json"
DICOM_UID_SYSTEM = "urn:dicom:uid"
RESULT_SYSTEM = "urn:ichnode:study-result"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CATEGORY = {
    "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
    "code": "RAD",
    "display": "Radiology",
}


def _concept(name: str) -> dict[str, Any]:
    codes = finding_codes(name)
    return {
        "coding": [{"system": c.fhir_system, "code": c.code, "display": c.display} for c in codes],
        "text": codes[0].display,
    }


def _effective(facts: ResultFacts) -> str | None:
    """The study date as a FHIR date: a DICOM StudyTime has no zone, and FHIR requires one
    with a time of day, so the time is left out rather than guessed."""
    d = facts.study_date
    if len(d) != 8 or not d.isdigit():
        return None
    return f"{d[:4]}-{d[4:6]}-{d[6:]}"


def _observation(facts: ResultFacts, name: str) -> dict[str, Any]:
    called = facts.called(name)
    return {
        "resourceType": "Observation",
        "id": f"finding-{name}",
        "status": "preliminary",
        "code": _concept(name),
        "valueQuantity": {
            "value": round(facts.probabilities[name], 4),
            "unit": "probability",
            "system": UCUM,
            "code": "{probability}",
        },
        "interpretation": [
            {
                "coding": [
                    {
                        "system": INTERPRETATION,
                        "code": "POS" if called else "NEG",
                        "display": "Positive" if called else "Negative",
                    }
                ]
            }
        ],
    }


def build_report(facts: ResultFacts) -> dict[str, Any]:
    """The DiagnosticReport of ``facts`` as a JSON-ready dict (R4)."""
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "contained": [_observation(facts, name) for name in SUBTYPES],
        "identifier": [{"system": RESULT_SYSTEM, "value": f"{facts.study_uid}/v{facts.version}"}],
        "status": "preliminary",
        "category": [{"coding": [CATEGORY]}],
        "code": {
            "coding": [{"system": LOINC, "code": CT_HEAD_LOINC[0], "display": CT_HEAD_LOINC[1]}],
            "text": facts.study_description or CT_HEAD_LOINC[1],
        },
        "issued": facts.resulted_at.astimezone(UTC).isoformat(),
        "result": [{"reference": f"#finding-{name}"} for name in SUBTYPES],
        "imagingStudy": [
            {
                "type": "ImagingStudy",
                "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{facts.study_uid}"},
            }
        ],
        "conclusion": facts.statement,
        "conclusionCode": [_concept(name) for name in SUBTYPES if facts.called(name)],
    }
    if facts.patient_id:
        report["subject"] = {"type": "Patient", "identifier": {"value": facts.patient_id}}
        if facts.patient_name:
            report["subject"]["display"] = facts.patient_name.replace("^", " ").strip()
    effective = _effective(facts)
    if effective:
        report["effectiveDateTime"] = effective
    if facts.accession_number:
        report["identifier"].append(
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                    ]
                },
                "value": facts.accession_number,
            }
        )
    if not report["conclusionCode"]:
        del report["conclusionCode"]
    return report


def send(
    report: dict[str, Any],
    url: str,
    token: str | None,
    timeout: float,
    verify: str | bool = True,
) -> str:
    """POST the report to ``url`` (its ``DiagnosticReport`` endpoint); returns ``HTTP <code>``,
    or raises :class:`NotifyError` when it was not accepted. ``verify``: the CA file an
    ``https`` server is verified against (True: the system CAs)."""
    headers = {"Content-Type": MEDIA_TYPE, "Accept": MEDIA_TYPE}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    target = url if url.endswith("/DiagnosticReport") else f"{url}/DiagnosticReport"
    try:
        answer = requests.post(
            target,
            data=json.dumps(report).encode(),
            headers=headers,
            timeout=timeout,
            verify=verify,
        )
    except requests.RequestException as exc:
        raise NotifyError(f"FHIR POST: {type(exc).__name__}") from None
    status = f"HTTP {answer.status_code}"
    if not 200 <= answer.status_code < 300:
        raise NotifyError(f"FHIR POST answered {status}", response=status)
    return status
