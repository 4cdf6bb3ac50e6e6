"""How each finding is coded in HL7 v2 and FHIR: the same table as the SR.

SNOMED CT where :data:`ichnode.subtypes.SNOMED_CT` has a confirmed code, else ichnode's local
code (``99ICHNODE``, the SR's scheme) with the RadElement code as the alternate where one
exists (epidural: RDES89), so a receiver can map it. Never a guessed SNOMED code.
"""

from __future__ import annotations

from dataclasses import dataclass

from ichnode.subtypes import DISPLAY_NAMES, RADELEMENT, RADELEMENT_SCHEME, SNOMED_CT

#: The SR's local scheme (PS3.3 8.1; in HL7 v2 a "99zzz" local coding system too).
LOCAL_SCHEME = "99ICHNODE"
#: HL7 table 0396 name of SNOMED CT, and its FHIR system URI.
HL7_SNOMED = "SCT"
FHIR_SNOMED = "http://snomed.info/sct"
FHIR_LOCAL = "urn:ichnode:finding"
FHIR_RADELEMENT = "http://radelement.org"
#: LOINC 24725-4 "CT Head": the study the result is about (OBR-4, DiagnosticReport.code).
LOINC = "http://loinc.org"
CT_HEAD_LOINC = ("24725-4", "CT Head")


@dataclass(frozen=True)
class Coding:
    """One code: value, display and scheme (an HL7 v2 coding system name)."""

    code: str
    display: str
    scheme: str

    @property
    def fhir_system(self) -> str:
        return {
            HL7_SNOMED: FHIR_SNOMED,
            LOCAL_SCHEME: FHIR_LOCAL,
            RADELEMENT_SCHEME: FHIR_RADELEMENT,
        }[self.scheme]


def finding_codes(name: str) -> tuple[Coding, ...]:
    """The codes of a label, the primary first: SNOMED CT, else local plus RadElement."""
    concept = SNOMED_CT.get(name)
    if concept is not None:
        return (Coding(concept.code, concept.meaning, HL7_SNOMED),)
    codes = [Coding(name, DISPLAY_NAMES[name], LOCAL_SCHEME)]
    alternate = RADELEMENT.get(name)
    if alternate is not None:
        codes.append(Coding(alternate.code, alternate.meaning, RADELEMENT_SCHEME))
    return tuple(codes)
