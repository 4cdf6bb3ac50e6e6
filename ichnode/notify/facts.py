"""What a result notification says: the study's patient and order, the version's findings.

Read once from the database rows (:func:`from_rows`); the HL7 and FHIR builders take this and
nothing else, so they are pure and testable without a database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ichnode import __version__
from ichnode.db.models import Study, StudyResult
from ichnode.report.sr import DISCLAIMER
from ichnode.subtypes import ANY, SUBTYPES
from ichnode.triage import Decision


@dataclass(frozen=True)
class ResultFacts:
    """One result version of one study, as the notifications tell it (PHI included)."""

    study_uid: str
    patient_id: str
    patient_name: str
    patient_sex: str
    accession_number: str
    study_date: str
    study_time: str
    study_description: str
    version: int
    flagged: bool
    flagged_subtypes: tuple[str, ...]
    probabilities: dict[str, float]
    model_id: str
    resulted_at: datetime

    @property
    def summary(self) -> str:
        """``Intracranial hemorrhage suspected (subdural)`` or ``No ... flagged``."""
        subtypes = tuple(n for n in self.flagged_subtypes if n != ANY)
        calls = {n: n in self.flagged_subtypes for n in SUBTYPES}
        return Decision(self.flagged, subtypes, calls).summary_line()

    def called(self, name: str) -> bool:
        """Whether ``name`` is part of the flag (``any`` raises it; a subtype is named)."""
        return name in self.flagged_subtypes

    @property
    def statement(self) -> str:
        """The non-diagnostic statement every message carries."""
        return (
            f"{DISCLAIMER}. Produced automatically by ichnode {__version__} (model "
            f"{self.model_id[:12]}) to prioritise reading; not a diagnosis. "
            f"Result: {self.summary}. Result version {self.version}."
        )


def from_rows(study: Study, result: StudyResult) -> ResultFacts:
    """The facts of a scored result version (its probabilities must be set)."""
    probs = result.probabilities
    return ResultFacts(
        study_uid=study.study_instance_uid,
        patient_id=study.patient_id or "",
        patient_name=study.patient_name or "",
        patient_sex=study.patient_sex or "",
        accession_number=study.accession_number or "",
        study_date=study.study_date or "",
        study_time=study.study_time or "",
        study_description=study.study_description or "",
        version=result.version,
        flagged=result.flagged,
        flagged_subtypes=tuple(result.flagged_subtype_list),
        probabilities={n: float(probs[n]) for n in SUBTYPES},
        model_id=result.model_id,
        resulted_at=result.created_at,
    )
