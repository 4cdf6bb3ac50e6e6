"""Statements for 2.5-D input: a slice's neighbours by z in its series, and which scored
slices saw other neighbours than the series has now.

A checkpoint with context slices (:attr:`ichnode.imaging.PreprocessSpec.context`) scores a
slice with its ``context`` neighbours on each side. A worker takes the neighbours stored when
it claims the slice and records their ids (``predictions.context``); before the monitor
results a stable study it re-queues the slices whose neighbours have changed since
(:func:`stale`), so every slice of a result was scored with the neighbours it has.

Callers own the transaction (as in :mod:`ichnode.db.queue`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ichnode.db.models import Instance, InstanceStatus, Prediction
from ichnode.imaging import context_positions

#: Instances that can be a neighbour: stored, and not failed or skipped (not a CT slice).
_USABLE = (InstanceStatus.QUEUED, InstanceStatus.CLAIMED, InstanceStatus.DONE)


@dataclass(frozen=True)
class Planes:
    """The instances whose pixels make one 2.5-D input, lowest z first.

    ``ids`` and ``paths`` have ``2 * context + 1`` entries with the slice in the middle; where
    a neighbour is missing (the end of the series, z unknown) the slice itself stands in.
    """

    ids: tuple[int, ...]
    paths: tuple[str, ...]

    @property
    def encoded(self) -> str:
        """The ``predictions.context`` value: the ids, comma-separated."""
        return ",".join(str(i) for i in self.ids)

    @property
    def neighbour_paths(self) -> list[str | None]:
        """The neighbours' stored paths, lowest z first, the slice's own place left out; None
        where the slice stands in for a missing one (as
        :func:`ichnode.imaging.context_planes` takes them)."""
        k = len(self.ids) // 2
        centre = self.ids[k]
        return [
            None if i == centre else p
            for i, p in zip(self.ids[:k] + self.ids[k + 1 :], self.paths[:k] + self.paths[k + 1 :],
                            strict=True)
        ]  # fmt: skip


def _planes_of(rows: list[tuple[int, str]], pos: int, context: int) -> Planes:
    """The planes of ``rows[pos]`` in a series' z-ordered (id, path) rows."""
    around = [
        rows[pos] if j is None else rows[j] for j in context_positions(pos, len(rows), context)
    ]
    picks = [*around[:context], rows[pos], *around[context:]]
    return Planes(tuple(i for i, _ in picks), tuple(p for _, p in picks))


def _series_rows(session: Session, series_ids: set[int]) -> dict[int, list[tuple[int, str]]]:
    """The usable instances of each series with a z, as (id, path) in z order."""
    rows = session.execute(
        select(Instance.series_id, Instance.id, Instance.path)
        .where(
            Instance.series_id.in_(series_ids),
            Instance.status.in_(_USABLE),
            Instance.path.is_not(None),
            Instance.z.is_not(None),
        )
        .order_by(Instance.series_id, Instance.z, Instance.id)
    ).all()
    out: dict[int, list[tuple[int, str]]] = {}
    for series_id, instance_id, path in rows:  # the path is not NULL (the WHERE above)
        out.setdefault(series_id, []).append((instance_id, str(path)))
    return out


def planes(session: Session, instance_ids: Sequence[int], context: int) -> dict[int, Planes]:
    """The planes of each instance in ``instance_ids`` with the neighbours stored now."""
    targets = session.execute(
        select(Instance.id, Instance.series_id, Instance.path, Instance.z).where(
            Instance.id.in_(list(instance_ids))
        )
    ).all()
    by_series = _series_rows(session, {t.series_id for t in targets})
    positions = {
        series_id: {instance_id: pos for pos, (instance_id, _) in enumerate(rows)}
        for series_id, rows in by_series.items()
    }
    out: dict[int, Planes] = {}
    for t in targets:
        rows = by_series.get(t.series_id, [])
        position = positions.get(t.series_id, {})
        if t.z is None or t.id not in position:  # no place in z order: the slice alone
            out[t.id] = Planes((t.id,) * (2 * context + 1), (t.path or "",) * (2 * context + 1))
        else:
            out[t.id] = _planes_of(rows, position[t.id], context)
    return out


def stale(session: Session, study_id: int, model_id: str, context: int) -> list[int]:
    """Scored instances of the study whose prediction by ``model_id`` was made with other
    neighbours than the series has now (they must be scored again before a result)."""
    scored = session.execute(
        select(Instance.id, Prediction.context)
        .join(Prediction, Prediction.instance_id == Instance.id)
        .where(
            Instance.study_id == study_id,
            Instance.status == InstanceStatus.DONE,
            Prediction.model_id == model_id,
        )
    ).all()
    if not scored:
        return []
    now = planes(session, [instance_id for instance_id, _ in scored], context)
    return sorted(i for i, seen in scored if i in now and now[i].encoded != seen)
