"""Per-subtype Platt scaling and threshold selection, both fitted on the validation split.

Balanced sampling trains the model at a prior far from the natural prevalence, so its raw
probabilities are too high. Platt scaling (``p = sigmoid(scale * logit + bias)``) fitted on the
validation split, which keeps the natural prevalence, undoes that shift.

Threshold rule (applied to calibrated probabilities):

* ``any``: the highest threshold whose sensitivity on the validation split is at least
  :data:`ANY_SENSITIVITY` (0.95) -- a triage tool must not miss bleeds.
* every other subtype: the threshold that maximises F1.
* a subtype without positives (or without negatives) in the validation split keeps 0.5.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_curve

from ichnode.model import Calibration
from ichnode.subtypes import ANY, SUBTYPES
from training import metrics

log = logging.getLogger(__name__)

#: Sensitivity the ``any`` threshold must reach on the validation split.
ANY_SENSITIVITY = 0.95
DEFAULT_THRESHOLD = 0.5


def platt_targets(y: np.ndarray) -> np.ndarray:
    """Platt's (1999) smoothed targets: ``(N+ + 1) / (N+ + 2)`` for positives and
    ``1 / (N- + 2)`` for negatives, so a perfectly separated validation split cannot drive the
    scale to infinity (which would saturate probabilities at 0 and 1)."""
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))


def fit_platt(logits: np.ndarray, y: np.ndarray) -> Calibration:
    """Fit ``scale`` and ``bias`` per column: logistic regression of Platt's smoothed targets
    on the logit (each sample enters as a positive with weight t and a negative with 1 - t)."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y).astype(int)
    scale, bias = [1.0] * len(SUBTYPES), [0.0] * len(SUBTYPES)
    for j, name in enumerate(SUBTYPES):
        col = y[:, j]
        if col.min() == col.max():
            log.debug("calibration: %s has a single class; left identity", name)
            continue
        t = platt_targets(col)
        x = np.r_[logits[:, j], logits[:, j]][:, None]
        target = np.r_[np.ones(len(col)), np.zeros(len(col))]
        lr = LogisticRegression(C=1e4, max_iter=1000)
        lr.fit(x, target, sample_weight=np.r_[t, 1.0 - t])
        scale[j], bias[j] = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    return Calibration(scale=scale, bias=bias)


def max_f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold with the highest F1 (ties: the higher threshold)."""
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(thresholds[best])


def sensitivity_threshold(y: np.ndarray, p: np.ndarray, target: float = ANY_SENSITIVITY) -> float:
    """The highest threshold ``t`` such that ``mean(p[y == 1] >= t) >= target``."""
    pos = np.sort(np.asarray(p)[np.asarray(y) == 1])
    # Keep at least ceil(target * n) positives at or above t: t = the k-th largest positive.
    k = int(np.ceil(target * len(pos)))
    return float(pos[len(pos) - k])


def pick_thresholds(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Per-subtype thresholds by the module's documented rule."""
    y = np.asarray(y).astype(int)
    out: dict[str, float] = {}
    for j, name in enumerate(SUBTYPES):
        col = y[:, j]
        if col.min() == col.max():
            out[name] = DEFAULT_THRESHOLD
        elif name == ANY:
            out[name] = sensitivity_threshold(col, p[:, j])
        else:
            out[name] = max_f1_threshold(col, p[:, j])
    return out


@dataclass
class OperatingPoint:
    """Everything a checkpoint's probabilities and flags are fitted with on calibration
    studies: the slice network's calibration and slice thresholds; with a study model, the
    calibrations of its refined slice logits and of its study logits; the study thresholds
    (which decide the flag); and what the summary reports of the fit."""

    calibration: Calibration
    thresholds: dict[str, float]
    slice_calibration: Calibration | None
    study_calibration: Calibration | None
    study_thresholds: dict[str, float]
    weighted_log_loss: float
    study_auc: dict[str, float | None]
    n_studies: int


def fit_operating_point(
    logits: list[np.ndarray],
    y: list[np.ndarray],
    refined: list[np.ndarray] | None = None,
    study_logits: np.ndarray | None = None,
) -> OperatingPoint:
    """Fit :class:`OperatingPoint` on calibration studies: per study, the slice network's
    logits ``(L, 6)`` and labels ``(L, 6)``, and with a study model its refined slice logits
    and the study logits ``(S, 6)``. Without a study model a study's probabilities are the
    maximum over its calibrated slices (what the node then uses)."""
    flat = np.concatenate(logits) if logits else np.zeros((0, len(SUBTYPES)))
    labels = np.concatenate(y) if y else np.zeros((0, len(SUBTYPES)))
    calibration = fit_platt(flat, labels)
    for j, name in enumerate(SUBTYPES):
        if len(labels) == 0 or labels[:, j].min() == labels[:, j].max():
            log.warning("%s has a single class in calibration: uncalibrated, threshold 0.5", name)
    probs = calibration.apply_numpy(flat)
    thresholds = pick_thresholds(labels, probs)
    study_y = np.stack([s.max(axis=0) for s in y]) if y else np.zeros((0, len(SUBTYPES)))
    slice_cal = study_cal = None
    if refined is not None and study_logits is not None:
        slice_cal = fit_platt(np.concatenate(refined), labels)
        study_cal = fit_platt(study_logits, study_y)
        study_probs = study_cal.apply_numpy(study_logits)
        probs = slice_cal.apply_numpy(np.concatenate(refined))
    else:
        study_probs = np.stack([calibration.apply_numpy(lg).max(axis=0) for lg in logits])
    return OperatingPoint(
        calibration=calibration,
        thresholds=thresholds,
        slice_calibration=slice_cal,
        study_calibration=study_cal,
        study_thresholds=pick_thresholds(study_y, study_probs),
        weighted_log_loss=metrics.weighted_log_loss(labels, probs),
        study_auc={
            k: metrics.finite_or_none(v) for k, v in metrics.aucs(study_y, study_probs).items()
        },
        n_studies=len(y),
    )
