"""Platt scaling and the threshold rule."""

from __future__ import annotations

import numpy as np
import pytest

from training import calibrate, metrics


def _miscalibrated(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose plain sigmoid is overconfident and far too high (as after balanced
    sampling): the true probability is sigmoid(0.5 * z - 2)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, size=(n, 6))
    true_p = 1 / (1 + np.exp(-(0.5 * z - 2.0)))
    return z, (rng.random((n, 6)) < true_p).astype(int)


def test_platt_scaling_lowers_the_weighted_log_loss_of_miscalibrated_logits():
    z, y = _miscalibrated()
    raw = metrics.weighted_log_loss(y, 1 / (1 + np.exp(-z)))
    cal = calibrate.fit_platt(z, y)
    fitted = metrics.weighted_log_loss(y, cal.apply_numpy(z))
    assert fitted < raw * 0.8
    assert cal.scale == pytest.approx([0.5] * 6, abs=0.1)
    assert cal.bias == pytest.approx([-2.0] * 6, abs=0.3)


def test_platt_scaling_leaves_a_single_class_column_identity():
    z, y = _miscalibrated()
    y[:, 0] = 0
    cal = calibrate.fit_platt(z, y)
    assert (cal.scale[0], cal.bias[0]) == (1.0, 0.0)


def test_any_threshold_is_the_highest_reaching_95_percent_sensitivity():
    p_pos = np.linspace(0.05, 0.99, 40)  # 40 positives: 38 must stay at or above t
    p_neg = np.linspace(0.0, 0.5, 60)
    y = np.r_[np.ones(40), np.zeros(60)]
    t = calibrate.sensitivity_threshold(y, np.r_[p_pos, p_neg])
    assert np.mean(p_pos >= t) >= 0.95
    assert np.mean(p_pos >= np.nextafter(t, 1.0)) < 0.95


def test_other_subtypes_get_the_max_f1_threshold():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8])
    # t=0.6 → P=1, R=3/4, F1=0.857; t=0.35 → P=4/5, R=1, F1=0.889 (the best).
    assert calibrate.max_f1_threshold(y, p) == pytest.approx(0.35)


def test_pick_thresholds_uses_sensitivity_for_any_and_default_without_positives():
    rng = np.random.default_rng(1)
    y = (rng.random((200, 6)) < 0.3).astype(int)
    y[:, 0] = 0
    p = np.clip(y * 0.5 + rng.random((200, 6)) * 0.5, 0, 1)
    th = calibrate.pick_thresholds(y, p)
    assert th["epidural"] == calibrate.DEFAULT_THRESHOLD
    assert th["any"] == calibrate.sensitivity_threshold(y[:, 5], p[:, 5])
    assert th["subdural"] == calibrate.max_f1_threshold(y[:, 4], p[:, 4])
