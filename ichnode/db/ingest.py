"""Recording received instances: the study, series and instance rows of one C-STORE.

Callers own the transaction. Upserts of studies and series are race-safe across concurrent
associations (``INSERT ... ON CONFLICT DO NOTHING`` then ``SELECT``).

This is the C-STORE hot path, so the statements every instance runs are Core statements built
once, with bind parameters, compiled once per dialect and run on the driver's cursor
(:mod:`ichnode.db.prepared`): building them per call and the ORM's unit of work cost more than
the SQL itself (about 1.6 ms of SQLAlchemy per instance, measured with cProfile), and so did
SQLAlchemy's per-execution work after that (about 0.35 ms). The functions take a
:class:`~ichnode.db.prepared.Writer` (the receive path's pooled connection) or a ``Session``.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from pydicom.dataset import Dataset
from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import NoResultFound
from sqlalchemy.orm import Session

from ichnode.db.models import (
    Instance,
    InstanceStatus,
    Series,
    Study,
    StudyStatus,
    clip,
    nul_free,
)
from ichnode.db.prepared import Prepared, Writer

#: Two slices of one series closer than this along the normal are "the same position" (mm).
SAME_POSITION_MM = 0.01

_instances = cast(Table, Instance.__table__)
_studies = cast(Table, Study.__table__)
_ID_OF_SOP = select(_instances.c.id).where(_instances.c.sop_instance_uid == bindparam("b_sop"))
_COUNT_REPEAT = (
    update(_instances)
    .where(_instances.c.sop_instance_uid == bindparam("b_sop"))
    .values(times_received=_instances.c.times_received + 1)
)
_TOUCH_STUDY = (
    update(_studies)
    .where(_studies.c.id == bindparam("b_study"))
    .values(last_received_at=bindparam("b_at"), status=StudyStatus.RECEIVING)
)
_SAME_POSITION = (
    select(func.count())
    .select_from(_instances)
    .where(
        _instances.c.series_id == bindparam("b_series"),
        _instances.c.status != InstanceStatus.SKIPPED,
        func.abs(_instances.c.z - bindparam("b_z")) < SAME_POSITION_MM,
    )
)
_INSERT_INSTANCE = insert(_instances).returning(_instances.c.id)
_series = cast(Table, Series.__table__)
_ID_OF_STUDY = select(_studies.c.id).where(_studies.c.study_instance_uid == bindparam("b_uid"))
_ID_OF_SERIES = select(_series.c.id).where(_series.c.series_instance_uid == bindparam("b_uid"))
#: The columns each INSERT is given (the rest take their defaults).
_STUDY_KEYS = (
    "study_instance_uid",
    "patient_id",
    "patient_name",
    "accession_number",
    "study_date",
    "study_time",
    "patient_sex",
    "patient_age",
    "study_description",
    "calling_ae",
    "calling_address",
    "first_received_at",
    "last_received_at",
    "status",
)
_SERIES_KEYS = (
    "study_id",
    "series_instance_uid",
    "modality",
    "series_description",
    "body_part",
    "created_at",
)
_INSTANCE_KEYS = (
    "study_id",
    "series_id",
    "sop_instance_uid",
    "sop_class_uid",
    "transfer_syntax_uid",
    "path",
    "size_bytes",
    "z",
    "instance_number",
    "status",
    "reason",
    "received_at",
)


class _Statements:
    """The statements of one received instance, prepared for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        upsert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
        self.id_of_sop = Prepared(_ID_OF_SOP, dialect)
        self.count_repeat = Prepared(_COUNT_REPEAT, dialect)
        self.insert_study = Prepared(
            upsert(_studies).on_conflict_do_nothing(), dialect, _STUDY_KEYS
        )
        self.id_of_study = Prepared(_ID_OF_STUDY, dialect)
        self.touch_study = Prepared(_TOUCH_STUDY, dialect)
        self.insert_series = Prepared(
            upsert(_series).on_conflict_do_nothing(), dialect, _SERIES_KEYS
        )
        self.id_of_series = Prepared(_ID_OF_SERIES, dialect)
        self.same_position = Prepared(_SAME_POSITION, dialect)
        self.insert_instance = Prepared(_INSERT_INSTANCE, dialect, _INSTANCE_KEYS)


@functools.lru_cache(maxsize=8)
def _statements(dialect: Dialect) -> _Statements:
    return _Statements(dialect)


