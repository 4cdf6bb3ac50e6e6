"""Radiologists' reviews of study results: what a verdict means, and how well the model agrees.

A review says whether a result version was right (:class:`~ichnode.db.models.Verdict`), and
optionally which hemorrhage subtypes are present and on which slices. This module validates a
review once (the API and ``ichnode review`` both call :func:`submit`), reads a study's reviews
back, turns the review that counts into the truth (:func:`truth`: the labels an export writes)
and tallies the agreement between the model and its readers (:func:`agreement`) per model id
and month, the site's real-world performance. The statements are :mod:`ichnode.db.reviews`'.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from ichnode.db import results as result_rows
from ichnode.db import reviews as rows
from ichnode.db.models import Review, StudyResult, Verdict
from ichnode.errors import IchnodeError
from ichnode.store import uid_hash
from ichnode.subtypes import ANY, HEMORRHAGE_SUBTYPES

log = logging.getLogger(__name__)

#: Longest reviewer name and note kept (the column lengths).
MAX_REVIEWER = 128
MAX_NOTE = 4000


class ReviewError(IchnodeError):
    """A review that cannot be recorded (bad value, no such study or result version)."""


class UnknownStudyError(ReviewError):
    """No study has that StudyInstanceUID."""


class NoResultError(ReviewError):
    """The study has no result yet, or not the version asked for."""


@dataclass(frozen=True)
class Truth:
    """What a review says is in a study: a hemorrhage or not, which subtypes, on which slices
    (None: no slice was marked)."""

    hemorrhage: bool
    subtypes: tuple[str, ...]
    slices: frozenset[str] | None


def parse_verdict(value: str) -> Verdict:
    """A :class:`Verdict` from its name; the error lists the names."""
    try:
        return Verdict(value.strip().lower())
    except ValueError:
        names = ", ".join(v.value for v in Verdict)
        raise ReviewError(f"unknown verdict {value!r}: expected {names}") from None


def parse_subtypes(values: Iterable[str]) -> tuple[str, ...]:
    """Hemorrhage subtype names in SUBTYPES order (``any`` is implied by any of them: it is
    accepted and left out)."""
    names = {v.strip().lower() for v in values if v.strip()} - {ANY}
    unknown = sorted(names - set(HEMORRHAGE_SUBTYPES))
    if unknown:
        raise ReviewError(
            f"unknown subtype {unknown[0]!r}: expected {', '.join(HEMORRHAGE_SUBTYPES)}"
        )
    return tuple(name for name in HEMORRHAGE_SUBTYPES if name in names)


def submit(
    session: Session,
    study_uid: str,
    verdict: str | Verdict,
    *,
    reviewer: str,
    subtypes: Sequence[str] | None = None,
    slices: Sequence[str] | None = None,
    note: str | None = None,
    version: int | None = None,
) -> dict[str, Any]:
    """Record a review of a study's result ``version`` (default: its latest) and return it.

    ``subtypes`` None leaves the result's own subtypes standing; ``slices`` must be SOP
    instance UIDs of the study. Raises :class:`ReviewError` (:class:`UnknownStudyError`,
    :class:`NoResultError` for a missing study or version).
    """
    chosen = verdict if isinstance(verdict, Verdict) else parse_verdict(verdict)
    names = None if subtypes is None else parse_subtypes(subtypes)
    who = reviewer.strip()
    if not who or len(who) > MAX_REVIEWER:
        raise ReviewError(f"reviewer must be 1 to {MAX_REVIEWER} characters")
    if note is not None and len(note) > MAX_NOTE:
        raise ReviewError(f"note must be at most {MAX_NOTE} characters")
    study = result_rows.study_by_uid(session, study_uid)
    if study is None:
        raise UnknownStudyError("no such study")
    wanted = study.result_version if version is None else version
    result = rows.result_version(session, study.id, wanted) if wanted else None
    if result is None:
        raise NoResultError(
            "the study has no result yet" if version is None else f"no result version {version}"
        )
    marked = None
    if slices:
        marked = list(dict.fromkeys(s.strip() for s in slices))
        if not set(marked) <= rows.study_sop_uids(session, study.id):
            raise ReviewError("a marked slice is not an instance of this study")
    review = rows.add_review(
        session,
        Review(
            study_id=study.id,
            study_result_id=result.id,
            verdict=chosen,
            subtypes=None if names is None else ",".join(names),
            slices=None if marked is None else ",".join(marked),
            reviewer=who,
            note=note.strip() if note and note.strip() else None,
        ),
    )
    log.info(
        "review %d of study %s v%d: %s by reviewer #%s",
        review.id, uid_hash(study_uid), result.version, chosen, uid_hash(who),
    )  # fmt: skip
    return as_dict(review, result.version, result.model_id)


def as_dict(review: Review, version: int, model_id: str) -> dict[str, Any]:
    """A review in the API's JSON contract."""
    return {
        "id": review.id,
        "verdict": str(review.verdict),
        "subtypes": None if review.subtypes is None else _split(review.subtypes),
        "slices": None if review.slices is None else _split(review.slices),
        "reviewer": review.reviewer,
        "note": review.note,
        "version": version,
        "model_id": model_id,
        "created_at": review.created_at.isoformat(),
    }


