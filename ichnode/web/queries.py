"""The worklist's rows on top of :mod:`ichnode.results`: triage order, states, patient block
(the statements are :mod:`ichnode.db.worklist`'s).

The study dicts are :func:`ichnode.results.summary_of` / :func:`~ichnode.results.study_detail`
(the documented results contract) plus three keys of the web layer: ``state`` (the worklist
state, :class:`WorklistState`), ``patient`` (identifiers, or None when hidden) and, in the
detail, ``series`` and ``deliveries`` (unless the results layer already provides them).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ichnode.db import results as result_rows
from ichnode.db import worklist as statements
from ichnode.db.models import Study
from ichnode.db.worklist import Order, Query, WorklistState
from ichnode.results import study_detail, summary_of
from ichnode.review import reviews_of

__all__ = ["Order", "Query", "WorklistState", "detail", "patient_block", "worklist"]


def patient_block(study: Study, show: bool) -> dict[str, Any] | None:
    """The identifiers shown beside a study, or None when the node hides them."""
    if not show:
        return None
    return {
        "patient_name": study.patient_name,
        "patient_id": study.patient_id,
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "study_time": study.study_time,
        "patient_sex": study.patient_sex,
        "patient_age": study.patient_age,
        "study_description": study.study_description,
    }


def worklist(
    session: Session, query: Query | None = None, *, show_patient_identifiers: bool = True
) -> tuple[int, list[dict[str, Any]]]:
    """``(total matching, one page of study summaries)`` in the query's order (the default
    query: the first page in triage order)."""
    total, rows = statements.page(session, query or Query())
    out = []
    for row in rows:  # one statement for the page
        summary = summary_of(row.study, row.result, row.n_instances, row.key_uid)
        summary["state"] = row.state
        summary["review"] = row.verdict
        summary["patient"] = patient_block(row.study, show_patient_identifiers)
        out.append(summary)
    return total, out


def detail(
    session: Session, study_uid: str, *, show_patient_identifiers: bool = True
) -> dict[str, Any] | None:
    """:func:`ichnode.results.study_detail` plus state, patient, series and deliveries."""
    out = study_detail(session, study_uid)
    if out is None:
        return None
    study = result_rows.study_by_uid(session, study_uid)
    assert study is not None
    out["state"] = statements.state_of(session, study_uid)
    out["patient"] = patient_block(study, show_patient_identifiers)
    out["series"] = [
        {
            "series_instance_uid": s.series_instance_uid,
            "modality": s.modality,
            "series_description": s.series_description if show_patient_identifiers else None,
            "n_instances": count,
        }
        for s, count in result_rows.series_of(session, study.id)
    ]
    out["reviews"] = reviews_of(session, study_uid) or []
    out["review"] = out["reviews"][-1]["verdict"] if out["reviews"] else None
    out.setdefault("deliveries", [])  # the results layer lists them (ichnode.results)
    return out
