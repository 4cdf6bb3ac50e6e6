"""The HL7 v2 ORU^R01 and the FHIR DiagnosticReport of a result version, validated by
independent libraries: hl7apy (strict HL7 v2.5.1 structure) and fhir.resources (R4B models)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from ichnode.notify import fhir, hl7v2
from ichnode.notify.facts import ResultFacts
from ichnode.subtypes import SUBTYPES

STUDY_UID = "1.2.826.0.1.3680043.10.511.3.1234"


def _facts(**kw) -> ResultFacts:
    values = dict(
        study_uid=STUDY_UID,
        patient_id="PAT|01",
        patient_name="Doe^Jane^Q",
        patient_sex="F",
        accession_number="ACC&42",
        study_date="20261205",
        study_time="101500.25",
        study_description="CT HEAD WO",
        version=1,
        flagged=True,
        flagged_subtypes=("subdural", "any"),
        probabilities=dict(zip(SUBTYPES, (0.02, 0.1, 0.05, 0.2, 0.91, 0.95), strict=True)),
        model_id="ab" * 32,
        resulted_at=datetime(2026, 12, 5, 10, 20, tzinfo=UTC),
    )
    values.update(kw)
    return ResultFacts(**values)


def test_oru_passes_hl7apy_strict_validation():
    text = hl7v2.build_oru(_facts(), "ICHNODE", "RIS")
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    message.validate()
    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert message.msh.msh_12.to_er7() == "2.5.1"


def test_oru_codes_each_finding_and_escapes_delimiters():
    text = hl7v2.build_oru(_facts(), "ICHNODE", "RIS")
    segments = {line.split("|")[0]: line for line in text.split("\r")}
    obx = [line.split("|") for line in text.split("\r") if line.startswith("OBX")]
    assert len(obx) == len(SUBTYPES)
    by_name = dict(zip(SUBTYPES, obx, strict=True))
    assert by_name["subdural"][3] == "35486000^Subdural hemorrhage^SCT"
    assert by_name["subdural"][5] == "0.9100" and by_name["subdural"][8] == "A"
    assert by_name["intraventricular"][3] == "23276006^Ventricular hemorrhage^SCT"
    assert by_name["intraventricular"][8] == "N"
    assert by_name["epidural"][3] == (
        "epidural^Epidural hemorrhage^99ICHNODE^RDES89^epidural hematoma^RADELEMENT"
    )
    assert "PAT\\F\\01" in segments["PID"] and "Doe^Jane^Q" in segments["PID"]
    assert segments["OBR"].split("|")[3] == "ACC\\T\\42"
    assert "not for diagnosis" in segments["NTE"]


def test_diagnostic_report_parses_as_fhir_r4b_with_snomed_conclusion():
    report = DiagnosticReport.model_validate_json(json.dumps(fhir.build_report(_facts())))
    assert report.status == "preliminary"
    assert report.code.coding[0].system == "http://loinc.org"
    assert len(report.contained) == len(SUBTYPES)
    assert [c.coding[0].code for c in report.conclusionCode] == ["35486000", "1386000"]
    assert report.imagingStudy[0].identifier.value == f"urn:oid:{STUDY_UID}"


def test_unflagged_report_has_no_conclusion_code_and_negative_interpretations():
    facts = _facts(flagged=False, flagged_subtypes=())
    report = DiagnosticReport.model_validate_json(json.dumps(fhir.build_report(facts)))
    assert report.conclusionCode is None
    assert {o.interpretation[0].coding[0].code for o in report.contained} == {"NEG"}


@pytest.mark.parametrize("time", ["", "1015", "101500"])
def test_study_time_of_any_precision_gives_a_valid_report(time):
    report = fhir.build_report(_facts(study_time=time))
    DiagnosticReport.model_validate_json(json.dumps(report))