def _writer(db: Writer | Session) -> tuple[Writer, _Statements]:
    writer = db if isinstance(db, Writer) else Writer.of(db)
    return writer, _statements(writer.dialect)


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str | None:
    """A text value, at most ``limit`` characters; a NUL inside it (no DICOM text VR allows
    one) becomes U+FFFD (:func:`nul_free`: the instance was answered 0xA700 and resent for
    ever)."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed element is as good as absent
        return None
    if value is None or value == "":
        return None
    return nul_free(str(value)[:limit])


#: The range of an IS value (PS3.5 6.2), which the integer columns hold on every backend.
IS_RANGE = (-(2**31), 2**31 - 1)


def _int(ds: Dataset, keyword: str) -> int | None:
    """An IS value; None when absent, malformed or outside :data:`IS_RANGE` (PostgreSQL's
    integer refused it: the instance was answered 0xA700 and resent for ever)."""
    try:
        value = ds.get(keyword)
        number = int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    if number is None or not IS_RANGE[0] <= number <= IS_RANGE[1]:
        return None
    return number


@dataclass
class Received:
    """The facts of one received instance that go into the database."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    received_at: datetime
    calling_ae: str | None = None
    #: The peer address of the association (return-to-sender sends the results there).
    calling_address: str | None = None
    modality: str | None = None
    series_description: str | None = None
    body_part: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    patient_sex: str | None = None
    patient_age: str | None = None
    study_description: str | None = None
    instance_number: int | None = None
    z: float | None = None
    path: str | None = None
    size_bytes: int | None = None
    status: InstanceStatus = InstanceStatus.QUEUED
    reason: str | None = None

    @classmethod
    def from_dataset(
        cls,
        ds: Dataset,
        *,
        calling_ae: str | None,
        transfer_syntax: str,
        z: float | None,
        received_at: datetime,
        calling_address: str | None = None,
    ) -> Received:
        return cls(
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            sop_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.get("SOPClassUID", "")),
            transfer_syntax_uid=transfer_syntax,
            received_at=received_at,
            calling_ae=calling_ae,
            calling_address=clip(Study.calling_address, calling_address),
            modality=_text(ds, "Modality", 16),
            series_description=_text(ds, "SeriesDescription"),
            body_part=_text(ds, "BodyPartExamined", 16),
            patient_id=_text(ds, "PatientID"),
            patient_name=_text(ds, "PatientName", 128),
            accession_number=_text(ds, "AccessionNumber", 16),
            study_date=_text(ds, "StudyDate", 8),
            study_time=clip(Study.study_time, _text(ds, "StudyTime")),
            patient_sex=clip(Study.patient_sex, _text(ds, "PatientSex")),
            patient_age=clip(Study.patient_age, _text(ds, "PatientAge")),
            study_description=_text(ds, "StudyDescription"),
            instance_number=_int(ds, "InstanceNumber"),
            z=z,
        )


def mark_duplicate(db: Writer | Session, sop_uid: str, now: datetime) -> bool:
    """If ``sop_uid`` is already recorded, count the repeat and return True (first copy kept).

    A plain SELECT first: the common case (a new instance) then takes no write lock.
    """
    writer, statements = _writer(db)
    if writer.execute(statements.id_of_sop, {"b_sop": sop_uid}).fetchone() is None:
        return False
    return bool(writer.execute(statements.count_repeat, {"b_sop": sop_uid}).rowcount)


class KnownIds:
    """Ids of study and series rows already inserted (rows are never deleted or renumbered).

    The C-STORE handler keeps one per node, so the 2nd..Nth slice of a series skips the study
    and series upserts and lookups (four statements per instance); ``touched`` holds when this
    process last moved each study's ``last_received_at`` (``time.monotonic``). Bounded;
    cleared when full and after any database error (a rolled-back touch must not count).
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self.studies: dict[str, int] = {}
        self.series: dict[str, int] = {}
        self.touched: dict[int, float] = {}

    def remember(self, table: dict[str, int], uid: str, row_id: int) -> None:
        if len(table) >= self.limit:
            table.clear()
        table[uid] = row_id

    def due(self, study_id: int, every: float) -> bool:
        """Whether the study's ``last_received_at`` is to be moved now: never moved by this
        process, or at least ``every`` seconds ago (0: every time)."""
        last = self.touched.get(study_id)
        return last is None or time.monotonic() - last >= every

    def touch(self, study_id: int) -> None:
        """The study's ``last_received_at`` was moved, and committed, just now."""
        if len(self.touched) >= self.limit:
            self.touched.clear()
        self.touched[study_id] = time.monotonic()

    def clear(self) -> None:
        self.studies.clear()
        self.series.clear()
        self.touched.clear()


