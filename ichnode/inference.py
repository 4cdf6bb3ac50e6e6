"""Scoring slices with a checkpoint: the path shared by ``predict``, ``evaluate`` and workers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import Dataset

from ichnode.device import resolve_device
from ichnode.errors import DeviceError, IchnodeError
from ichnode.imaging import preprocess, read
from ichnode.model import Checkpoint, demo_model_path, load_checkpoint, predict_proba
from ichnode.subtypes import ANY, SUBTYPES


@dataclass
class SlicePrediction:
    """Calibrated probabilities of one slice, with the subtypes over their thresholds."""

    probabilities: dict[str, float]
    predicted: list[str]

    @property
    def top_subtype(self) -> str:
        """The most probable hemorrhage subtype (never ``any``), as the seed reported."""
        return max((s for s in SUBTYPES if s != ANY), key=self.probabilities.__getitem__)


class Predictor:
    """A loaded checkpoint on a device, scoring datasets in batches."""

    def __init__(
        self, model: str | Path | None = None, device: str = "auto", amp: bool = False
    ) -> None:
        self.device = resolve_device(device)
        if amp and self.device.type != "cuda":
            raise DeviceError(f"mixed precision (amp) needs a CUDA device; got {self.device}")
        self.amp = amp
        self.checkpoint: Checkpoint = load_checkpoint(model or demo_model_path(), self.device)

    @property
    def model_id(self) -> str:
        return self.checkpoint.model_id

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(N, 6)`` for a preprocessed batch."""
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            return predict_proba(self.checkpoint, batch)

    def label(self, probs: np.ndarray) -> SlicePrediction:
        """Name one row of probabilities and apply the checkpoint's thresholds."""
        named = {name: float(p) for name, p in zip(SUBTYPES, probs, strict=True)}
        thresholds = self.checkpoint.thresholds
        return SlicePrediction(named, [n for n in SUBTYPES if named[n] >= thresholds[n]])

    def predict_datasets(self, datasets: Sequence[Dataset]) -> list[SlicePrediction]:
        """Preprocess with the checkpoint's spec and score, one forward pass."""
        if not datasets:
            return []
        batch = np.stack([preprocess(ds, self.checkpoint.spec) for ds in datasets])
        return [self.label(row) for row in self.scores(batch)]

    def predict_files(self, paths: Sequence[str | Path]) -> list[SlicePrediction | IchnodeError]:
        """Score files; a file that cannot be read or preprocessed yields its error instead."""
        results: list[SlicePrediction | IchnodeError] = []
        for path in paths:
            try:
                results.append(self.predict_datasets([read(path)])[0])
            except IchnodeError as exc:
                results.append(exc)
        return results
