"""Swap the served model without a restart: reload the checkpoint when its file is replaced.

An operator (or a fine-tuning job) installs a new model by renaming a new checkpoint over the
configured path (``mv new.safetensors model.safetensors``: atomic, so no reader sees half a
file). :class:`ModelWatcher` notices the file's new identity, loads and checks the new
checkpoint off the hot path, and only then swaps it in: workers take the new model from their
next batch, the monitor results with its study model and thresholds, reports and saliency use
it too. A file that does not load (a partial copy, another format) is logged once and the old
model keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from ichnode.errors import IchnodeError
from ichnode.inference import Predictor
from ichnode.model import Checkpoint, load_checkpoint
from ichnode.node.loop import run_loop

log = logging.getLogger(__name__)

#: Seconds between looks at the checkpoint file.
POLL_SECONDS = 2.0


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when the file is replaced or rewritten; None when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ModelWatcher:
    """Polls the checkpoint at ``path`` and swaps a new one into ``predictor``.

    ``on_swap`` is called with the new checkpoint after the swap (the node refreshes the
    copies it keeps for reports).
    """

    def __init__(
        self,
        path: str | Path,
        predictor: Predictor,
        on_swap: Callable[[Checkpoint], None] | None = None,
        interval: float = POLL_SECONDS,
    ) -> None:
        self.path = Path(path)
        self.predictor = predictor
        self.on_swap = on_swap or (lambda ckpt: None)
        self.interval = interval
        self._seen = _identity(self.path)

    def check(self) -> bool:
        """Look once; True when a new model was swapped in."""
        now = _identity(self.path)
        if now is None or now == self._seen:
            return False
        self._seen = now  # a file that fails to load is reported once, not every poll
        old = self.predictor.model_id
        try:
            ckpt = load_checkpoint(self.path, self.predictor.device)
        except (IchnodeError, OSError, ValueError) as exc:
            log.error(
                "model file %s changed but cannot be loaded (%s); still serving %s",
                self.path.name,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                old,
            )
            return False
        if ckpt.model_id == old:
            return False
        self.predictor.checkpoint = ckpt
        self.on_swap(ckpt)
        log.info("model reloaded from %s: %s replaces %s", self.path.name, ckpt.model_id, old)
        return True

    def step(self) -> float:
        """One look for :func:`~ichnode.node.loop.run_loop`; the next in ``interval``."""
        self.check()
        return self.interval

    def run(self, stop: threading.Event) -> None:
        """Check every ``interval`` until ``stop`` is set; no failure ends the loop."""
        run_loop("model watcher", self.step, stop, retry_seconds=self.interval)
