"""The six RSNA labels: their order, metric weights and display names.

This module is the only place the labels are spelled. The order is the one of the RSNA
Intracranial Hemorrhage Detection challenge (Kaggle, 2019) and of every model output.
"""

from __future__ import annotations

EPIDURAL = "epidural"
INTRAPARENCHYMAL = "intraparenchymal"
INTRAVENTRICULAR = "intraventricular"
SUBARACHNOID = "subarachnoid"
SUBDURAL = "subdural"
ANY = "any"

#: Model output order (= RSNA CSV label order).
SUBTYPES: tuple[str, ...] = (
    EPIDURAL,
    INTRAPARENCHYMAL,
    INTRAVENTRICULAR,
    SUBARACHNOID,
    SUBDURAL,
    ANY,
)

#: The five hemorrhage subtypes, without ``any``.
HEMORRHAGE_SUBTYPES: tuple[str, ...] = SUBTYPES[:5]

#: Weights of the competition's weighted multi-label log loss (``any`` counts twice).
METRIC_WEIGHTS: dict[str, float] = {name: (2.0 if name == ANY else 1.0) for name in SUBTYPES}

DISPLAY_NAMES: dict[str, str] = {
    EPIDURAL: "Epidural hemorrhage",
    INTRAPARENCHYMAL: "Intraparenchymal hemorrhage",
    INTRAVENTRICULAR: "Intraventricular hemorrhage",
    SUBARACHNOID: "Subarachnoid hemorrhage",
    SUBDURAL: "Subdural hemorrhage",
    ANY: "Intracranial hemorrhage (any)",
}


#: Radiology abbreviations, for narrow tables.
SHORT_NAMES: dict[str, str] = {
    EPIDURAL: "EDH",
    INTRAPARENCHYMAL: "IPH",
    INTRAVENTRICULAR: "IVH",
    SUBARACHNOID: "SAH",
    SUBDURAL: "SDH",
    ANY: "any",
}


def index(name: str) -> int:
    """Position of ``name`` in :data:`SUBTYPES`; a clear error for an unknown label."""
    try:
        return SUBTYPES.index(name)
    except ValueError:
        raise ValueError(
            f"unknown subtype {name!r}; expected one of {', '.join(SUBTYPES)}"
        ) from None


# --- SNOMED CT concepts ---------------------------------------------------------------------
#
# One SNOMED CT concept per label, for coded reports (DICOM SR). A code is listed here only if
# it was confirmed in a published source; each is cited. Where no code could be confirmed the
# entry is ``None`` and reports fall back to ichnode's local coding scheme (``99ICHNODE``),
# which is honest rather than a guessed code. See docs/report.md for the search record.


class CitedCode:
    """A code value, its meaning, and the published source it was confirmed in."""

    __slots__ = ("code", "meaning", "source")

    def __init__(self, code: str, meaning: str, source: str) -> None:
        self.code = code
        self.meaning = meaning
        self.source = source

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.meaning!r})"


class SnomedConcept(CitedCode):
    """A SNOMED CT concept: code value, meaning (FSN without the semantic tag) and its source."""

    __slots__ = ()


SNOMED_CT: dict[str, SnomedConcept | None] = {
    # 1386000 |Intracranial hemorrhage (disorder)|: DICOM PS3.16 concept list as shipped in
    # pydicom 3 (pydicom/sr/_concepts_dict.py, SCT "IntracranialHemorrhage"); also used with
    # this display in the fhir.resources tests of the HL7 FHIR EvidenceVariable examples.
    ANY: SnomedConcept("1386000", "Intracranial hemorrhage", "DICOM PS3.16 via pydicom 3"),
    # 21454007 |Subarachnoid intracranial hemorrhage (disorder)|: tx.fhir.org expansion
    # (SNOMED CT International 2025-02-01) of the Stroke Diagnosis ValueSet,
    # tecnomod-um/SK-FHIR-IG ValueSet-stroke-diagnosis-vs.
    SUBARACHNOID: SnomedConcept(
        "21454007",
        "Subarachnoid intracranial hemorrhage",
        "tx.fhir.org expansion, SNOMED CT Intl 2025-02-01 (tecnomod-um/SK-FHIR-IG)",
    ),
    # 274100004 |Cerebral hemorrhage (disorder)| (intracerebral = intraparenchymal): the same
    # tx.fhir.org expansion; also OHDSI concept 376713 "Cerebral hemorrhage" (OHDSI/Legend).
    INTRAPARENCHYMAL: SnomedConcept(
        "274100004",
        "Cerebral hemorrhage",
        "tx.fhir.org expansion, SNOMED CT Intl 2025-02-01 (tecnomod-um/SK-FHIR-IG)",
    ),
    # 35486000 |Subdural intracranial hemorrhage (disorder)|: NLM VSAC "Active Bleeding
    # Excluding Menses or Bleeding Diathesis" (2.16.840.1.113883.3.3157.4036, SNOMED 2023-09),
    # cqframework/ecqm-content-qicore-2024@9ebd48ff, lines 1206-1207; SNOMED International IPS
    # free set (HL7/fhir-ips@57c3299f, ProblemsSnomedCtIpsFreeSet.fsh, lines 14292-14293,
    # "Subdural hemorrhage"); the GPS subset (HL7/fhir-ips@86ef1ac5). Not 95453001 (hematoma).
    SUBDURAL: SnomedConcept(
        "35486000",
        "Subdural hemorrhage",
        "NLM VSAC 2.16.840.1.113883.3.3157.4036; SNOMED IPS free set; SNOMED GPS",
    ),
    # NOT CONFIRMED: the one generic code found (428268007 "Extradural intracranial hematoma")
    # has a single vendor source; reports keep the local code plus the RadElement code
    # (EPIDURAL_RADELEMENT) until a terminology server confirms one.
    EPIDURAL: None,
    # 23276006 |Ventricular hemorrhage (disorder)|: NLM VSAC "Hemorrhagic Stroke"
    # (2.16.840.1.113883.3.117.1.7.1.212, SNOMED 2023-09), cqframework/ecqm-content-qicore-2024
    # @9ebd48ff, lines 226-227, and VSAC "Closed Head and Facial Trauma" (...3157.4026, lines
    # 726-727): intracranial value sets, so the brain-ventricle concept. (71186008 is croup.)
    INTRAVENTRICULAR: SnomedConcept(
        "23276006",
        "Ventricular hemorrhage",
        "NLM VSAC 2.16.840.1.113883.3.117.1.7.1.212 and 2.16.840.1.113883.3.3157.4026",
    ),
}


class RadElementCode(CitedCode):
    """A RadElement (ACR/RSNA common data element) code a receiver can map a label by."""

    __slots__ = ()


#: Coding scheme designator of RadElement codes (the one the finding models use).
RADELEMENT_SCHEME = "RADELEMENT"

#: RadElement codes carried next to a local code where no SNOMED CT code is confirmed.
#: RDES89 "epidural hematoma": openimagingdata/findingmodels@4475ac1b,
#: conflicts/brain_shared_ids/epidural_hematoma.fm.json (index code RADELEMENT RDES89).
RADELEMENT: dict[str, RadElementCode] = {
    EPIDURAL: RadElementCode(
        "RDES89", "epidural hematoma", "openimagingdata/findingmodels epidural_hematoma.fm.json"
    ),
}
