"""Training-only augmentation, applied per batch on the training device.

Horizontal flips, small rotations and scales (one affine warp, zero = air padding) and
intensity jitter (contrast × brightness, per sample). Evaluation and serving never augment: only
:func:`training.loop.train_one_epoch` calls :func:`augment_batch`. The settings are recorded in
the checkpoint's summary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; ``enabled=False`` makes :func:`augment_batch` the identity."""

    enabled: bool = True
    hflip: float = 0.5  # probability of a left-right flip
    rotate_deg: float = 10.0  # uniform in [-rotate_deg, +rotate_deg]
    scale: float = 0.1  # zoom uniform in [1 - scale, 1 + scale]
    contrast: float = 0.1  # intensity × uniform in [1 - contrast, 1 + contrast]
    brightness: float = 0.05  # intensity + uniform in [-brightness, +brightness]

    def to_dict(self) -> dict:
        return asdict(self)


NO_AUGMENT = AugmentConfig(enabled=False)


def _uniform(n: int, half_width: float, g: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=g) * 2.0 - 1.0) * half_width


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """A randomly warped and jittered copy of ``x`` ``(N, C, H, W)`` in [0, 1].

    Random numbers come from ``g`` (a CPU generator) so a seeded run is reproducible on any
    device.
    """
    if not cfg.enabled:
        return x
    n = x.shape[0]
    angle = _uniform(n, math.radians(cfg.rotate_deg), g)
    zoom = 1.0 + _uniform(n, cfg.scale, g)
    flip = torch.where(torch.rand(n, generator=g) < cfg.hflip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast = (1.0 + _uniform(n, cfg.contrast, g)).view(n, 1, 1, 1).to(x.device, x.dtype)
    bright = _uniform(n, cfg.brightness, g).view(n, 1, 1, 1).to(x.device, x.dtype)
    return (out * contrast + bright).clamp_(0.0, 1.0)
