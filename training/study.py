"""Second training stage: the study model on the frozen slice network's embeddings.

The slice network is trained first (:mod:`training.loop`). Its embeddings of every slice are
computed once (the training split once as is and once augmented in HU, so the sequence model
does not learn to trust embeddings of slices the slice network has memorised), grouped by
StudyInstanceUID and ordered by z (ImagePositionPatient, from the header index), and a
:mod:`ichnode.study` model is trained on them with BCEWithLogitsLoss on the refined slice
logits and on the study logits (a study is positive for a label when any of its slices is).
The epoch with the lowest validation loss is kept. Cheap on a CPU: an epoch is a few hundred
short sequences.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from ichnode.imaging import PreprocessSpec
from ichnode.model import embed, head
from ichnode.study import StudyGRU, build_study, order_by_z
from ichnode.subtypes import SUBTYPES

if TYPE_CHECKING:
    from training.dataset import RSNADataset

log = logging.getLogger(__name__)


@dataclass
class StudySet:
    """The slices of some studies, grouped per study and ordered by z."""

    studies: list[str]
    ids: list[list[str]]  # image ids per study, in z order
    emb: list[np.ndarray]  # (L, D) per study
    logits: list[np.ndarray]  # slice logits (L, 6)
    y: list[np.ndarray]  # slice labels (L, 6)

    def __len__(self) -> int:
        return len(self.studies)

    def study_labels(self) -> np.ndarray:
        """``(S, 6)``: a study is positive for a label when any of its slices is."""
        return np.stack([y.max(axis=0) for y in self.y]) if self.y else np.zeros((0, 6))


@torch.inference_mode()
def embed_dataset(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    spec: PreprocessSpec,
    device: torch.device,
    skipped: set[str],
    augment=None,
    g: torch.Generator | None = None,
    desc: str = "embed",
    mirrored: bool = False,
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Image ids, embeddings ``(N, D)``, slice logits ``(N, 6)`` and labels of every readable
    item; ``augment`` (an HU or legacy augmentation config) alters the inputs first;
    ``mirrored`` averages each embedding with its left-right mirror's (test-time flip)."""
    from training.loop import model_input  # the loop imports this module

    model.eval()
    ids_all = cast("RSNADataset", loader.dataset).ids
    ids: list[str] = []
    embs, logits, labels = [], [], []
    for x, y, pos, bad, _ in tqdm(loader, desc=desc, leave=False, disable=None):
        skipped.update(ids_all[i] for i in bad)
        if len(x) == 0:
            continue
        x = model_input(x.to(device), spec, augment, g)
        e = embed(model, x)
        if mirrored:
            e = (e + embed(model, x.flip(-1))) / 2
        embs.append(e.float().cpu().numpy())
        logits.append(head(model)(e).float().cpu().numpy())
        labels.append(y.numpy())
        ids.extend(ids_all[int(i)] for i in pos)
    if not embs:
        return [], np.zeros((0, 0)), np.zeros((0, 6)), np.zeros((0, 6))
    return ids, np.concatenate(embs), np.concatenate(logits), np.concatenate(labels)


def group_studies(
    index: pd.DataFrame, ids: list[str], emb: np.ndarray, logits: np.ndarray, y: np.ndarray
) -> StudySet:
    """Group per StudyInstanceUID (``index`` has ``id``, ``study``, ``z``), ordered by z."""
    by_id = index.set_index("id")
    studies = by_id.loc[ids, "study"].to_numpy()
    zs = by_id.loc[ids, "z"].to_numpy(dtype=float)
    out = StudySet([], [], [], [], [])
    order = pd.Series(np.arange(len(ids))).groupby(studies, sort=True)
    for study, rows in order:
        rows = rows.to_numpy()
        rows = rows[order_by_z([float(zs[r]) for r in rows])]
        out.studies.append(str(study))
        out.ids.append([ids[r] for r in rows])
        out.emb.append(emb[rows].astype(np.float32))
        out.logits.append(logits[rows].astype(np.float32))
        out.y.append(y[rows].astype(np.float32))
    return out


def _batch(s: StudySet, picks: list[int], device: torch.device) -> tuple[torch.Tensor, ...]:
    lengths = torch.tensor([len(s.emb[i]) for i in picks])
    length, dim = int(lengths.max()), s.emb[picks[0]].shape[1]
    emb = torch.zeros(len(picks), length, dim)
    logits = torch.zeros(len(picks), length, len(SUBTYPES))
    y = torch.zeros(len(picks), length, len(SUBTYPES))
    for k, i in enumerate(picks):
        n = len(s.emb[i])
        emb[k, :n] = torch.from_numpy(s.emb[i])
        logits[k, :n] = torch.from_numpy(s.logits[i])
        y[k, :n] = torch.from_numpy(s.y[i])
    return emb.to(device), logits.to(device), y.to(device), lengths


def _loss(model: nn.Module, s: StudySet, picks: list[int], device: torch.device) -> torch.Tensor:
    emb, logits, y, lengths = _batch(s, picks, device)
    refined, study = model(emb, logits, lengths)
    valid = torch.arange(y.shape[1], device=device)[None, :] < lengths[:, None].to(device)
    bce = nn.functional.binary_cross_entropy_with_logits
    slice_loss = (bce(refined, y, reduction="none").mean(-1) * valid).sum() / valid.sum()
    study_loss = bce(study, y.amax(dim=1))
    return slice_loss + study_loss


@torch.inference_mode()
def study_logits(model: nn.Module, s: StudySet, device: torch.device) -> tuple[list, np.ndarray]:
    """Refined slice logits per study and study logits ``(S, 6)``."""
    model.eval()
    refined_all, studies = [], []
    for i in range(len(s)):
        emb, logits, _, lengths = _batch(s, [i], device)
        refined, study = model(emb, logits, lengths)
        refined_all.append(refined[0].cpu().numpy())
        studies.append(study[0].cpu().numpy())
    return refined_all, np.stack(studies) if studies else np.zeros((0, len(SUBTYPES)))


def train_study_model(
    train: StudySet,
    val: StudySet,
    architecture: str,
    epochs: int,
    seed: int,
    device: torch.device,
    hidden: int = 64,
    batch_studies: int = 16,
    lr: float = 1e-3,
) -> tuple[StudyGRU, list[dict]]:
    """Fit the study model; returns the weights of the epoch with the lowest val loss."""
    torch.manual_seed(seed)
    dim = train.emb[0].shape[1]
    model = build_study(architecture, dim, hidden).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    rng = np.random.default_rng(seed)
    best, best_loss, history = copy.deepcopy(model.state_dict()), math.inf, []
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(len(train))
        total = 0.0
        for start in range(0, len(order), batch_studies):
            picks = [int(i) for i in order[start : start + batch_studies]]
            optimizer.zero_grad(set_to_none=True)
            loss = _loss(model, train, picks, device)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            total += float(loss.detach()) * len(picks)
        scheduler.step()
        model.eval()
        with torch.inference_mode():
            val_loss = float(
                sum(float(_loss(model, val, [i], device)) for i in range(len(val)))
                / max(len(val), 1)
            )
        history.append({"epoch": epoch, "train_loss": total / len(train), "val_loss": val_loss})
        if val_loss < best_loss:
            best_loss, best = val_loss, copy.deepcopy(model.state_dict())
    model.load_state_dict(best)
    model.eval()
    log.info(
        "study model: best val loss %.4f (epoch %d of %d)",
        best_loss,
        min(history, key=lambda r: r["val_loss"])["epoch"],
        epochs,
    )
    return cast(StudyGRU, model), history
