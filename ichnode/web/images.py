"""``/api/instances/{uid}/...``: a stored slice as PNG (any window, optional Grad-CAM) and
the patient directions at its edges."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from ichnode.db import context as planes_of
from ichnode.db import results
from ichnode.errors import IchnodeError
from ichnode.imaging import WINDOWS, Window
from ichnode.store import valid_uid
from ichnode.subtypes import ANY, SUBTYPES
from ichnode.web.context import Context, WebContext
from ichnode.web.render import orientation, render_png
from ichnode.web.responses import NOT_FOUND, UID_PATH, UNAUTHORIZED, Responses
from ichnode.web.schemas import Orientation

log = logging.getLogger(__name__)

IMAGE_MAX_AGE = 300
WindowName = Literal[tuple(WINDOWS)]  # type: ignore[valid-type]
Subtype = Literal[SUBTYPES]  # type: ignore[valid-type]

IMAGE_RESPONSES: Responses = {
    200: {"content": {"image/png": {}}, "description": "The slice as PNG."},
    503: {"description": "Saliency asked for but no model is loaded."},
}

router = APIRouter()


def _instance(ctx: WebContext, sop_uid: str) -> tuple[int, str]:
    """An instance's id and its stored file, or 404."""
    if not valid_uid(sop_uid):
        raise HTTPException(404, "no such instance")
    with ctx.sessions() as session:
        found = results.instance_file(session, sop_uid)
    if found is None or found[1] is None:
        raise HTTPException(404, "no such instance, or nothing stored for it")
    return found[0], str(ctx.store.path(found[1]))


@router.get(
    "/api/instances/{sop_uid}/image.png",
    response_class=Response,
    responses=IMAGE_RESPONSES | NOT_FOUND | UNAUTHORIZED,
)
def instance_image(
    ctx: Context,
    sop_uid: Annotated[str, UID_PATH],
    window: WindowName = "brain",  # type: ignore[valid-type]
    center: Annotated[
        float | None,
        Query(ge=-2000, le=5000, description="Window centre in HU (overrides the named one's)."),
    ] = None,
    width: Annotated[
        float | None,
        Query(ge=1, le=10000, description="Window width in HU (overrides the named one's)."),
    ] = None,
    overlay: Literal["none", "saliency"] = "none",
    subtype: Subtype = ANY,
    size: Annotated[int | None, Query(ge=32, le=1024, description="Side in pixels.")] = None,
    letters: Annotated[
        bool, Query(description="Burn the orientation letters in (images of 192 px on).")
    ] = True,
) -> Response:
    """A stored slice rendered in a named window, or a free one (``center`` and ``width``
    override the named window's), optionally with the Grad-CAM heat map."""
    named = WINDOWS[window]
    shown = Window(
        "free",
        named.center if center is None else center,
        named.width if width is None else width,
    )
    instance_id, path = _instance(ctx, sop_uid)
    saliency = ctx.saliency if overlay == "saliency" else None
    if saliency is not None and not saliency.available:
        raise HTTPException(503, "no model loaded: saliency is not available")
    neighbours: list[str | None] = []
    if saliency is not None and saliency.context:  # a 2.5-D model reads the neighbours
        with ctx.sessions() as session:
            planes = planes_of.planes(session, [instance_id], saliency.context)[instance_id]
        neighbours = [None if p is None else str(ctx.store.path(p)) for p in planes.neighbour_paths]
    try:
        png = render_png(path, shown, size, saliency, subtype, letters, neighbours)
    except (IchnodeError, ValueError, OSError) as exc:
        log.info("instance image not rendered: %s", type(exc).__name__)
        raise HTTPException(404, "the stored object has no renderable image") from None
    return Response(
        png,
        media_type="image/png",
        headers={"Cache-Control": f"private, max-age={IMAGE_MAX_AGE}"},
    )


@router.get(
    "/api/instances/{sop_uid}/orientation",
    response_model=Orientation,
    responses=NOT_FOUND | UNAUTHORIZED,
)
def instance_orientation(ctx: Context, sop_uid: Annotated[str, UID_PATH]) -> dict[str, str]:
    """The patient directions at the edges of a stored slice (R, L, A, P, H, F)."""
    _, path = _instance(ctx, sop_uid)
    try:
        return orientation(path)
    except (IchnodeError, ValueError, OSError) as exc:
        log.info("instance orientation not read: %s", type(exc).__name__)
        raise HTTPException(404, "the stored object is not a readable DICOM file") from None
