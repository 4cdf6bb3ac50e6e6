"""``ichnode worker``: one worker process against a shared database and store."""

from __future__ import annotations

import logging
import signal
import threading

import torch

from ichnode.config import Settings
from ichnode.db import queue
from ichnode.db.models import InstanceStatus
from ichnode.db.session import display_url, open_database
from ichnode.inference import Predictor
from ichnode.node.reload import ModelWatcher
from ichnode.node.worker import Worker, default_worker_id
from ichnode.store import Store

log = logging.getLogger(__name__)


def run_worker(settings: Settings, exit_when_empty: bool = False) -> int:
    """Score queued instances until SIGTERM/SIGINT (or until the queue is empty)."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    engine, sessions = open_database(settings, create=False)
    predictor = Predictor(settings.model, settings.device, amp=settings.amp)
    worker = Worker(
        sessions,
        Store(settings.store),
        predictor,
        batch_size=settings.batch_size,
        lease_seconds=settings.lease_seconds,
        worker_id=default_worker_id("worker"),
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(
        f"ichnode worker {worker.worker_id} ready: database {display_url(settings.db_url)}, "
        f"model {predictor.model_id} on {predictor.device}",
        flush=True,
    )
    if settings.model is not None and settings.model_reload:  # the same swap as `serve`
        watcher = ModelWatcher(settings.model, predictor)
        threading.Thread(
            target=watcher.run, args=(stop,), name="model-watcher", daemon=True
        ).start()
    try:
        if exit_when_empty:
            while not stop.is_set():
                if worker.run_once():
                    continue
                with sessions() as session:
                    depth = queue.depth(session)
                if not depth.get(InstanceStatus.QUEUED, 0):
                    break
                stop.wait(0.5)
            worker.release()
        else:
            worker.run(stop)
    finally:
        engine.dispose()
    log.info("worker %s done: %d scored, %d failed", worker.worker_id, worker.scored, worker.failed)
    return worker.scored
