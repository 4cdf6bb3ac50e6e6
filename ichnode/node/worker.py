"""The worker loop: claim a batch, decode and preprocess, one forward pass, write predictions.

Runs as threads inside ``ichnode serve`` or alone as ``ichnode worker`` against a shared
database and store. The loop holds no SQL: claims and completions go through
:mod:`ichnode.db.queue`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from pydicom.dataset import Dataset
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from ichnode.config import Settings
from ichnode.db import context, queue
from ichnode.errors import IchnodeError
from ichnode.imaging import PreprocessSpec, context_input, preprocess, preprocess_hu, read
from ichnode.inference import Predictor
from ichnode.node.loop import run_loop
from ichnode.store import Store
from ichnode.study import encode_embedding

log = logging.getLogger(__name__)

#: Seconds to back off after a database error before trying again.
DB_RETRY_SECONDS = 2.0
#: Seconds without a newly queued instance that count as a pause in arrivals.
ARRIVAL_QUIET = 0.25


def default_worker_id(role: str = "worker", index: int | None = None) -> str:
    """``host:role:pid[:index]`` -- unique per live worker, readable in the database."""
    suffix = f":{index}" if index is not None else ""
    return f"{socket.gethostname()}:{role}:{os.getpid()}{suffix}"


def defer_seconds(settings: Settings) -> float:
    """How long a worker waits for a pause in arrivals before scoring a backlog:
    ``inference_defer``, and at most half of ``stable_seconds``, so that a node set up for
    quick results (a short ``stable_seconds``) does not leave its slices unscored until the
    study is stable."""
    return min(settings.inference_defer, settings.stable_seconds / 2)


class Worker:
    """Scores queued instances with one :class:`~ichnode.inference.Predictor`."""

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        sessions: sessionmaker,
        store: Store,
        predictor: Predictor,
        worker_id: str,
        wake: threading.Event,
    ) -> Worker:
        """A worker with the node's batch size and lease: the node's threads and the
        inference process's make theirs here."""
        return cls(
            sessions,
            store,
            predictor,
            batch_size=settings.batch_size,
            lease_seconds=settings.lease_seconds,
            worker_id=worker_id,
            wake=wake,
            defer_seconds=defer_seconds(settings),
        )

    def __init__(
        self,
        sessions: sessionmaker,
        store: Store,
        predictor: Predictor,
        *,
        batch_size: int = 16,
        lease_seconds: float = 120.0,
        worker_id: str | None = None,
        wake: threading.Event | None = None,
        idle_wait: float = 1.0,
        decode_threads: int = 2,
        defer_seconds: float = 0.0,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.predictor = predictor
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.worker_id = worker_id or default_worker_id()
        self.wake = wake or threading.Event()
        self.idle_wait = idle_wait
        self._pool = ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="decode")
        self.defer_seconds = defer_seconds
        self._draining = False  # scoring a backlog: no deferral until the queue is empty
        self._stop: threading.Event | None = None
        self.scored = 0
        self.failed = 0

    def _read(
        self,
        path: str | None,
        spec: PreprocessSpec,
        to_input: Callable[[Dataset, PreprocessSpec], np.ndarray],
    ) -> np.ndarray:
        """``to_input`` of a stored file, with one clear error when it cannot be read."""
        if not path:
            raise IchnodeError("no stored file")
        try:
            return to_input(read(self.store.path(path)), spec)
        except (OSError, ValueError) as exc:
            raise IchnodeError(f"cannot read stored file: {exc}") from None

    def _load_context(
        self, claimed: list[tuple[int, str, str | None]], planes: dict, spec: PreprocessSpec
    ) -> list:
        """Futures of each claimed slice's 2.5-D input; each file of the batch is read once,
        and an unreadable neighbour is stood in for by the slice (as at a series' end)."""
        paths = {p for instance_id, _, _ in claimed for p in planes[instance_id].paths}
        hu = {p: self._pool.submit(self._read, p, spec, preprocess_hu) for p in paths}

        def neighbour(path: str) -> np.ndarray | None:
            return None if hu[path].exception() is not None else hu[path].result()

        def assemble(instance_id: int) -> np.ndarray:
            k, files = spec.context, planes[instance_id].paths
            centre = hu[files[k]].result()  # the slice's own read error fails it
            around = [neighbour(f) for f in files[:k] + files[k + 1 :]]
            return context_input(centre, around, spec)

        # Queued after every read: the pool takes work in order, so an assemble waits only for
        # reads already running, never for one queued behind it.
        return [self._pool.submit(assemble, instance_id) for instance_id, _, _ in claimed]

    def run_once(self) -> int:
        """Claim and score one batch; returns how many instances were claimed.

        The whole batch uses the checkpoint served when it starts (a reloaded model takes
        over at the next batch)."""
        ckpt = self.predictor.checkpoint
        k = ckpt.spec.context
        with self.sessions.begin() as session:
            claimed = [
                (i.id, str(i.claim_token), i.path)  # a claimed instance has its token
                for i in queue.claim(session, self.worker_id, self.batch_size, self.lease_seconds)
            ]
            planes = context.planes(session, [c[0] for c in claimed], k) if claimed and k else {}
        if not claimed:
            return 0
        if k:
            futures = self._load_context(claimed, planes, ckpt.spec)
        else:
            futures = [
                self._pool.submit(self._read, path, ckpt.spec, preprocess) for _, _, path in claimed
            ]
        ready: list[tuple[int, str]] = []
        arrays: list[np.ndarray] = []
        failures: list[tuple[int, str, str]] = []
        for (instance_id, token, _), fut in zip(claimed, futures, strict=True):
            try:
                arrays.append(fut.result())
                ready.append((instance_id, token))
            except IchnodeError as exc:
                failures.append((instance_id, token, str(exc)))
            except Exception as exc:  # noqa: BLE001 - a bad slice must not stop the worker
                failures.append((instance_id, token, f"{type(exc).__name__}: {exc}"))
        if arrays:
            embeddings, probs = self.predictor.embed_scores(np.stack(arrays), ckpt)
        else:
            embeddings, probs = np.empty((0, 0)), np.empty((0, 6))
        model_id = ckpt.model_id
        completions = [
            queue.Completion(
                instance_id,
                token,
                model_id,
                [float(p) for p in row],
                encode_embedding(emb),
                planes[instance_id].encoded if k else None,
            )
            for (instance_id, token), row, emb in zip(ready, probs, embeddings, strict=True)
        ]
        with self.sessions.begin() as session:
            self.scored += len(queue.complete_many(session, completions))
            for instance_id, token, reason in failures:
                log.warning("instance %d failed: %s", instance_id, reason)
                if queue.fail(session, instance_id, token, reason[:500]):
                    self.failed += 1
        return len(claimed)

    def step(self) -> float:
        """One batch for :func:`~ichnode.node.loop.run_loop`: 0 after a batch (more may be
        queued), ``idle_wait`` when the queue was empty."""
        try:
            self.await_pause()
            if self.run_once():
                return 0.0
            self._draining = False  # the queue is empty: the next arrivals defer again
            return self.idle_wait
        except SQLAlchemyError:
            raise  # the loop logs it and retries
        except Exception:  # noqa: BLE001 - a failed batch (GPU out of memory...) must not end the worker
            # The batch's claims stay until their lease ends; each claim counts as an
            # attempt, so a batch that always fails ends FAILED ("gave up after N attempts").
            log.exception("worker %s: batch failed, retrying later", self.worker_id)
            return DB_RETRY_SECONDS

    def await_pause(self) -> None:
        """Let the receivers go first: before a backlog is scored, wait while instances keep
        arriving (``wake`` set again within :data:`ARRIVAL_QUIET` seconds), for at most
        ``defer_seconds``; then score until the queue is empty, without waiting again.

        On a host whose cores the receivers and the model share, scoring while a study
        arrives slows the receiving (docs/performance.md); the study result waits
        ``stable_seconds`` after the last instance anyway, so scoring the backlog once the
        sender pauses delays no result while it takes less than that.
        """
        if self.defer_seconds <= 0 or self._draining:
            return
        now = time.monotonic()
        deadline = now + self.defer_seconds
        while now < deadline:
            if self._stop is not None and self._stop.is_set():
                break
            self.wake.clear()
            if not self.wake.wait(min(ARRIVAL_QUIET, deadline - now)):
                break  # no instance queued for ARRIVAL_QUIET seconds: the sender paused
            now = time.monotonic()
        self._draining = True

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set; sleeps on ``wake`` when the queue is empty."""
        log.info("worker %s started (model %s)", self.worker_id, self.predictor.model_id)
        self._stop = stop
        run_loop(
            f"worker {self.worker_id}",
            self.step,
            stop,
            wake=self.wake,
            retry_seconds=DB_RETRY_SECONDS,
        )
        self.release()
        self._pool.shutdown(wait=True)
        log.info(
            "worker %s stopped: %d scored, %d failed", self.worker_id, self.scored, self.failed
        )

    def release(self) -> None:
        """Give back anything this worker still holds (graceful shutdown)."""
        try:
            with self.sessions.begin() as session:
                queue.release(session, self.worker_id)
        except SQLAlchemyError:
            log.warning("worker %s: could not release leases; they will expire", self.worker_id)
