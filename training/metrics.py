"""Metrics: the competition's weighted multi-label log loss and per-subtype classification metrics.

Arrays are ``(N, 6)`` in :data:`ichnode.subtypes.SUBTYPES` order: ``y`` holds 0/1 labels,
``p`` probabilities.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from ichnode.subtypes import METRIC_WEIGHTS, SUBTYPES

#: Probabilities are clipped to [EPS, 1 - EPS] before taking logs (as the competition did).
EPS = 1e-15


def metric_weights() -> np.ndarray:
    """The six competition weights (``any`` = 2, others 1) in label order."""
    return np.array([METRIC_WEIGHTS[name] for name in SUBTYPES], dtype=np.float64)


def weighted_log_loss(y: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None) -> float:
    """RSNA 2019 metric: per sample, the weighted mean of the six binary log losses; then the
    mean over samples. ``sum_j w_j * bce_ij / sum_j w_j`` averaged over ``i``."""
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    w = metric_weights() if weights is None else np.asarray(weights, dtype=np.float64)
    bce = -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))
    per_sample = (bce * w).sum(axis=1) / w.sum()
    return float(per_sample.mean())


def prevalence(y: np.ndarray) -> np.ndarray:
    """Fraction of positives per column."""
    return np.asarray(y, dtype=np.float64).mean(axis=0)


def baseline_log_loss(y: np.ndarray, train_prevalence: np.ndarray) -> float:
    """Weighted log loss of always predicting ``train_prevalence`` (the no-skill reference)."""
    p = np.broadcast_to(np.asarray(train_prevalence, dtype=np.float64), np.shape(y))
    return weighted_log_loss(y, p)


def safe_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC, or NaN when only one class is present."""
    y = np.asarray(y)
    if y.min() == y.max():
        return math.nan
    return float(roc_auc_score(y, score))


def aucs(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC per subtype (NaN where a column has one class only)."""
    return {name: safe_auc(y[:, j], p[:, j]) for j, name in enumerate(SUBTYPES)}


@dataclass
class SubtypeMetrics:
    """Binary metrics of one subtype at its threshold."""

    threshold: float
    positives: int
    negatives: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    roc_auc: float
    confusion: list[list[int]]  # [[tn, fp], [fn, tp]]
    report: str  # sklearn classification_report

    def to_dict(self) -> dict:
        return asdict(self)


def subtype_metrics(
    y: np.ndarray, p: np.ndarray, threshold: float, pred: np.ndarray
) -> SubtypeMetrics:
    """Accuracy, precision, recall, F1, ROC AUC, confusion matrix and sklearn's report of the
    calls ``pred`` (made by :func:`ichnode.triage.over_threshold` at ``threshold``)."""
    y = np.asarray(y).astype(int)
    pred = np.asarray(pred).astype(int)
    return SubtypeMetrics(
        threshold=float(threshold),
        positives=int(y.sum()),
        negatives=int(len(y) - y.sum()),
        accuracy=float(accuracy_score(y, pred)),
        precision=float(precision_score(y, pred, zero_division=0)),
        recall=float(recall_score(y, pred, zero_division=0)),
        f1=float(f1_score(y, pred, zero_division=0)),
        roc_auc=safe_auc(y, p),
        confusion=confusion_matrix(y, pred, labels=[0, 1]).tolist(),
        report=classification_report(
            y, pred, labels=[0, 1], target_names=["negative", "positive"], zero_division=0
        ),
    )


def finite_or_none(value: float) -> float | None:
    """JSON cannot hold NaN: ``None`` for non-finite numbers."""
    return float(value) if math.isfinite(value) else None


#: Resamples of the bootstrap intervals (enough for the second decimal of a 95 % interval).
BOOTSTRAP_RESAMPLES = 1000
#: Coverage of every interval reported.
INTERVAL_LEVEL = 0.95


def _stratified_resamples(
    y: np.ndarray, resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Row indices of ``resamples`` bootstrap draws of the positives and of the negatives
    (drawn separately, so every draw keeps both classes and their counts); None if one class."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0:
        return None
    rng = np.random.default_rng(seed)
    return (
        pos[rng.integers(0, len(pos), (resamples, len(pos)))],
        neg[rng.integers(0, len(neg), (resamples, len(neg)))],
    )


def _auc_of_draws(score: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """ROC AUC of each draw (rows of ``pos``/``neg`` indices): the share of positive/negative
    pairs the score orders right, ties counting half (Mann-Whitney, as ``roc_auc_score``)."""
    out = np.empty(len(pos))
    for i, (p, n) in enumerate(zip(pos, neg, strict=True)):
        sp, sn = np.sort(score[p]), np.sort(score[n])
        below = np.searchsorted(sn, sp, side="left")  # negatives strictly under each positive
        ties = np.searchsorted(sn, sp, side="right") - below
        out[i] = (below.sum() + 0.5 * ties.sum()) / (len(sp) * len(sn))
    return out


def auc_interval(
    y: np.ndarray, score: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval (:data:`INTERVAL_LEVEL`) of the ROC AUC, positives and
    negatives resampled separately; None when one class is missing."""
    y, score = np.asarray(y).astype(int), np.asarray(score, dtype=np.float64)
    draws = _stratified_resamples(y, resamples, seed)
    if draws is None:
        return None
    return _percentiles(_auc_of_draws(score, *draws))


def paired_auc_difference(
    y: np.ndarray,
    old: np.ndarray,
    new: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float, float] | None:
    """AUC(``new``) - AUC(``old``) on the same cases, and its paired bootstrap interval.

    Both scores are resampled with the same draws, so what the cases have in common (an easy
    or a hard set) cancels: far narrower than comparing two separate intervals.
    """
    y = np.asarray(y).astype(int)
    old, new = np.asarray(old, dtype=np.float64), np.asarray(new, dtype=np.float64)
    draws = _stratified_resamples(y, resamples, seed)
    if draws is None:
        return None
    diff = _auc_of_draws(new, *draws) - _auc_of_draws(old, *draws)
    lo, hi = _percentiles(diff)
    return safe_auc(y, new) - safe_auc(y, old), lo, hi


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - INTERVAL_LEVEL) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def proportion_interval(hits: int, total: int) -> tuple[float, float] | None:
    """Wilson score interval (:data:`INTERVAL_LEVEL`) of ``hits / total``; None when total is 0."""
    if total == 0:
        return None
    ci = binomtest(hits, total).proportion_ci(confidence_level=INTERVAL_LEVEL, method="wilson")
    return float(ci.low), float(ci.high)
