"""Balanced sampling over the five hemorrhage subtypes and normal slices.

Each draw first picks one of the non-empty groups (epidural, intraparenchymal,
intraventricular, subarachnoid, subdural, normal) uniformly, then a slice of that group
uniformly, with replacement. An epoch keeps as many draws as the training split has slices:
undersampling to the rarest subtype would shrink epochs to a few dozen slices and starve the
model. A slice with several subtypes belongs to each of their groups.

With ``faint_share`` (phantom folders, whose bleed maps say how visible each bleed is) that
share of each subtype's draws comes from its faintest slices (:func:`faint_members`): the
training family holds few of the thin, low-contrast bleeds a model misses out of family, and
drawn in proportion the network sees them rarely.

The sampler follows ``DistributedSampler``'s shape (``set_epoch``, deterministic per epoch), and
:func:`build_sampler` is the one place a loader's sampler is chosen, so a distributed variant can
be slotted in later.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import RandomSampler, Sampler

from ichnode.subtypes import HEMORRHAGE_SUBTYPES, SUBTYPES

#: Group names, in draw order: the five subtypes, then normal (``any`` == 0).
GROUPS: tuple[str, ...] = (*HEMORRHAGE_SUBTYPES, "normal")
#: Bleeding slices whose d' lies in this lowest share of the measured ones are "faint".
FAINT_QUANTILE = 1.0 / 3.0


def faint_members(dprime: np.ndarray, quantile: float = FAINT_QUANTILE) -> np.ndarray:
    """Indices of the faint bleeding slices: ``dprime`` per slice (NaN where no bleed was
    measured), at or below the ``quantile`` of the measured values."""
    dprime = np.asarray(dprime, dtype=np.float64)
    measured = np.isfinite(dprime)
    if not measured.any():
        return np.zeros(0, dtype=np.int64)
    cut = np.quantile(dprime[measured], quantile)
    return np.flatnonzero(measured & (dprime <= cut))


def group_members(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Indices of the slices in each group (``labels`` is ``(N, 6)`` in SUBTYPES order)."""
    labels = np.asarray(labels)
    members = {
        name: np.flatnonzero(labels[:, SUBTYPES.index(name)] > 0.5) for name in HEMORRHAGE_SUBTYPES
    }
    members["normal"] = np.flatnonzero(labels[:, SUBTYPES.index("any")] < 0.5)
    return members


class BalancedSampler(Sampler[int]):
    """Equal expected draws from every non-empty group, with replacement; ``num_samples`` draws.

    With ``normal_share`` the normal group gets that share of the draws and the subtypes split
    the rest equally: normal slices carry the mimics (skull base, calcifications) a model must
    learn to leave alone, and one draw in six is too few of them. With ``faint`` (slice
    indices) and ``faint_share``, that share of each subtype's draws is taken from its members
    in ``faint`` (the rest from all its members, faint ones included).
    """

    def __init__(
        self,
        labels: np.ndarray,
        num_samples: int | None = None,
        seed: int = 0,
        normal_share: float | None = None,
        faint: np.ndarray | None = None,
        faint_share: float | None = None,
    ) -> None:
        members = group_members(labels)
        self.groups = [name for name in GROUPS if len(members[name])]
        if not self.groups:
            raise ValueError("balanced sampling needs at least one labelled slice")
        self.members = [torch.as_tensor(members[name], dtype=torch.long) for name in self.groups]
        weights = torch.ones(len(self.groups), dtype=torch.float64)
        others = [i for i, name in enumerate(self.groups) if name != "normal"]
        if normal_share is not None and "normal" in self.groups and others:
            weights[:] = (1.0 - normal_share) / len(others)
            weights[self.groups.index("normal")] = normal_share
        self.weights = weights / weights.sum()
        self.faint_share = faint_share if faint is not None else None
        faint_set = np.asarray([] if faint is None else faint, dtype=np.int64)
        self.faint = [
            torch.as_tensor(
                np.intersect1d(members[name], faint_set) if name != "normal" else [],
                dtype=torch.long,
            )
            for name in self.groups
        ]
        self.num_samples = len(labels) if num_samples is None else int(num_samples)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draws depend on (seed, epoch) only: resuming reproduces them."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        group = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        out = torch.empty(self.num_samples, dtype=torch.long)
        for k, pool in enumerate(self.members):
            mask = group == k
            picks = pool[torch.randint(len(pool), (int(mask.sum()),), generator=g)]
            faint = self.faint[k]
            if self.faint_share is not None and len(faint):
                take = torch.rand(len(picks), generator=g) < self.faint_share
                picks[take] = faint[torch.randint(len(faint), (int(take.sum()),), generator=g)]
            out[mask] = picks
        return iter(out.tolist())


class SeededRandomSampler(RandomSampler):
    """A plain shuffle (``--no-balanced``) that is deterministic per (seed, epoch)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.seed, self.epoch = seed, 0
        super().__init__(range(n), generator=torch.Generator().manual_seed(seed))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)


def build_sampler(
    labels: np.ndarray,
    balanced: bool,
    seed: int,
    normal_share: float | None = None,
    num_samples: int | None = None,
    faint: np.ndarray | None = None,
    faint_share: float | None = None,
) -> BalancedSampler | SeededRandomSampler:
    """The training sampler: balanced (``num_samples`` draws an epoch, default len(labels);
    ``faint_share`` of each subtype's draws from its ``faint`` slices) or a seeded shuffle of
    every slice."""
    if balanced:
        return BalancedSampler(
            labels,
            num_samples=num_samples,
            seed=seed,
            normal_share=normal_share,
            faint=faint,
            faint_share=faint_share,
        )
    return SeededRandomSampler(len(labels), seed=seed)
