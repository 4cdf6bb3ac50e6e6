"""Response models: what ``/openapi.json`` publishes and every JSON answer is checked against.

The study models follow the results contract of :mod:`ichnode.results` (extra keys that
module adds later pass through) plus the web layer's ``state``, ``patient``, ``series`` and
``deliveries``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ichnode.db.models import Verdict
from ichnode.web.queries import Order, WorklistState

Probabilities = dict[str, float]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Patient(BaseModel):
    """Identifiers from the study's headers; absent when the node hides them."""

    patient_name: str | None
    patient_id: str | None
    accession_number: str | None
    study_date: str | None
    study_time: str | None = Field(None, description="StudyTime (DICOM TM, e.g. 143200).")
    patient_sex: str | None = Field(None, description="PatientSex: M, F or O.")
    patient_age: str | None = Field(None, description="PatientAge (DICOM AS, e.g. 054Y).")
    study_description: str | None


#: The pattern of a text field without NUL (no DICOM value holds one, and PostgreSQL refuses
#: it in text).
NO_NUL = r"^[^\x00]*$"


class ReviewIn(BaseModel):
    """A radiologist's review of a study's result (the latest version unless ``version``)."""

    model_config = ConfigDict(extra="forbid")

    verdict: Verdict = Field(
        description="confirmed (the result is right), rejected (a false alarm) or missed "
        "(a hemorrhage the result did not report)."
    )
    subtypes: list[str] | None = Field(
        None,
        max_length=6,
        description="The hemorrhage subtypes present ('any' is implied); leave out to keep "
        "the result's own.",
    )
    slices: list[str] | None = Field(
        None, max_length=2000, description="SOP instance UIDs of the slices that show them."
    )
    reviewer: str | None = Field(
        None,
        max_length=128,
        description="Who reviews (default: the token's label, 'token').",
        json_schema_extra={"pattern": NO_NUL},
    )
    note: str | None = Field(None, max_length=4000, json_schema_extra={"pattern": NO_NUL})
    version: int | None = Field(None, ge=1, description="The result version reviewed.")

    @field_validator("reviewer", "note")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        """Text without NUL (PostgreSQL's text refuses it: a 500 instead of an answer); the
        published schema says so (:data:`NO_NUL`), so that its clients know."""
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class ReviewOut(BaseModel):
    id: int
    verdict: Verdict
    subtypes: list[str] | None
    slices: list[str] | None
    reviewer: str
    note: str | None
    version: int = Field(description="The result version reviewed.")
    model_id: str = Field(description="The model that made that result.")
    created_at: str


class ReviewList(BaseModel):
    study_instance_uid: str
    reviews: list[ReviewOut] = Field(description="Oldest first; the last one counts.")


class StudySummary(_Open):
    study_instance_uid: str
    status: str = Field(description="Database status: receiving or resulted.")
    state: WorklistState = Field(description="Worklist state, including delivery.")
    flagged: bool | None
    flagged_subtypes: list[str]
    probabilities: Probabilities | None
    key_sop_instance_uid: str | None
    version: int
    n_instances: int
    n_scored: int | None
    model_id: str | None
    received_at: str
    last_received_at: str
    resulted_at: str | None
    patient: Patient | None = None
    review: Verdict | None = Field(
        None, description="The verdict of the study's newest review (null: not reviewed)."
    )


class StudyList(BaseModel):
    total: int = Field(description="Studies matching the filters (all pages).")
    limit: int
    offset: int
    order: Order
    studies: list[StudySummary]


class InstanceOut(_Open):
    sop_instance_uid: str
    series_instance_uid: str
    z: float | None
    instance_number: int | None
    status: str
    error: str | None
    probabilities: Probabilities | None


class VersionOut(_Open):
    version: int
    flagged: bool
    flagged_subtypes: list[str]
    probabilities: Probabilities | None
    model_id: str
    created_at: str


class SeriesOut(BaseModel):
    series_instance_uid: str
    modality: str | None
    series_description: str | None
    n_instances: int


class StudyDetail(StudySummary):
    instances: list[InstanceOut]
    versions: list[VersionOut]
    series: list[SeriesOut]
    deliveries: list[dict[str, Any]] = Field(
        description="Report objects queued for every result version, and their state."
    )
    reviews: list[ReviewOut] = Field(
        default_factory=list, description="Every review of the study, oldest first."
    )


class Check(BaseModel):
    ok: bool
    detail: str | None = None


class Health(BaseModel):
    status: str = Field(description="ok or unavailable")
    database: Check
    store: Check
    workers: Check
    threads: dict[str, bool]
    queue_depth: int | None


class NodeInfo(BaseModel):
    """The running version, and what the pages need to draw: labels, windows, thresholds..."""

    version: str
    subtypes: list[str]
    display_names: dict[str, str]
    windows: list[str]
    thresholds: dict[str, float] | None
    model_id: str | None
    show_patient_identifiers: bool
    refresh_seconds: float


class Orientation(BaseModel):
    """Patient-direction letters at the edges of a slice as displayed (R/L, A/P, H/F)."""

    left: str
    right: str
    top: str
    bottom: str
