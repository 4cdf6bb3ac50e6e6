"""SQLAlchemy 2 typed models: the node's queue and its record.

Every state a slice, a study or a delivery can be in is a column value (a string enum, stored
as VARCHAR without a native enum type so SQLite and PostgreSQL hold the same thing). Times are
timezone-aware UTC datetimes on both backends (:class:`UTCDateTime`).

PHI (patient name and id, accession number, study date and description) lives in ``studies``
only; log internal ids or UID hashes, never these columns.

The probability columns (``p_<subtype>``) are generated from :data:`ichnode.subtypes.SUBTYPES`;
use :attr:`Prediction.probabilities` / :meth:`Prediction.set_probabilities` rather than naming
them.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from ichnode.report_kind import ReportKind as ReportKind  # re-exported: a column type
from ichnode.subtypes import SUBTYPES

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, enum.Enum):
        """``enum.StrEnum`` for Python 3.10."""

        def __str__(self) -> str:
            return str(self.value)


#: Length of every status column (the longest value is far shorter).
STATUS_LENGTH = 16
#: DICOM UIDs are at most 64 characters (PS3.5 9.1).
UID_LENGTH = 64
#: DICOM AE titles are at most 16 characters (PS3.5 6.2, AE).
AE_LENGTH = 16
#: A peer's network address (IPv6 text included).
ADDRESS_LENGTH = 64

#: Name of the probability column of each subtype, in SUBTYPES order.
PROBABILITY_COLUMNS: tuple[str, ...] = tuple(f"p_{name}" for name in SUBTYPES)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC (what every time column holds)."""
    return datetime.now(timezone.utc)


class StudyStatus(StrEnum):
    RECEIVING = "receiving"
    RESULTED = "resulted"