@dataclass(frozen=True)
class Recorded:
    """The rows one received instance went into, and the state it was queued with."""

    id: int
    study_id: int
    series_id: int
    status: InstanceStatus
    reason: str | None
    #: Whether the study's ``last_received_at`` was moved (see ``touch_every``).
    touched: bool = True


def record_instance(
    db: Writer | Session,
    r: Received,
    skip_duplicate_positions: bool = True,
    known: KnownIds | None = None,
    touch_every: float = 0.0,
) -> Recorded:
    """Insert the instance (and its study and series if new); reopen a resulted study.

    ``touch_every``: seconds within which one process moves a study's ``last_received_at``
    (and ``status``) once, not for every instance (an UPDATE of the study row and its index
    per instance otherwise). The column then lags the newest instance by at most that; it
    must be well under ``stable_seconds``, so that a study that became stable (or resulted)
    is always touched by the next instance (:func:`touch_every`). The caller, who owns the
    transaction, tells ``known`` of a touch (``Recorded.touched``) once it is committed.
    """
    writer, statements = _writer(db)
    known = known if known is not None else KnownIds()
    study_id = known.studies.get(r.study_uid)
    if study_id is None:
        writer.execute(
            statements.insert_study,
            {
                "study_instance_uid": r.study_uid,
                "patient_id": r.patient_id,
                "patient_name": r.patient_name,
                "accession_number": r.accession_number,
                "study_date": r.study_date,
                "study_time": r.study_time,
                "patient_sex": r.patient_sex,
                "patient_age": r.patient_age,
                "study_description": r.study_description,
                "calling_ae": r.calling_ae,
                "calling_address": r.calling_address,
                "first_received_at": r.received_at,
                "last_received_at": r.received_at,
                "status": StudyStatus.RECEIVING,
            },
        )
        study_id = _one(writer.execute(statements.id_of_study, {"b_uid": r.study_uid}))
    touched = known.due(study_id, touch_every)
    if touched:
        writer.execute(statements.touch_study, {"b_study": study_id, "b_at": r.received_at})
    series_id = known.series.get(r.series_uid)
    if series_id is None:
        writer.execute(
            statements.insert_series,
            {
                "study_id": study_id,
                "series_instance_uid": r.series_uid,
                "modality": r.modality,
                "series_description": r.series_description,
                "body_part": r.body_part,
                "created_at": r.received_at,
            },
        )
        series_id = _one(writer.execute(statements.id_of_series, {"b_uid": r.series_uid}))
    status, reason = r.status, r.reason
    if status == InstanceStatus.QUEUED and skip_duplicate_positions and r.z is not None:
        same_z = _one(writer.execute(statements.same_position, {"b_series": series_id, "b_z": r.z}))
        if same_z:
            status, reason = InstanceStatus.SKIPPED, "duplicate slice position"
    instance_id = _one(
        writer.execute(
            statements.insert_instance,
            {
                "study_id": study_id,
                "series_id": series_id,
                "sop_instance_uid": r.sop_uid,
                "sop_class_uid": r.sop_class_uid,
                "transfer_syntax_uid": r.transfer_syntax_uid,
                "path": r.path,
                "size_bytes": r.size_bytes,
                "z": r.z,
                "instance_number": r.instance_number,
                "status": status,
                "reason": reason,
                "received_at": r.received_at,
            },
        )
    )
    known.remember(known.studies, r.study_uid, study_id)
    known.remember(known.series, r.series_uid, series_id)
    return Recorded(instance_id, study_id, series_id, status, reason, touched)


def touch_every(stable_seconds: float) -> float:
    """How often a receiver moves a study's ``last_received_at``: a tenth of
    ``stable_seconds``, at most 1 s; every instance when ``stable_seconds`` is under 1 s."""
    return min(1.0, stable_seconds / 10) if stable_seconds >= 1 else 0.0


def _one(cursor: Any) -> int:
    """The single value of the single row a statement returned (as ``scalar_one``)."""
    row = cursor.fetchone()
    if row is None:
        raise NoResultFound("No row was found when one was required")
    return int(row[0])
