"""The database: models, engine setup, every statement the node runs, and schema migrations.

Typical start-up: ``engine = make_engine(settings.db_url)`` (once per process),
``upgrade(engine)`` when ``auto_upgrade`` is on, else ``check_schema(engine)``, then
``Session = make_sessionmaker(engine)``.
"""

from ichnode.db.engine import is_postgresql, make_engine, make_sessionmaker
from ichnode.db.migrate import SchemaError, check_schema, current_revision, head_revision, upgrade
from ichnode.db.models import (
    Association,
    Base,
    DeliveryAttempt,
    DeliveryStatus,
    Instance,
    InstanceStatus,
    OutboxEntry,
    Prediction,
    ReportKind,
    ReportObject,
    ReportStatus,
    Series,
    Study,
    StudyResult,
    StudyStatus,
    utcnow,
)

__all__ = [
    "Association",
    "Base",
    "DeliveryAttempt",
    "DeliveryStatus",
    "Instance",
    "InstanceStatus",
    "OutboxEntry",
    "Prediction",
    "ReportKind",
    "ReportObject",
    "ReportStatus",
    "SchemaError",
    "Series",
    "Study",
    "StudyResult",
    "StudyStatus",
    "check_schema",
    "current_revision",
    "head_revision",
    "is_postgresql",
    "make_engine",
    "make_sessionmaker",
    "upgrade",
    "utcnow",
]
