"""The study monitor: when a study has stopped arriving and every slice is done, result it.

A study is stable when nothing arrived for ``stable_seconds`` and none of its instances is
queued or claimed. The monitor claims each stable study under a lease
(:func:`ichnode.db.results.claim_stable`) before computing it, so monitors of several nodes on
one database share the studies, and a study whose monitor died is resulted by another. Its
result (the study model's probabilities over the slices in z order, or the maximum per subtype
over the scored slices for a slice-only checkpoint; the key slice with the highest ``any``; the
flag from :func:`ichnode.triage.decide` at the study-level thresholds) is stored as a new
version; instances arriving later reopen the study and a later pass writes the next version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ichnode.db import context, notifications, queue, refine, results
from ichnode.db.models import InstanceStatus, Prediction, StudyResult
from ichnode.node.loop import run_loop
from ichnode.store import uid_hash
from ichnode.study import StudyScores, decode_embedding
from ichnode.subtypes import ANY, SUBTYPES
from ichnode.triage import decide

log = logging.getLogger(__name__)

#: How long a claimed study stays with its monitor (a result takes well under a second; a
#: monitor that died mid-result leaves the study to another after this).
LEASE_SECONDS = 60.0


@dataclass(frozen=True)
class ResultPolicy:
    """How slices become a study result.

    ``thresholds`` are the study-level ones the flag is decided with
    (:attr:`ichnode.model.Checkpoint.decision_thresholds`); ``scorer`` runs the checkpoint's
    study model (:func:`ichnode.inference.score_study`) on the slices' embeddings. Without a
    scorer, or when a slice has no embedding of this model, the study's probabilities are the
    maximum over its slices. ``context`` is the checkpoint's 2.5-D context
    (:attr:`ichnode.imaging.PreprocessSpec.context`): slices scored before a neighbour arrived
    are scored again before the study is resulted.

    ``stored`` says whether a slice's stored file is still there (its path relative to the
    store). Slices scored by another model than ``model_id`` (a swap came in between; with
    serve's inference process the child and the monitor each see a swapped file at their own
    poll) are scored again before the study is resulted when their file is there, so a result
    is one model's; a slice whose file is gone keeps the score it has.
    """

    thresholds: dict[str, float]
    model_id: str
    scorer: Callable[[np.ndarray, list[float | None]], StudyScores] | None = None
    context: int = 0
    stored: Callable[[str], bool] | None = None


def _study_scores(
    scored: list[tuple[refine.StudySlice, Prediction]], policy: ResultPolicy
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Slice probabilities ``(L, 6)``, study probabilities ``(6,)`` and whether the study
    model refined them."""
    stored = np.array([[p.probabilities[n] for n in SUBTYPES] for _, p in scored])
    embeddings = [p.embedding for _, p in scored if p.model_id == policy.model_id]
    usable = [e for e in embeddings if e is not None]
    if policy.scorer is None or len(usable) < len(scored):
        return stored, stored.max(axis=0), False
    stacked = np.stack([decode_embedding(e) for e in usable])
    scores = policy.scorer(stacked, [s.z for s, _ in scored])
    return np.asarray(scores.slices), np.asarray(scores.study), scores.refined


def compute_result(
    session: Session, claimed: results.ClaimedStudy, policy: ResultPolicy
) -> StudyResult | None:
    """Write the next result version of a claimed stable study; None if it changed meanwhile
    (or the claim lapsed and another monitor took it).

    The study model (when the policy has one) refines the slices' probabilities, which are
    stored as the slice results of this version; the flag and the subtypes it names come from
    :func:`ichnode.triage.decide` on the study's probabilities.
    """
    study_id = claimed.study_id
    study = results.receiving_study(session, study_id)
    if study is None:
        return None
    if policy.context:
        outdated = context.stale(session, study_id, policy.model_id, policy.context)
        if outdated:  # scored before a neighbour arrived: score them again, result then
            queue.requeue(session, outdated)
            log.info(
                "study %s: %d slices scored again with the neighbours that arrived since",
                uid_hash(study.study_instance_uid),
                len(outdated),
            )
            return None
    seen_last = study.last_received_at
    slices = refine.study_slices(session, study_id)
    counts = dict.fromkeys(InstanceStatus, 0)
    for s in slices:
        counts[s.status] += 1
    scored = [(s, s.prediction) for s in slices if s.prediction is not None]
    other_model = sorted(
        s.instance_id
        for s, p in scored
        if p.model_id != policy.model_id
        and s.path is not None
        and policy.stored is not None
        and policy.stored(s.path)
    )
    if other_model:  # scored before a model swap: one result is one model's, score them again
        queue.requeue(session, other_model)
        log.info(
            "study %s: %d slices scored again by %s, the model served now",
            uid_hash(study.study_instance_uid),
            len(other_model),
            policy.model_id,
        )
        return None
    version = study.result_version + 1
    key_instance: int | None = None
    decision = None
    refined = False
    if scored:
        slice_probs, study_probs, refined = _study_scores(scored, policy)
        key_instance = scored[int(np.argmax(slice_probs[:, SUBTYPES.index(ANY)]))][0].instance_id
        probs = dict(zip(SUBTYPES, (float(v) for v in study_probs), strict=True))
        decision = decide(probs, policy.thresholds)
    result = StudyResult(
        study_id=study_id,
        version=version,
        model_id=policy.model_id,
        flagged=bool(decision and decision.flagged),
        flagged_subtypes=",".join(decision.labels) if decision else "",
        key_instance_id=key_instance,
        n_instances=len(slices),
        n_scored=len(scored),
        n_failed=counts[InstanceStatus.FAILED],
        n_skipped=counts[InstanceStatus.SKIPPED],
        created_at=datetime.now(UTC),
    )
    if scored:  # with no scored slice the probabilities stay NULL
        result.set_probabilities([probs[n] for n in SUBTYPES])
    # Optimistic guard: if a slice arrived since we read the study, leave it receiving.
    if not results.close_study(session, claimed, seen_last, version):
        return None
    if refined:
        refine.store_refined(
            session,
            [(p.id, row) for (_, p), row in zip(scored, slice_probs, strict=True)],
            version,
        )
    return results.add_result(session, result)


