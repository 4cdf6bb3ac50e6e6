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
from ichnode.imaging import preprocess
from ichnode.model import (
    Checkpoint,
    demo_model_path,
    embed,
    head,
    load_checkpoint,
    predict_proba,
)
from ichnode.study import StudyScores, order_by_z, run_study_head
from ichnode.subtypes import ANY, SUBTYPES
from ichnode.triage import decide


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

    def warm_up(self) -> None:
        """Score one blank batch: the first forward pass pays one-time costs (allocator,
        kernel selection) that should not fall on the first study a node receives."""
        spec = self.checkpoint.spec
        self.embed_scores(np.zeros((1, spec.channels, spec.size, spec.size), dtype=np.float32))

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(N, 6)`` for a preprocessed batch."""
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            return predict_proba(self.checkpoint, batch)

    def embed_scores(
        self, batch: np.ndarray, checkpoint: Checkpoint | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Slice embeddings ``(N, D)`` (float32) and calibrated probabilities ``(N, 6)`` of a
        preprocessed batch, in one forward pass; by ``checkpoint`` when given (a worker's
        batch keeps the model it started with, whatever a reload swaps in meanwhile)."""
        return embed_and_score(checkpoint or self.checkpoint, batch, self.amp)

    def label(self, probs: np.ndarray) -> SlicePrediction:
        """Name one row of probabilities and apply the checkpoint's slice thresholds."""
        named = {name: float(p) for name, p in zip(SUBTYPES, probs, strict=True)}
        calls = decide(named, self.checkpoint.thresholds).calls
        return SlicePrediction(named, [n for n in SUBTYPES if calls[n]])

    def predict_datasets(self, datasets: Sequence[Dataset]) -> list[SlicePrediction]:
        """Preprocess with the checkpoint's spec and score, one forward pass."""
        if not datasets:
            return []
        batch = np.stack([preprocess(ds, self.checkpoint.spec) for ds in datasets])
        return [self.label(row) for row in self.scores(batch)]


@torch.inference_mode()
def embed_and_score(
    ckpt: Checkpoint, batch: np.ndarray, amp: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``(N, D)`` and calibrated slice probabilities ``(N, 6)`` of a batch."""
    ckpt.model.eval()
    param = next(ckpt.model.parameters())
    x = torch.as_tensor(batch).to(device=param.device, dtype=param.dtype)
    with torch.autocast(param.device.type, dtype=torch.float16, enabled=amp):
        emb = embed(ckpt.model, x)
        logits = head(ckpt.model)(emb)
    probs = ckpt.calibration.apply(logits.float())
    return emb.float().cpu().numpy(), probs.cpu().numpy()


@torch.inference_mode()
def slice_logits(ckpt: Checkpoint, embeddings: np.ndarray) -> np.ndarray:
    """Raw slice logits ``(N, 6)`` from stored embeddings (the slice network's last layer)."""
    layer = head(ckpt.model)
    param = next(layer.parameters())
    emb = torch.as_tensor(np.asarray(embeddings), dtype=param.dtype, device=param.device)
    return layer(emb).float().cpu().numpy()


def score_study(ckpt: Checkpoint, embeddings: np.ndarray, z: Sequence[float | None]) -> StudyScores:
    """Calibrated slice and study probabilities of one study from its slices' embeddings.

    ``embeddings`` ``(L, D)`` and ``z`` are in any order; the study model reads them in z
    order and the slice probabilities come back in the order given. Without a study model the
    slices keep their own probabilities and the study's are their maximum.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if len(embeddings) == 0:
        raise IchnodeError("a study needs at least one scored slice")
    logits = slice_logits(ckpt, embeddings)
    if ckpt.study is None:
        probs = ckpt.calibration.apply_numpy(logits)
        return StudyScores(slices=probs, study=probs.max(axis=0), refined=False)
    order = order_by_z(list(z))
    refined, study = run_study_head(ckpt.study, embeddings[order], logits[order])
    slices = np.empty_like(refined, dtype=np.float64)
    slices[order] = ckpt.study.slice_calibration.apply_numpy(refined)
    return StudyScores(
        slices=slices, study=ckpt.study.study_calibration.apply_numpy(study), refined=True
    )
