"""Balanced sampler: group frequencies, epoch length, determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np

from training.sampling import (
    GROUPS,
    BalancedSampler,
    build_sampler,
    faint_members,
    group_members,
)


def _labels(n: int = 12000, seed: int = 0) -> np.ndarray:
    """Natural-looking prevalence: 85 % normal, epidural very rare."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 6), dtype=np.float32)
    rates = [0.004, 0.05, 0.035, 0.05, 0.065]
    for j, r in enumerate(rates):
        y[:, j] = rng.random(n) < r
    y[:, 5] = y[:, :5].max(axis=1)
    return y


def _group_of_draws(labels: np.ndarray, draws: list[int]) -> Counter:
    members = group_members(labels)
    counts: Counter = Counter()
    for name in GROUPS:
        counts[name] = int(np.isin(draws, members[name]).sum())
    return counts


def test_epoch_has_as_many_draws_as_the_training_split():
    y = _labels()
    sampler = BalancedSampler(y, seed=0)
    assert len(sampler) == len(y)
    assert len(list(sampler)) == len(y)


def test_each_subtype_and_normal_is_drawn_about_one_sixth_of_the_time():
    y = _labels()
    draws = list(BalancedSampler(y, seed=0))
    members = group_members(y)
    # Count the group each draw was made for: slices with several subtypes count for each of
    # them, so measure the exclusive share of single-label slices via expected ≥ 1/6.
    counts = _group_of_draws(y, draws)
    for name in GROUPS:
        assert counts[name] / len(draws) > 0.15, name
    # The rare epidural group (≈ 50 slices of 12 000) is drawn ~2000 times, with replacement.
    assert len(members["epidural"]) < 80
    assert counts["epidural"] > 1700


def test_empty_groups_are_left_out():
    y = _labels()
    y[:, 0] = 0
    sampler = BalancedSampler(y, seed=0)
    assert "epidural" not in sampler.groups
    assert len(sampler.groups) == 5


def test_draws_depend_only_on_seed_and_epoch():
    y = _labels(2000)
    a, b = BalancedSampler(y, seed=3), BalancedSampler(y, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)


def test_no_balanced_is_a_seeded_permutation_of_the_split():
    y = _labels(500)
    sampler = build_sampler(y, balanced=False, seed=1)
    sampler.set_epoch(1)
    draws = list(sampler)
    assert sorted(draws) == list(range(500))
    sampler.set_epoch(1)
    assert list(sampler) == draws


def test_faint_members_are_the_lowest_third_of_the_measured_bleeds():
    dprime = np.array([np.nan, 3.0, 50.0, 9.0, np.nan, 80.0, 1.0, 120.0, 40.0, 7.0])
    # Measured: 1, 3, 7, 9, 40, 50, 80, 120; the lowest third (up to its quantile) are 1, 3, 7.
    assert faint_members(dprime).tolist() == [1, 6, 9]
    assert faint_members(np.full(4, np.nan)).tolist() == []


def test_faint_share_of_each_subtypes_draws_comes_from_its_faint_slices():
    y = _labels(6000)
    members = group_members(y)
    faint = np.concatenate([members[name][:3] for name in GROUPS if name != "normal"])
    plain = list(BalancedSampler(y, seed=0, normal_share=0.4))
    drawn = list(BalancedSampler(y, seed=0, normal_share=0.4, faint=faint, faint_share=0.5))
    normal = members["normal"]
    # Normal draws keep their share; about half the bleeding draws (plus the faint slices'
    # own share of the rest) land on the faint slices, against a few per cent without.
    assert abs(np.isin(drawn, normal).mean() - 0.4) < 0.03
    bleeding = ~np.isin(drawn, normal)
    share = np.isin(np.asarray(drawn)[bleeding], faint).mean()
    assert 0.5 < share < 0.65
    assert np.isin(np.asarray(plain)[~np.isin(plain, normal)], faint).mean() < 0.2


def test_without_faint_share_the_draws_are_those_of_before():
    y = _labels(2000)
    faint = np.arange(0, 2000, 7)
    assert list(BalancedSampler(y, seed=4)) == list(BalancedSampler(y, seed=4, faint=faint))
