"""Weighted log loss against a hand computation, per-subtype metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import metrics


def test_weighted_log_loss_matches_hand_computation():
    # Columns: epidural, intraparenchymal, intraventricular, subarachnoid, subdural, any.
    y = np.array([[0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1]])
    p = np.array([[0.5, 0.5, 0.5, 0.5, 0.5, 0.2], [0.9, 0.1, 0.1, 0.1, 0.1, 0.9]])
    # Sample 1: five columns at -ln(0.5), "any" (weight 2) at -ln(1 - 0.2); weights sum to 7.
    s1 = (5 * -math.log(0.5) + 2 * -math.log(0.8)) / 7  # = 0.558860...
    # Sample 2: every column is -ln(0.9) (right with 0.9 confidence): weighted mean -ln(0.9).
    s2 = (1 + 1 + 1 + 1 + 1 + 2) * -math.log(0.9) / 7  # = 0.105361...
    expected = (s1 + s2) / 2  # = 0.332110...
    assert expected == pytest.approx(0.332110, abs=1e-6)
    assert metrics.weighted_log_loss(y, p) == pytest.approx(expected, rel=1e-12)


def test_weighted_log_loss_clips_certain_wrong_answers_to_a_finite_value():
    y = np.array([[1, 1, 1, 1, 1, 1]])
    assert math.isfinite(metrics.weighted_log_loss(y, np.zeros((1, 6))))


def test_baseline_log_loss_predicts_the_given_prevalence_everywhere():
    y = np.array([[0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 1]])
    prev = np.array([0.1, 0.2, 0.1, 0.1, 0.1, 0.3])
    expected = metrics.weighted_log_loss(y, np.tile(prev, (2, 1)))
    assert metrics.baseline_log_loss(y, prev) == pytest.approx(expected)


def test_subtype_metrics_counts_confusion_matrix_and_scores():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.7, 0.8, 0.9, 0.2])
    m = metrics.subtype_metrics(y, p, threshold=0.5, pred=p >= 0.5)
    assert m.confusion == [[1, 1], [1, 2]]  # [[tn, fp], [fn, tp]]
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(2 / 3)
    assert m.accuracy == pytest.approx(3 / 5)
    assert m.roc_auc == pytest.approx(5 / 6)  # 5 of 6 (pos, neg) pairs ordered
    assert "positive" in m.report


def test_auc_is_nan_when_a_column_has_one_class():
    assert math.isnan(metrics.safe_auc(np.zeros(4), np.linspace(0, 1, 4)))


def _scores(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, y * 0.8 + rng.normal(size=n)


def test_the_bootstrap_auc_counts_pairs_as_roc_auc_score_does_ties_included():
    from sklearn.metrics import roc_auc_score

    y, s = _scores(300)
    s = np.round(s, 1)  # many ties
    pos, neg = np.flatnonzero(y == 1)[None], np.flatnonzero(y == 0)[None]
    assert metrics._auc_of_draws(s, pos, neg)[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_the_auc_interval_holds_the_auc_and_narrows_with_more_studies():
    y, s = _scores(100)
    lo, hi = metrics.auc_interval(y, s)
    assert lo < metrics.safe_auc(y, s) < hi
    y4, s4 = _scores(1600)
    lo4, hi4 = metrics.auc_interval(y4, s4)
    assert (hi4 - lo4) < (hi - lo) / 2.5  # about 1/sqrt(16) of the width


def test_no_auc_interval_without_both_classes():
    assert metrics.auc_interval(np.ones(5), np.arange(5.0)) is None
    assert metrics.paired_auc_difference(np.zeros(5), np.arange(5.0), np.arange(5.0)) is None


def test_the_paired_difference_cancels_what_the_studies_share():
    y, s = _scores(400)
    assert metrics.paired_auc_difference(y, s, s) == (0.0, 0.0, 0.0)
    other = s + np.random.default_rng(2).normal(scale=0.3, size=len(s))
    diff, lo, hi = metrics.paired_auc_difference(y, s, other)
    assert diff == pytest.approx(metrics.safe_auc(y, other) - metrics.safe_auc(y, s))
    assert lo <= diff <= hi
    # Far narrower than the two models' separate intervals, which overlap almost entirely.
    a, b = metrics.auc_interval(y, s), metrics.auc_interval(y, other)
    assert hi - lo < 0.5 * min(a[1] - a[0], b[1] - b[0])


def test_the_proportion_interval_is_wilsons():
    # 0 of n: the upper bound is z^2 / (n + z^2) = 3.8415 / 13.8415 for n = 10.
    lo, hi = metrics.proportion_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.27753, abs=1e-4)
    lo, hi = metrics.proportion_interval(64, 65)
    assert lo < 64 / 65 < hi <= 1.0
    assert metrics.proportion_interval(0, 0) is None