class Monitor:
    """Claims stable studies and results them; calls ``on_result`` after each commit."""

    def __init__(
        self,
        sessions: sessionmaker,
        policy: ResultPolicy | Callable[[], ResultPolicy],
        stable_seconds: float,
        on_result: Callable[[int], None] | None = None,
        interval: float = 0.25,
        receivers: Sequence[notifications.Wanted] = (),
    ) -> None:
        self.sessions = sessions
        #: The policy now (a callable: the node's model may be reloaded while it runs).
        self.policy: Callable[[], ResultPolicy] = policy if callable(policy) else (lambda: policy)
        self.stable_seconds = stable_seconds
        self.on_result = on_result or (lambda result_id: None)
        self.interval = interval
        #: ``[[notify]]`` receivers: each new version queues their notifications with it.
        self.receivers = tuple(receivers)
        #: study id -> its last_received_at when resulting it raised: skipped until it changes
        self._failed: dict[int, datetime] = {}

    def run_once(self, now: datetime | None = None) -> list[int]:
        """Claim and result every study that is stable now, one at a time; returns the new
        result ids.

        A study whose result cannot be computed (an unexpected error) is logged once, handed
        back and skipped until more of it arrives, so it holds up no other study. Each pass
        first looks without writing, so an idle node takes no write lock every poll.
        """
        now = now or datetime.now(UTC)
        before = now - timedelta(seconds=self.stable_seconds)
        with self.sessions() as session:
            if self._failed:  # forget the failed studies that received more since
                seen = results.last_received(session, list(self._failed))
                self._failed = {k: v for k, v in self._failed.items() if seen.get(k) == v}
            waiting = set(results.stable_studies(session, before, now)) - set(self._failed)
        done: list[int] = []
        tried: set[int] = set(self._failed)
        while waiting:
            with self.sessions.begin() as session:
                claimed = results.claim_stable(session, before, LEASE_SECONDS, skip=tried, now=now)
            if not claimed:
                break
            [item] = claimed
            tried.add(item.study_id)
            result_id = self._attempt(item)
            if result_id is not None:
                done.append(result_id)
                self.on_result(result_id)
        return done

    def _attempt(self, item: results.ClaimedStudy) -> int | None:
        """Result one claimed study; on an unexpected error hand it back and skip it."""
        try:
            return self._result(item)
        except SQLAlchemyError:
            self._release(item)
            raise  # the database, not the study: run() retries
        except Exception:  # noqa: BLE001 - one bad study must not stop the others
            log.exception("monitor: study %d could not be resulted; skipped", item.study_id)
            with self.sessions() as session:
                last = results.last_received(session, [item.study_id]).get(item.study_id)
            if last is not None:
                self._failed[item.study_id] = last
            self._release(item)
            return None

    def _release(self, item: results.ClaimedStudy) -> None:
        try:
            with self.sessions.begin() as session:
                results.release_study(session, item)
        except SQLAlchemyError:  # the claim lapses by itself
            log.warning("monitor: claim on study %d not handed back", item.study_id)

    def _result(self, item: results.ClaimedStudy) -> int | None:
        """Compute and commit the study's next result version; its id, or None (the study
        changed meanwhile: handed back for a later pass)."""
        study_id = item.study_id
        with self.sessions.begin() as session:
            result = compute_result(session, item, self.policy())
            if result is None:
                results.release_study(session, item)
                return None
            notifications.enqueue(session, result, self.receivers, result.created_at)
            uid = results.study_uid(session, study_id) or ""
            result_id = result.id
            log.info(
                "study %s resulted v%d: %d scored, %d failed, %d skipped, flagged: %s",
                uid_hash(uid),
                result.version,
                result.n_scored,
                result.n_failed,
                result.n_skipped,
                result.flagged_subtypes or "none",
            )
        return result_id

    def seconds_to_next(self, now: datetime) -> float | None:
        """Seconds until the next receiving study has been quiet for ``stable_seconds``."""
        with self.sessions() as session:
            due = results.next_stable_at(session, now, self.stable_seconds)
        return None if due is None else max(0.0, (due - now).total_seconds())

    def step(self) -> float:
        """One pass; waits ``interval``, or less when the next study becomes stable sooner."""
        self.run_once()
        due = self.seconds_to_next(datetime.now(UTC))
        return self.interval if due is None else min(self.interval, due + 0.001)

    def run(self, stop: threading.Event) -> None:
        """Poll every ``interval``, and wake exactly when the next study becomes stable."""
        run_loop("monitor", self.step, stop, retry_seconds=self.interval)
