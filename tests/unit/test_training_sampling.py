"""Balanced sampler: group frequencies, epoch length, determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np

from training.sampling import GROUPS, BalancedSampler, build_sampler, group_members


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
