"""``ichnode serve``'s workers in a child process (``inference_process = true``).

Scoring is CPU-bound Python around torch (decoding, preprocessing, batching): in the node's
own process it competes with the C-STORE handler for the GIL, and the receiver slows while
the model runs (measured in docs/performance.md). In a child process it competes only for
cores. The child is the same :class:`~ichnode.node.worker.Worker` loop as the in-process
threads, with the same worker ids (so a restart reclaims their leases either way), its own
database engine and its own copy of the model; the receivers wake it through a
:class:`~ichnode.node.supervise.Wakeup` when they queue an instance, as they wake its
threads. Stopping the node stops the child (the workers give back what they hold), and a
child that dies is restarted. It is the default (``inference_process = true``): the
receiver's speed then does not depend on how busy the model is.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, cast

from ichnode.config import Settings
from ichnode.node.supervise import CONTEXT, Supervised, Wakeup, child_stop, wait_until

if TYPE_CHECKING:
    from multiprocessing.synchronize import Semaphore as SemaphoreType

log = logging.getLogger(__name__)


def run_workers(
    settings: Settings,
    worker_ids: list[str],
    wake: Wakeup,
    loaded: SemaphoreType,
    parent_pid: int,
) -> None:
    """The child's body: load the model (``loaded`` is released once it has scored a first,
    blank batch), run one worker thread per id until told to stop."""
    stop = child_stop(parent_pid)
    if settings.inference_nice and hasattr(os, "nice"):
        os.nice(settings.inference_nice)
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
    predictor.warm_up()
    loaded.release()
    store = Store(settings.store, settings.min_free_bytes)
    # The Worker loop waits on threading.Event's interface; a Wakeup has it.
    wake_t = cast(threading.Event, wake)
    threads = []
    for i, wid in enumerate(worker_ids):
        worker = Worker.from_settings(settings, sessions, store, predictor, wid, wake_t)
        threads.append(threading.Thread(target=worker.run, args=(stop,), name=f"worker-{i + 1}"))
    if settings.model is not None and settings.model_reload:  # the same swap as in-process
        watcher = ModelWatcher(settings.model, predictor)
        threads.append(threading.Thread(target=watcher.run, args=(stop,), name="model-watcher"))
    for thread in threads:
        thread.start()
    wait_until(stop)
    wake.set()  # the workers wait on wake: let them see stop now
    for thread in threads:
        thread.join()
    engine.dispose()


class InferenceProcess(Supervised):
    """The child process that runs the node's workers; restarted if it dies."""

    def __init__(self, settings: Settings, worker_ids: list[str]) -> None:
        self.settings = settings
        self.worker_ids = worker_ids
        #: Set by whoever queues an instance (the receivers, in this process or their own).
        self.wake = Wakeup()
        #: Released by the child once its model is loaded and has run once (a semaphore,
        #: like :class:`Wakeup`: a child killed mid-call cannot leave a lock held).
        self.loaded = CONTEXT.Semaphore(0)
        self._has_loaded = False
        super().__init__(
            "ichnode-inference", run_workers, (settings, worker_ids, self.wake, self.loaded)
        )

    def wait_loaded(self, timeout: float) -> bool:
        """Wait until the child has loaded its model; False after ``timeout`` s or when the
        child has died (the watcher restarts it; the node runs on and scores later)."""
        deadline = time.monotonic() + timeout
        while not self._has_loaded:
            if self.loaded.acquire(timeout=0.2):
                self._has_loaded = True
                break
            process = self.process
            if time.monotonic() > deadline or (process is not None and not process.is_alive()):
                return False
        return True

    def notify(self) -> None:
        """An instance was queued: wake the workers."""
        self.wake.set()

    def stop(self) -> None:
        """Ask the workers to finish and give back their claims; kill the child if it hangs."""
        self.request_stop()
        self.wake.set()
        self.join()
