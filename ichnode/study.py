"""The study-level model: a sequence model over a study's slices in z order.

What the RSNA 2019 winners did, in the small: the slice network turns each slice into an
embedding (its penultimate layer); a bidirectional GRU reads the embeddings of one study in
z order (with each slice's own logits and its relative height) and returns

- refined per-slice logits (the slice's logits plus a correction that sees its neighbours),
- study logits (masked max and mean of the GRU states), one per label.

It is trained as a second stage on the frozen slice network's embeddings (``ichnode train``),
stored in the same checkpoint as the slice network (weights prefixed ``study.``), and run by the
node when a study becomes stable, by ``ichnode evaluate`` and by ``ichnode predict`` on a
folder. A checkpoint without it stays valid: the study probability is then the maximum over the
slices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ichnode.errors import CheckpointError
from ichnode.subtypes import SUBTYPES

STUDY_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}

#: The default study architecture of ``ichnode train``.
DEFAULT_STUDY_ARCHITECTURE = "bigru"

#: Per-slice features besides the embedding: the slice's own logits and its relative height.
EXTRA_FEATURES = len(SUBTYPES) + 1


def register_study(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a study architecture constructible by name."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        STUDY_ARCHITECTURES[name] = cls
        return cls

    return wrap


def build_study(name: str, embed_dim: int, hidden: int = 64) -> nn.Module:
    """A fresh study model of a registered architecture."""
    try:
        factory = STUDY_ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(STUDY_ARCHITECTURES))
        raise CheckpointError(f"unknown study architecture {name!r}; known: {known}") from None
    return factory(embed_dim=embed_dim, hidden=hidden)


@register_study("bigru")
class StudyGRU(nn.Module):
    """Embeddings + slice logits + height → projection → BiGRU → slice and study heads."""

    def __init__(self, embed_dim: int, hidden: int = 64, num_classes: int = len(SUBTYPES)) -> None:
        super().__init__()
        #: Feature dropout on the inputs: the slice network's embeddings of its own training
        #: slices are cleaner than those of new slices, and the GRU must not trust them blindly.
        self.input_dropout = nn.Dropout(0.2)
        self.proj = nn.Sequential(
            nn.LayerNorm(embed_dim + EXTRA_FEATURES),
            nn.Linear(embed_dim + EXTRA_FEATURES, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
        )
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.slice_head = nn.Linear(2 * hidden, num_classes)
        self.study_head = nn.Linear(4 * hidden, num_classes)

    def forward(
        self, emb: torch.Tensor, slice_logits: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``emb`` (B, L, D), ``slice_logits`` (B, L, 6), ``lengths`` (B,) → refined slice
        logits (B, L, 6) and study logits (B, 6). Positions past a study's length are padding.
        """
        b, length, _ = emb.shape
        steps = torch.arange(length, device=emb.device)[None, :]
        valid = steps < lengths[:, None].to(emb.device)
        height = steps / (lengths[:, None].to(emb.device) - 1).clamp(min=1)
        feats = torch.cat([emb, slice_logits, height[..., None].to(emb.dtype)], dim=-1)
        h = self.proj(self.input_dropout(feats))
        packed = pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=length)
        refined = slice_logits + self.slice_head(out)
        mask = valid[..., None]
        neg = torch.finfo(out.dtype).min
        pooled_max = out.masked_fill(~mask, neg).amax(dim=1)
        pooled_mean = (out * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        study = self.study_head(torch.cat([pooled_max, pooled_mean], dim=-1))
        return refined, study


@dataclass
class StudyHead:
    """A trained study model with its calibration and study-level thresholds."""

    model: nn.Module
    architecture: str
    embed_dim: int
    hidden: int
    #: Platt scaling of the refined slice logits and of the study logits, per label.
    slice_calibration: Any  # ichnode.model.Calibration (imported there; no import cycle)
    study_calibration: Any
    summary: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "embed_dim": self.embed_dim,
            "hidden": self.hidden,
            "slice_calibration": self.slice_calibration.to_dict(),
            "study_calibration": self.study_calibration.to_dict(),
            "summary": self.summary,
        }


@dataclass
class StudyScores:
    """Calibrated probabilities of one study: per slice (in the order given) and for the study."""

    slices: np.ndarray  # (L, 6)
    study: np.ndarray  # (6,)
    refined: bool  # True when a study model refined the slices


def order_by_z(z: list[float | None]) -> list[int]:
    """Indices that sort slices by z (slices without z keep their order, after the others)."""
    known = [i for i, v in enumerate(z) if v is not None and np.isfinite(v)]
    unknown = [i for i, v in enumerate(z) if v is None or not np.isfinite(v)]
    return sorted(known, key=lambda i: float(cast(float, z[i]))) + unknown


@torch.inference_mode()
def run_study_head(
    head: StudyHead, embeddings: np.ndarray, slice_logits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Raw (uncalibrated) refined slice logits ``(L, 6)`` and study logits ``(6,)`` of one
    study whose slices are given in z order."""
    head.model.eval()
    param = next(head.model.parameters())
    emb = torch.as_tensor(embeddings, dtype=param.dtype, device=param.device)[None]
    logits = torch.as_tensor(slice_logits, dtype=param.dtype, device=param.device)[None]
    lengths = torch.tensor([emb.shape[1]])
    refined, study = head.model(emb, logits, lengths)
    return refined[0].float().cpu().numpy(), study[0].float().cpu().numpy()


#: How embeddings are stored in ``predictions.embedding``: float32, little-endian (1 KB for
#: 256 values), so the node's study result is the one ``ichnode predict FOLDER`` computes.
EMBEDDING_DTYPE = "<f4"


def encode_embedding(vector: np.ndarray) -> bytes:
    """A slice embedding as stored in the database."""
    return np.asarray(vector, dtype=EMBEDDING_DTYPE).tobytes()


def decode_embedding(data: bytes) -> np.ndarray:
    """The float32 vector of :func:`encode_embedding`'s bytes."""
    return np.frombuffer(data, dtype=EMBEDDING_DTYPE).astype(np.float32)
