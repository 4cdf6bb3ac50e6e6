"""``/api/studies`` and ``/api/info``: the worklist and study JSON the pages draw."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.exceptions import RequestValidationError

from ichnode import __version__
from ichnode.imaging import WINDOWS
from ichnode.store import valid_uid
from ichnode.subtypes import DISPLAY_NAMES, SUBTYPES
from ichnode.web import queries
from ichnode.web.context import Context
from ichnode.web.responses import IDENTIFIERS_HIDDEN, NOT_FOUND, UID_PATH, UNAUTHORIZED
from ichnode.web.schemas import NO_NUL, NodeInfo, StudyDetail, StudyList

#: How often the worklist page re-fetches the list.
REFRESH_SECONDS = 5.0
MAX_LIMIT = 500
MAX_OFFSET = 1_000_000

#: RFC 3339 date-time (the offset may be left out: UTC).
_DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})?$"
)

router = APIRouter()


def _since(value: str | None) -> datetime | None:
    """``since`` as an aware UTC datetime; 422 unless it is an RFC 3339 date-time."""
    if value is None:
        return None
    try:
        if not _DATE_TIME.match(value):
            raise ValueError(value)
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        error = {
            "type": "datetime_parsing",
            "loc": ("query", "since"),
            "msg": "expected an RFC 3339 date-time",
            "input": value,
        }
        raise RequestValidationError([error]) from None


@router.get("/api/studies", response_model=StudyList, responses=UNAUTHORIZED | IDENTIFIERS_HIDDEN)
def list_studies(
    ctx: Context,
    flagged: bool | None = None,
    since: Annotated[
        str | None,
        Query(
            description="Received at or after this RFC 3339 time (UTC when no offset).",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    status: queries.WorklistState | None = None,
    reviewed: Annotated[
        bool | None, Query(description="true: reviewed studies only; false: not reviewed yet.")
    ] = None,
    accession: Annotated[
        str | None,
        Query(
            max_length=64,
            pattern=NO_NUL,
            description="Only studies with this accession number.",
        ),
    ] = None,
    order: queries.Order = queries.Order.TRIAGE,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    """Studies in triage order (flagged first, then ``any`` descending, newest first)."""
    show = ctx.show_patient_identifiers
    if accession is not None and not show:
        # Hidden identifiers are not searchable either: that would tell them apart.
        raise HTTPException(400, "accession search is off while identifiers are hidden")
    with ctx.sessions() as session:
        query = queries.Query(
            flagged, _since(since), status, accession, reviewed, order, limit, offset
        )
        total, studies = queries.worklist(session, query, show_patient_identifiers=show)
    return {"total": total, "limit": limit, "offset": offset, "order": order, "studies": studies}


@router.get(
    "/api/studies/{study_uid}", response_model=StudyDetail, responses=NOT_FOUND | UNAUTHORIZED
)
def get_study(ctx: Context, study_uid: Annotated[str, UID_PATH]) -> dict[str, Any]:
    """One study: series, instances ordered by z, result versions, deliveries."""
    if not valid_uid(study_uid):
        raise HTTPException(404, "no such study")
    with ctx.sessions() as session:
        out = queries.detail(
            session, study_uid, show_patient_identifiers=ctx.show_patient_identifiers
        )
    if out is None:
        raise HTTPException(404, "no such study")
    return out


@router.get("/api/info", response_model=NodeInfo, responses=UNAUTHORIZED)
def info(ctx: Context) -> dict[str, Any]:
    """The ichnode version, and the labels, windows and thresholds the pages draw with."""
    ckpt = ctx.predictor.checkpoint if ctx.predictor else None
    return {
        "version": __version__,
        "subtypes": list(SUBTYPES),
        "display_names": dict(DISPLAY_NAMES),
        "windows": list(WINDOWS),
        "thresholds": ckpt.decision_thresholds if ckpt else None,
        "model_id": ctx.predictor.model_id if ctx.predictor else None,
        "show_patient_identifiers": ctx.show_patient_identifiers,
        "refresh_seconds": REFRESH_SECONDS,
    }
