"""Statements of the study model's pass: read a study's slices, store refined probabilities.

Callers own the transaction (as in :mod:`ichnode.db.queue`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session, undefer

from ichnode.db.models import Instance, InstanceStatus, Prediction, probability_values


@dataclass(frozen=True)
class StudySlice:
    """One instance of a study with its newest prediction (None: not scored)."""

    instance_id: int
    status: InstanceStatus
    z: float | None
    prediction: Prediction | None
    #: The stored file, relative to the store (None: not stored).
    path: str | None = None


def study_slices(session: Session, study_id: int) -> list[StudySlice]:
    """Every instance of the study, with its newest prediction and that prediction's
    embedding loaded."""
    rows = session.execute(
        select(Instance.id, Instance.status, Instance.z, Instance.path, Prediction)
        .outerjoin(Prediction, Prediction.instance_id == Instance.id)
        .where(Instance.study_id == study_id)
        .options(undefer(Prediction.embedding))
        .order_by(Instance.id, Prediction.created_at, Prediction.id)
    ).all()
    out: dict[int, StudySlice] = {}
    for instance_id, status, z, path, prediction in rows:
        previous = out.get(instance_id)
        if previous is None or prediction is not None:  # ordered: the newest comes last
            out[instance_id] = StudySlice(instance_id, status, z, prediction or None, path)
    return list(out.values())


def store_refined(
    session: Session, refined: Sequence[tuple[int, Sequence[float]]], study_version: int
) -> None:
    """Overwrite predictions' probabilities with the study model's refined ones.

    ``refined`` holds (prediction id, six probabilities in SUBTYPES order); each row records
    the study result version that refined it. The embedding stays, so a reopened study is
    refined again from the same inputs.
    """
    for prediction_id, values in refined:
        session.execute(
            update(Prediction)
            .where(Prediction.id == prediction_id)
            .values(study_version=study_version, **probability_values(values)),
            execution_options={"synchronize_session": False},
        )