class InstanceStatus(StrEnum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class ReportStatus(StrEnum):
    """Whether a result version's report objects were built and queued (see node.reporting)."""

    PENDING = "pending"  # not built yet: the node builds it, also after a restart
    DONE = "done"  # built and queued, or nothing to build (no destination, nothing scored)
    FAILED = "failed"  # cannot be built; ``report_error`` says why
    SUPERSEDED = "superseded"  # a newer version of the study came first


def _status(enum_cls: type[enum.Enum]) -> Enum:
    """A portable string enum column type: VARCHAR(16) holding the member *values*."""
    return Enum(
        enum_cls,
        native_enum=False,
        length=STATUS_LENGTH,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    Binding a naive datetime raises ``ValueError`` (its zone would be a guess). SQLite stores
    UTC wall time without an offset; PostgreSQL stores ``timestamptz``. Both read back as
    aware UTC datetimes, so comparisons in SQL and in Python agree.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime (utcnow())")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


#: Constraint names are spelled by convention so Alembic (and SQLite batch mode) can find them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


#: Probability columns come after the others in CREATE TABLE (readability only).
_PROBABILITY_SORT_ORDER = 10


def _probability_mixin(name: str, *, nullable: bool) -> type:
    """A mixin holding one Float column per subtype, named ``p_<subtype>``."""
    columns = {
        column: mapped_column(Float, nullable=nullable, sort_order=_PROBABILITY_SORT_ORDER)
        for column in PROBABILITY_COLUMNS
    }
    return type(name, (), columns)


class Verdict(StrEnum):
    """A radiologist's reading of a study result (:mod:`ichnode.review`)."""

    CONFIRMED = "confirmed"  # the result is right (a flag is a bleed, no flag is none)
    REJECTED = "rejected"  # a false alarm: flagged, and no bleed
    MISSED = "missed"  # a bleed the result did not report


class _HasProbabilities:
    """Access to the ``p_<subtype>`` columns in :data:`SUBTYPES` order."""

    @property
    def probabilities(self) -> dict[str, float]:
        """``{subtype: probability}`` in SUBTYPES order."""
        return {name: getattr(self, f"p_{name}") for name in SUBTYPES}

    def set_probabilities(self, values: Sequence[float]) -> None:
        """Set the columns from a sequence in SUBTYPES order (one value per subtype)."""
        for column, value in zip(PROBABILITY_COLUMNS, check_probabilities(values), strict=True):
            setattr(self, column, value)


def check_probabilities(values: Sequence[float]) -> list[float]:
    """Validate a model output row: one finite value in [0, 1] per subtype, as floats."""
    if len(values) != len(SUBTYPES):
        raise ValueError(
            f"expected {len(SUBTYPES)} probabilities ({', '.join(SUBTYPES)}), got {len(values)}"
        )
    out = [float(v) for v in values]
    for name, value in zip(SUBTYPES, out, strict=True):
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise ValueError(f"probability of {name} is {value}, expected a value in [0, 1]")
    return out


def probability_values(values: Sequence[float]) -> dict[str, float]:
    """``{"p_<subtype>": value}`` for a sequence in SUBTYPES order (for Core inserts)."""
    return dict(zip(PROBABILITY_COLUMNS, check_probabilities(values), strict=True))


def nul_free(value: str | None) -> str | None:
    """``value`` with each NUL replaced by U+FFFD. Text from outside (a header value, a
    peer's answer, an error message quoting a file's bytes) may hold NUL, which PostgreSQL
    refuses in text (SQLite takes it): the write failed, and what it recorded was retried
    for ever."""
    return value.replace("\x00", "\ufffd") if value else value


def clip(column: Any, value: str | None) -> str | None:
    """``value`` cut to the length of ``column`` (e.g. ``clip(Study.study_date, ds.StudyDate)``).

    Received headers are not always conformant; PostgreSQL rejects an overlong VARCHAR, and a
    description longer than its VR allows must not fail a C-STORE.
    """
    if value is None:
        return None
    length = getattr(column.type, "length", None)
    return value[:length] if length else value


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    # PHI: never log these.
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    patient_age: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(256))
    calling_ae: Mapped[str | None] = mapped_column(String(AE_LENGTH))
    #: The network address the study's first instance came from (with ``calling_ae``: where
    #: return-to-sender sends the results); NULL when unknown.
    calling_address: Mapped[str | None] = mapped_column(String(ADDRESS_LENGTH))
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    status: Mapped[StudyStatus] = mapped_column(_status(StudyStatus), default=StudyStatus.RECEIVING)
    result_version: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    #: A monitor's claim on the stable study (:mod:`ichnode.db.results`): its token, and until
    #: when no other monitor may take it (also the earliest retry after a failure).
    result_claim_token: Mapped[str | None] = mapped_column(String(32))
    result_lease_expires_at: Mapped[datetime | None]

    series: Mapped[list[Series]] = relationship(back_populates="study")
    instances: Mapped[list[Instance]] = relationship(back_populates="study")
    results: Mapped[list[StudyResult]] = relationship(
        back_populates="study", order_by="StudyResult.version"
    )


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_description: Mapped[str | None] = mapped_column(String(256))
    body_part: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """One received SOP instance, and its place in the inference queue."""

    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_status_lease_expires_at", "status", "lease_expires_at"),
        Index("ix_instances_study_id", "study_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    #: Relative to the store root; None when nothing was stored.
    path: Mapped[str | None] = mapped_column(String(512))
    size_bytes: Mapped[int | None]
    z: Mapped[float | None] = mapped_column(Float)
    instance_number: Mapped[int | None]
    status: Mapped[InstanceStatus] = mapped_column(
        _status(InstanceStatus), default=InstanceStatus.QUEUED
    )
    #: Why the instance FAILED or was SKIPPED.
    reason: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    times_received: Mapped[int] = mapped_column(default=1, server_default=text("1"))
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    completed_at: Mapped[datetime | None]

    study: Mapped[Study] = relationship(back_populates="instances")
    series: Mapped[Series] = relationship(back_populates="instances")
    predictions: Mapped[list[Prediction]] = relationship(back_populates="instance")


class Prediction(
    _probability_mixin("_PredictionProbabilities", nullable=False),  # type: ignore[misc]
    _HasProbabilities,
    Base,
):
    """One model's output for one instance."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("instance_id", "model_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    #: The checkpoint's identity (its weights' hash).
    model_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The slice network's embedding (float32 bytes) for the study model; NULL before 0003.
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    #: The study result version whose study model refined these probabilities (NULL: the
    #: slice network's own).
    study_version: Mapped[int | None]
    #: The instance ids of the planes a 2.5-D model saw ("12,13,14", lowest z first); NULL
    #: for a 2-D prediction.
    context: Mapped[str | None] = mapped_column(String(200))

    instance: Mapped[Instance] = relationship(back_populates="predictions")

    @classmethod
    def from_probabilities(
        cls, instance_id: int, model_id: str, values: Sequence[float], **kwargs: Any
    ) -> Prediction:
        """A prediction from a model output row in SUBTYPES order."""
        return cls(
            instance_id=instance_id, model_id=model_id, **probability_values(values), **kwargs
        )


class StudyResult(
    _probability_mixin("_StudyResultProbabilities", nullable=True),  # type: ignore[misc]
    _HasProbabilities,
    Base,
):
    """The aggregated result of one study; a reopened study gets a new version.

    The probabilities are None when no slice of the study could be scored.
    """

    __tablename__ = "study_results"
    __table_args__ = (UniqueConstraint("study_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    version: Mapped[int]
    model_id: Mapped[str] = mapped_column(String(64))
    flagged: Mapped[bool] = mapped_column(Boolean)
    #: Comma-separated subtype names that crossed their threshold ("" when none).
    flagged_subtypes: Mapped[str] = mapped_column(String(256), default="")
    key_instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="SET NULL")
    )
    n_instances: Mapped[int]
    n_scored: Mapped[int]
    n_failed: Mapped[int]
    n_skipped: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: NULL for results written before revision 0002 (never built again).
    report_status: Mapped[ReportStatus | None] = mapped_column(
        _status(ReportStatus), default=ReportStatus.PENDING, index=True
    )
    report_error: Mapped[str | None] = mapped_column(Text)
    #: The reporter's claim on a pending version (:mod:`ichnode.db.reports`): its token, and
    #: until when no other reporter may take it (also the earliest retry after a failure).
    report_claim_token: Mapped[str | None] = mapped_column(String(32))
    report_lease_expires_at: Mapped[datetime | None]

    study: Mapped[Study] = relationship(back_populates="results")
    key_instance: Mapped[Instance | None] = relationship()
    report_objects: Mapped[list[ReportObject]] = relationship(
        back_populates="study_result", order_by="ReportObject.id"
    )

    @property
    def flagged_subtype_list(self) -> list[str]:
        """:attr:`flagged_subtypes` as a list (in SUBTYPES order when written so)."""
        return [name for name in self.flagged_subtypes.split(",") if name]


class Review(Base):
    """One radiologist's review of one result version; never updated (a newer one supersedes).

    ``subtypes`` are the hemorrhage subtypes the reviewer says are present (comma-separated,
    SUBTYPES order; NULL: not corrected, the result's own stand), ``slices`` the SOP instance
    UIDs of the slices that show them (comma-separated; NULL: none marked).
    """

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    study_result_id: Mapped[int] = mapped_column(
        ForeignKey("study_results.id", ondelete="CASCADE"), index=True
    )
    verdict: Mapped[Verdict] = mapped_column(_status(Verdict))
    subtypes: Mapped[str | None] = mapped_column(String(256))
    slices: Mapped[str | None] = mapped_column(Text)
    #: The name the reviewer typed, or the label of the way they came in ("token", "cli").
    reviewer: Mapped[str] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    study: Mapped[Study] = relationship()
    study_result: Mapped[StudyResult] = relationship()


class ReportObject(Base):
    """One report object built for a result version, as written into the store.

    The record of what was built: the outbox rows point at it, a reopened study's new SR names
    the newest earlier SR as its predecessor from it, and ``ichnode resend`` queues it again.
    """

    __tablename__ = "report_objects"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_result_id: Mapped[int] = mapped_column(
        ForeignKey("study_results.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[ReportKind] = mapped_column(_status(ReportKind))
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    #: Relative to the store root.
    path: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    study_result: Mapped[StudyResult] = relationship(back_populates="report_objects")
    outbox: Mapped[list[OutboxEntry]] = relationship(back_populates="report_object")


class OutboxEntry(Base):
    """One report object to deliver to one destination."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    report_object_id: Mapped[int] = mapped_column(
        ForeignKey("report_objects.id", ondelete="CASCADE"), index=True
    )
    destination: Mapped[str] = mapped_column(String(64))
    ae_title: Mapped[str] = mapped_column(String(AE_LENGTH))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int]
    status: Mapped[DeliveryStatus] = mapped_column(
        _status(DeliveryStatus), default=DeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: A DICOMweb destination's STOW-RS URL (then ``ae_title``, ``host``, ``port`` are empty);
    #: NULL for a DIMSE destination.
    url: Mapped[str | None] = mapped_column(String(1024))
    #: The claim of the send in flight (:mod:`ichnode.db.delivery`); NULL when none is.
    claim_token: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]

    report_object: Mapped[ReportObject] = relationship(back_populates="outbox")
    delivery_attempts: Mapped[list[DeliveryAttempt]] = relationship(
        back_populates="outbox", order_by="DeliveryAttempt.id"
    )


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The DIMSE status of the C-STORE response, None when there was none.
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)

    outbox: Mapped[OutboxEntry] = relationship(back_populates="delivery_attempts")


