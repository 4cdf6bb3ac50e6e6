"""The results contract shared by ``ichnode results`` and the HTTP API.

Returns plain dicts in the documented JSON contract (see README, "Results JSON"); the
statements are :mod:`ichnode.db.results`'.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from ichnode.db import notifications
from ichnode.db import results as rows
from ichnode.db.models import Prediction, Study, StudyResult


def _probs(obj: Any) -> dict[str, float] | None:
    if obj is None:
        return None
    p = obj.probabilities
    return None if any(v is None for v in p.values()) else {k: round(v, 6) for k, v in p.items()}


def study_summary(session: Session, study: Study) -> dict[str, Any]:
    """One study in the list contract."""
    result = rows.latest_result(session, study)
    key_uid = None
    if result is not None and result.key_instance_id is not None:
        key_uid = rows.sop_uid_of(session, result.key_instance_id)
    return summary_of(study, result, rows.instance_count(session, study.id), key_uid)


def summary_of(
    study: Study, result: StudyResult | None, n_instances: int, key_uid: str | None
) -> dict[str, Any]:
    """The list contract of a study from what one query read (its latest result, its
    instance count and its key slice's UID): the worklist reads a page in one statement."""
    return {
        "study_instance_uid": study.study_instance_uid,
        "status": str(study.status),
        "flagged": bool(result.flagged) if result else None,
        "flagged_subtypes": result.flagged_subtype_list if result else [],
        "probabilities": _probs(result),
        "key_sop_instance_uid": key_uid,
        "version": result.version if result else 0,
        "n_instances": n_instances,
        "n_scored": result.n_scored if result else None,
        "model_id": result.model_id if result else None,
        "received_at": study.first_received_at.isoformat(),
        "last_received_at": study.last_received_at.isoformat(),
        "resulted_at": result.created_at.isoformat() if result else None,
    }


def list_studies(
    session: Session,
    *,
    flagged: bool | None = None,
    since: datetime | None = None,
    accession: str | None = None,
    limit: int | None = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Studies, newest first; ``flagged`` keeps only studies whose latest result is flagged.

    ``accession`` keeps the studies with that accession number (what the RIS and the PACS
    administrator know a study by); the rows themselves carry no patient data.
    """
    found = rows.studies(session, rows.StudyQuery(flagged, since, accession, limit, offset))
    return [study_summary(session, s) for s in found]


def accession_numbers(session: Session, study_uids: list[str]) -> dict[str, str | None]:
    """The accession number of each study (for the table an administrator reads; the JSON
    rows carry no patient data)."""
    return rows.accession_numbers(session, study_uids)


def study_detail(session: Session, study_uid: str) -> dict[str, Any] | None:
    """One study with every instance ordered by z (then instance number), and all versions."""
    study = rows.study_by_uid(session, study_uid)
    if study is None:
        return None
    out = study_summary(session, study)
    instances = sorted(
        rows.instances(session, study.id),
        key=lambda i: (i.z is None, i.z if i.z is not None else 0.0, i.instance_number or 0, i.id),
    )
    out["instances"] = [
        {
            "sop_instance_uid": i.sop_instance_uid,
            "series_instance_uid": i.series.series_instance_uid,
            "z": i.z,
            "instance_number": i.instance_number,
            "status": str(i.status),
            "error": i.reason,
            "probabilities": _probs(_newest(i.predictions)),
        }
        for i in instances
    ]
    out["versions"] = [
        {
            "version": r.version,
            "flagged": r.flagged,
            "flagged_subtypes": r.flagged_subtype_list,
            "probabilities": _probs(r),
            "model_id": r.model_id,
            "created_at": r.created_at.isoformat(),
            # Report objects: pending, done, failed, superseded (None: before revision 0002).
            "reports": None if r.report_status is None else str(r.report_status),
            "report_error": r.report_error,
        }
        for r in rows.versions(session, study.id)
    ]
    out["deliveries"] = deliveries(session, study.id)
    return out


def deliveries(session: Session, study_id: int) -> list[dict[str, Any]]:
    """Every report object queued for the study (all versions, oldest first) and its state,
    then every notification (``kind``: ``hl7v2`` or ``fhir``, ``destination``: the receiver)."""
    objects = [
        {
            "version": version,
            "kind": str(obj.kind),
            "destination": e.destination,
            "status": str(e.status),
            "attempts": e.attempts,
            "last_error": e.last_error,
            "sent_at": e.sent_at.isoformat() if e.sent_at else None,
        }
        for e, obj, version in rows.deliveries(session, study_id)
    ]
    return objects + [
        {
            "version": version,
            "kind": str(n.kind),
            "destination": n.target,
            "status": str(n.status),
            "attempts": n.attempts,
            "last_error": n.last_error,
            "sent_at": n.sent_at.isoformat() if n.sent_at else None,
        }
        for n, version in notifications.of_study(session, study_id)
    ]


def _newest(predictions: list[Prediction]) -> Prediction | None:
    return max(predictions, key=lambda p: (p.created_at, p.id)) if predictions else None
