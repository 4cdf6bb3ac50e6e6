"""``ichnode review`` and ``ichnode review stats``: record a review, print the agreement."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ichnode.config import Settings
from ichnode.review import Agreement, agreement, submit


def record_review(
    settings: Settings,
    study_uid: str,
    verdict: str,
    *,
    reviewer: str,
    subtypes: Sequence[str] | None,
    slices: Sequence[str] | None,
    note: str | None,
    version: int | None,
) -> dict[str, Any]:
    """Record one review in the configured database (:func:`ichnode.review.submit`)."""
    from ichnode.db.session import open_database

    engine, sessions = open_database(settings, create=False)
    try:
        with sessions.begin() as session:
            return submit(
                session,
                study_uid,
                verdict,
                reviewer=reviewer,
                subtypes=subtypes,
                slices=slices,
                note=note,
                version=version,
            )
    finally:
        engine.dispose()


def read_agreement(settings: Settings, since: datetime | None, by_month: bool) -> list[Agreement]:
    """The model's agreement with its reviewers (:func:`ichnode.review.agreement`)."""
    from ichnode.db.session import open_database

    engine, sessions = open_database(settings, create=False)
    try:
        with sessions() as session:
            return agreement(session, since, by_month=by_month)
    finally:
        engine.dispose()


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_agreement(rows: list[Agreement], as_json: bool) -> str:
    """A table (model id shortened to 12 characters) or JSON of the agreement rows."""
    if as_json:
        return json.dumps([r.as_dict() for r in rows], indent=2)
    if not rows:
        return "no reviewed studies"
    header = ("model", "month", "reviewed", "flagged", "confirmed", "rejected", "missed",
              "sensitivity", "specificity")  # fmt: skip
    lines = [header] + [
        (r.model_id[:12], r.month, str(r.reviewed), str(r.flagged), str(r.confirmed),
         str(r.rejected), str(r.false_negative), _share(r.sensitivity), _share(r.specificity))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)  # fmt: skip