class NotifyKind(StrEnum):
    """The message a ``[[notify]]`` receiver gets (see :mod:`ichnode.notify`)."""

    HL7V2 = "hl7v2"
    FHIR = "fhir"


class Notification(Base):
    """One result version to announce to one ``[[notify]]`` receiver (the notification outbox).

    Written in the transaction that writes the result version, so none is lost; the notifier
    (:mod:`ichnode.node.notifier`) sends it with the outbox's discipline: claimed under a lease
    and a token, every attempt recorded, retried with backoff until ``delivery_max_attempts``.
    The receiver's address is read from the config by ``target`` at send time.
    """

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_result_id: Mapped[int] = mapped_column(
        ForeignKey("study_results.id", ondelete="CASCADE"), index=True
    )
    target: Mapped[str] = mapped_column(String(64))
    kind: Mapped[NotifyKind] = mapped_column(_status(NotifyKind))
    status: Mapped[DeliveryStatus] = mapped_column(
        _status(DeliveryStatus), default=DeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]

    study_result: Mapped[StudyResult] = relationship()
    notification_attempts: Mapped[list[NotificationAttempt]] = relationship(
        back_populates="notification", order_by="NotificationAttempt.id"
    )


class NotificationAttempt(Base):
    """One try to deliver a notification: the receiver's answer (ACK code, HTTP status)."""

    __tablename__ = "notification_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    notification_id: Mapped[int] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(default=utcnow)
    #: "AA", "AE", "HTTP 201"...; None when there was no answer.
    response: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)

    notification: Mapped[Notification] = relationship(back_populates="notification_attempts")


class Association(Base):
    """Audit trail: one row per DICOM association the node took part in as SCP."""

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(primary_key=True)
    calling_ae: Mapped[str | None] = mapped_column(String(AE_LENGTH))
    called_ae: Mapped[str | None] = mapped_column(String(AE_LENGTH))
    peer_address: Mapped[str | None] = mapped_column(String(ADDRESS_LENGTH))
    peer_port: Mapped[int | None]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    n_received: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    n_failed: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    #: "accepted", "rejected: <reason>", "aborted", "released"...
    outcome: Mapped[str | None] = mapped_column(String(256))
