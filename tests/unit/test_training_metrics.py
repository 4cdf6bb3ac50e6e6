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
