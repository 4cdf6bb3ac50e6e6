"""The workers let the receivers go first: while instances keep arriving they wait for a
pause in arrivals, for at most ``inference_defer`` seconds, then score the backlog until the
queue is empty without waiting again."""

from __future__ import annotations

import threading
import time

from ichnode.config import Settings
from ichnode.node.worker import ARRIVAL_QUIET, Worker, defer_seconds


def _worker(defer: float) -> Worker:
    # The deferral needs only the wake-up event: no database, store or model is touched.
    return Worker(None, None, None, defer_seconds=defer)  # type: ignore[arg-type]


def _arrivals(wake: threading.Event, count: int, every: float) -> threading.Thread:
    """Set ``wake`` ``count`` times, ``every`` seconds apart (a sender queueing instances)."""

    def run() -> None:
        for _ in range(count):
            wake.set()
            time.sleep(every)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_scoring_waits_for_a_pause_in_arrivals():
    worker = _worker(defer=30.0)
    sender = _arrivals(worker.wake, count=16, every=ARRIVAL_QUIET / 10)
    worker.await_pause()
    # It returned before its 30 s bound: only once the arrivals had stopped.
    assert not sender.is_alive() and worker._draining


def test_a_steady_stream_defers_scoring_once_until_the_queue_is_empty():
    worker = _worker(defer=0.5)
    stream = _arrivals(worker.wake, count=200, every=ARRIVAL_QUIET / 5)
    worker.await_pause()  # the bound, not a pause, ended this wait
    assert stream.is_alive() and worker._draining
    worker.await_pause()  # scoring the backlog: no second wait while instances still arrive
    assert stream.is_alive()


def test_no_deferral_when_it_is_off():
    worker = _worker(defer=0.0)
    worker.wake.set()
    worker.await_pause()
    assert not worker._draining


def test_the_deferral_is_at_most_half_the_stable_window():
    assert defer_seconds(Settings(inference_defer=3.0, stable_seconds=10.0)) == 3.0
    assert defer_seconds(Settings(inference_defer=3.0, stable_seconds=1.0)) == 0.5
    assert defer_seconds(Settings(inference_defer=0.0, stable_seconds=10.0)) == 0.0
