"""The one shape of the node's background loops: run a step, wait, retry, wake.

The worker, the monitor, the reporter, the outbox sender, the notifier, the audit pruner and
the model watcher each run :func:`run_loop` in a thread; each loop that takes work from the
database claims it with one ``FOR UPDATE SKIP LOCKED`` statement under a lease and a token
(:mod:`ichnode.db.queue`, :mod:`~ichnode.db.results`, :mod:`~ichnode.db.reports`,
:mod:`~ichnode.db.delivery`, :mod:`~ichnode.db.notifications`; the pruner's ``DELETE`` needs
no claim). A step does one pass of work and says how long to wait before
the next (0: go again at once, more may be waiting). A database error is one log line and a
pause, anything else is logged with its traceback and a pause: no failure ends a loop, so a
database restart or one bad item never stops the node. Setting ``wake`` cuts a wait short
(new work arrived); setting ``stop`` ends the loop after the step in progress.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from ichnode.db.engine import error_reason

log = logging.getLogger(__name__)


def run_loop(
    name: str,
    step: Callable[[], float | None],
    stop: threading.Event,
    *,
    wake: threading.Event | None = None,
    retry_seconds: float,
    idle_seconds: float | None = None,
) -> None:
    """Call ``step`` until ``stop`` is set.

    ``step`` returns the seconds to wait before the next call (None: ``idle_seconds``). After
    a failure the wait is ``retry_seconds``. The wait ends early when ``wake`` is set (the
    owner sets ``wake`` too when it sets ``stop``); without ``wake`` it waits on ``stop``.
    ``wake`` is cleared before each step, so work signalled during a step is not missed.
    """
    waiter = wake or stop
    while not stop.is_set():
        if wake is not None:
            wake.clear()
        try:
            pause = step()
            if pause is None:
                pause = idle_seconds if idle_seconds is not None else retry_seconds
        except SQLAlchemyError as exc:
            log.error("%s: database error, retrying: %s", name, error_reason(exc))
            pause = retry_seconds
        except Exception:  # noqa: BLE001 - a loop must outlive any one bad pass
            log.exception("%s: unexpected error, retrying", name)
            pause = retry_seconds
        if pause > 0 and not stop.is_set():
            waiter.wait(pause)
