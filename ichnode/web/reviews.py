"""``/api/studies/{uid}/reviews``: radiologists' reviews of a study's results, read and added.

The one write route of the API: a review is a new row (:mod:`ichnode.review`), never an edit.
The reviewer is the name sent, else the label of the way in: ``token`` when the node has a
token, ``web`` on a loopback node without one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException

from ichnode import review
from ichnode.store import valid_uid
from ichnode.web.context import Context
from ichnode.web.responses import NOT_FOUND, UID_PATH, UNAUTHORIZED, Responses
from ichnode.web.schemas import ReviewIn, ReviewList, ReviewOut

#: The reviewer recorded when none is named: how the request came in.
TOKEN_LABEL = "token"
OPEN_LABEL = "web"

REJECTED: Responses = {
    400: {"description": "A subtype or slice that is not valid for this study."},
    409: {"description": "The study has no result (yet), or not that version."},
}

router = APIRouter()


@router.get(
    "/api/studies/{study_uid}/reviews",
    response_model=ReviewList,
    responses=NOT_FOUND | UNAUTHORIZED,
)
def list_reviews(ctx: Context, study_uid: Annotated[str, UID_PATH]) -> dict[str, Any]:
    """Every review of the study, oldest first: the last one counts, none is overwritten."""
    if not valid_uid(study_uid):
        raise HTTPException(404, "no such study")
    with ctx.sessions() as session:
        found = review.reviews_of(session, study_uid)
    if found is None:
        raise HTTPException(404, "no such study")
    return {"study_instance_uid": study_uid, "reviews": found}


@router.post(
    "/api/studies/{study_uid}/reviews",
    response_model=ReviewOut,
    status_code=201,
    responses=NOT_FOUND | UNAUTHORIZED | REJECTED,
)
def add_review(ctx: Context, study_uid: Annotated[str, UID_PATH], body: ReviewIn) -> dict[str, Any]:
    """Review the study's result: confirmed, rejected or missed, with corrections."""
    if not valid_uid(study_uid):
        raise HTTPException(404, "no such study")
    reviewer = (body.reviewer or "").strip() or (TOKEN_LABEL if ctx.token else OPEN_LABEL)
    try:
        with ctx.sessions.begin() as session:
            return review.submit(
                session,
                study_uid,
                body.verdict,
                reviewer=reviewer,
                subtypes=body.subtypes,
                slices=body.slices,
                note=body.note,
                version=body.version,
            )
    except review.UnknownStudyError as exc:
        raise HTTPException(404, str(exc)) from None
    except review.NoResultError as exc:
        raise HTTPException(409, str(exc)) from None
    except review.ReviewError as exc:
        raise HTTPException(400, str(exc)) from None
