"""``ichnode serve``'s workers in a child process (``inference_process = true``).

Scoring is CPU-bound Python around torch (decoding, preprocessing, batching): in the node's
own process it competes with the C-STORE handler for the GIL, and the receiver slows while
the model runs (measured in docs/performance.md). In a child process it competes only for
cores. The child is the same :class:`~ichnode.node.worker.Worker` loop as the in-process
threads, with the same worker ids (so a restart reclaims their leases either way), its own
database engine and its own copy of the model; the receiver wakes it through a
multiprocessing event when it queues an instance, as it wakes its threads. Stopping the node
stops the child (the workers give back what they hold), and a child that dies is restarted.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as ProcessEvent
from typing import cast

from ichnode.config import Settings

log = logging.getLogger(__name__)

#: Seconds a child is given to finish its batch and give back its claims before it is killed.
STOP_TIMEOUT = 30.0
#: Seconds between checks that the child is alive.
WATCH_SECONDS = 1.0


def run_workers(
    settings: Settings, worker_ids: list[str], wake: ProcessEvent, stop: ProcessEvent
) -> None:
    """The child's body: load the model, run one worker thread per id until ``stop``."""
    import torch

    from ichnode.db.session import open_database
    from ichnode.inference import Predictor
    from ichnode.node.reload import ModelWatcher
    from ichnode.node.worker import Worker
    from ichnode.store import Store

    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    engine, sessions = open_database(settings, create=False)
    predictor = Predictor(settings.model, settings.device, amp=settings.amp)
    store = Store(settings.store, settings.min_free_bytes)
    # The Worker loop waits on threading.Event's interface; a process event has it.
    stop_t, wake_t = cast(threading.Event, stop), cast(threading.Event, wake)
    threads = []
    for i, wid in enumerate(worker_ids):
        worker = Worker(
            sessions,
            store,
            predictor,
            batch_size=settings.batch_size,
            lease_seconds=settings.lease_seconds,
            worker_id=wid,
            wake=wake_t,
        )
        threads.append(threading.Thread(target=worker.run, args=(stop_t,), name=f"worker-{i + 1}"))
    if settings.model is not None and settings.model_reload:  # the same swap as in-process
        watcher = ModelWatcher(settings.model, predictor)
        threads.append(threading.Thread(target=watcher.run, args=(stop_t,), name="model-watcher"))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()


class InferenceProcess:
    """The child process that runs the node's workers; restarted if it dies."""

    def __init__(self, settings: Settings, worker_ids: list[str]) -> None:
        self.settings = settings
        self.worker_ids = worker_ids
        # spawn: a fresh interpreter, not a fork of a process with threads and open sockets.
        self._ctx = multiprocessing.get_context("spawn")
        self.wake = self._ctx.Event()
        self._stop = self._ctx.Event()
        self._stopping = threading.Event()
        self.process: BaseProcess | None = None
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        self._launch()
        self._watcher = threading.Thread(target=self._watch, name="inference-watch", daemon=True)
        self._watcher.start()

    def _launch(self) -> None:
        self.process = self._ctx.Process(
            target=run_workers,
            args=(self.settings, self.worker_ids, self.wake, self._stop),
            name="ichnode-inference",
            daemon=True,
        )
        self.process.start()
        log.info(
            "inference process %s started (%d workers)", self.process.pid, len(self.worker_ids)
        )

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_SECONDS):
            process = self.process
            if process is not None and not process.is_alive() and not self._stopping.is_set():
                log.error("inference process exited (code %s): restarting it", process.exitcode)
                self._launch()

    def notify(self) -> None:
        """An instance was queued: wake the workers."""
        self.wake.set()

    def stop(self) -> None:
        """Ask the workers to finish and give back their claims; kill the child if it hangs."""
        self._stopping.set()
        self._stop.set()
        self.wake.set()
        process = self.process
        if process is None:
            return
        process.join(STOP_TIMEOUT)
        if process.is_alive():
            log.error("inference process did not stop in %.0f s: killing it", STOP_TIMEOUT)
            process.kill()
            process.join()