def reviews_of(session: Session, study_uid: str) -> list[dict[str, Any]] | None:
    """Every review of a study, oldest first (the last one counts); None: no such study."""
    study = result_rows.study_by_uid(session, study_uid)
    if study is None:
        return None
    return [as_dict(r, v, m) for r, v, m in rows.reviews_of(session, study.id)]


def _split(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def truth(review: Review, result: StudyResult) -> Truth:
    """What the review says is in the study it reviewed.

    *confirmed* keeps the result's stand (a flag is a hemorrhage, no flag none), *rejected*
    turns it round, *missed* says there is a hemorrhage the result did not report. The
    reviewer's subtypes, when given, replace the result's.
    """
    if review.verdict is Verdict.MISSED:
        present = True
    elif review.verdict is Verdict.REJECTED:
        present = not result.flagged
    else:
        present = bool(result.flagged)
    if review.subtypes is not None:
        names = tuple(_split(review.subtypes))
    elif present and result.flagged:
        names = tuple(n for n in result.flagged_subtype_list if n in HEMORRHAGE_SUBTYPES)
    else:
        names = ()
    marked = None if review.slices is None else frozenset(_split(review.slices))
    return Truth(present, names if present else (), marked)


@dataclass
class Agreement:
    """The model's flags against its reviewers' truth, for one model id and month."""

    model_id: str
    month: str  # "YYYY-MM" of the review
    reviewed: int = 0
    flagged: int = 0
    confirmed: int = 0  # flagged and confirmed
    rejected: int = 0  # flagged and rejected (false alarms)
    true_positive: int = 0
    false_positive: int = 0
    true_negative: int = 0
    false_negative: int = 0

    @property
    def sensitivity(self) -> float | None:
        """Of the studies with a hemorrhage, the share flagged (None: none had one)."""
        positives = self.true_positive + self.false_negative
        return self.true_positive / positives if positives else None

    @property
    def specificity(self) -> float | None:
        """Of the studies without a hemorrhage, the share not flagged (None: none)."""
        negatives = self.true_negative + self.false_positive
        return self.true_negative / negatives if negatives else None

    def add(self, flagged: bool, verdict: Verdict, hemorrhage: bool) -> None:
        self.reviewed += 1
        self.flagged += flagged
        self.confirmed += flagged and verdict is Verdict.CONFIRMED
        self.rejected += flagged and verdict is Verdict.REJECTED
        if flagged:
            self.true_positive += hemorrhage
            self.false_positive += not hemorrhage
        else:
            self.false_negative += hemorrhage
            self.true_negative += not hemorrhage

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"sensitivity": self.sensitivity, "specificity": self.specificity}


def agreement(
    session: Session, since: datetime | None = None, *, by_month: bool = True
) -> list[Agreement]:
    """The latest review of every reviewed study, tallied per model id (and month of the
    review unless ``by_month`` is False: then ``month`` is "all"), sorted by both."""
    table: dict[tuple[str, str], Agreement] = {}
    for review, result, _study in rows.latest_reviews(session, since):
        month = review.created_at.strftime("%Y-%m") if by_month else "all"
        key = (result.model_id, month)
        if key not in table:
            table[key] = Agreement(result.model_id, month)
        table[key].add(bool(result.flagged), review.verdict, truth(review, result).hemorrhage)
    return [table[k] for k in sorted(table)]
