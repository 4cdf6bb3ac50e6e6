"""Training-only augmentation, applied per batch on the training device.

Horizontal flips, small rotations and scales (one affine warp, zero = air padding) and
intensity jitter (contrast × brightness, per sample). Evaluation and serving never augment: only
:func:`training.loop.train_one_epoch` calls :func:`augment_batch`. The settings are recorded in
the checkpoint's summary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import overload

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


#: Control points per side of the elastic displacement field (smooth over ~a quarter head).
ELASTIC_GRID = 5


def _warp(
    x: torch.Tensor,
    rotate_deg: float,
    scale: float,
    hflip: float,
    g: torch.Generator,
    aspect: float = 0.0,
    elastic: float = 0.0,
) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` flipped (probability ``hflip``), rotated and zoomed per sample
    (one warp, bilinear; zero outside). ``aspect`` stretches one axis against the other by up
    to that fraction (a longer or wider head), ``elastic`` adds a smooth random displacement
    of up to that fraction of the half width (other anatomy, other bleed outlines); both are
    drawn only when non-zero, so the legacy warp's draws are unchanged."""
    n = x.shape[0]
    angle = _uniform(n, math.radians(rotate_deg), g)
    zoom = 1.0 + _uniform(n, scale, g)
    flip = torch.where(torch.rand(n, generator=g) < hflip, -1.0, 1.0)
    stretch = 1.0 + _uniform(n, aspect, g) if aspect > 0 else torch.ones(n)
    zx, zy = zoom * stretch, zoom / stretch
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) / zx * flip, -torch.sin(angle) / zy
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) / zx * flip, torch.cos(angle) / zy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    if elastic > 0:
        coarse = (torch.rand(n, 2, ELASTIC_GRID, ELASTIC_GRID, generator=g) * 2.0 - 1.0) * elastic
        field = F.interpolate(coarse, size=x.shape[-2:], mode="bicubic", align_corners=True)
        grid = grid + field.permute(0, 2, 3, 1).to(grid)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """A randomly warped and jittered copy of ``x`` ``(N, C, H, W)`` in [0, 1].

    Random numbers come from ``g`` (a CPU generator) so a seeded run is reproducible on any
    device.
    """
    if not cfg.enabled:
        return x
    n = x.shape[0]
    out = _warp(x, cfg.rotate_deg, cfg.scale, cfg.hflip, g)
    contrast = (1.0 + _uniform(n, cfg.contrast, g)).view(n, 1, 1, 1).to(x.device, x.dtype)
    bright = _uniform(n, cfg.brightness, g).view(n, 1, 1, 1).to(x.device, x.dtype)
    return (out * contrast + bright).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class HUAugmentConfig:
    """Augmentation in Hounsfield units, before windowing, where scanners and patients differ.

    The ranges are wider than any one generator's or scanner's (domain randomisation): a
    model that has seen contrast, noise and size vary this much has less to learn by heart.

    Soft-tissue densities (blood, grey and white matter, CSF) shift and stretch around
    :data:`SOFT_CENTRE` (a different scanner calibration, a different haematocrit), the noise
    level and the reconstruction kernel change (Gaussian noise, then blur or sharpening), and
    the windows' centre and width jitter; then one geometric warp (flip, rotation, scale, an
    aspect stretch and a smooth elastic displacement: other head shapes, other bleed
    outlines), with air outside. ``enabled=False`` makes it the identity.
    """

    enabled: bool = True
    hflip: float = 0.5
    rotate_deg: float = 15.0
    scale: float = 0.2  # head size: zoom uniform in [1 - x, 1 + x]
    aspect: float = 0.1  # head shape: one axis x (1 + u), the other / (1 + u), |u| <= x
    elastic: float = 0.03  # smooth displacement up to x of the half width (~3.5 mm at 256 px)
    soft_offset_hu: float = 8.0  # soft tissue + uniform in [-x, x] HU
    soft_stretch: float = 0.25  # soft tissue contrast x uniform in [1 - x, 1 + x]
    noise_hu: float = 12.0  # Gaussian noise sd uniform in [0, x] HU
    blur_sigma: float = 1.3  # with probability 1/3 blur, sigma uniform in [0.3, x] px
    sharpen: float = 1.0  # with probability 1/3 unsharp mask, amount uniform in [0, x]
    window_centre_hu: float = 5.0  # window centres + uniform in [-x, x] HU
    window_width: float = 0.15  # window widths x uniform in [1 - x, 1 + x]
    # With bleed maps (phantoms): in half the samples, the blood's contrast over the tissue
    # around it x uniform in [1 - x, 1] (fainter bleeds than the generator drew); 0: off.
    blood_fade: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"space": "hounsfield"}


NO_HU_AUGMENT = HUAugmentConfig(enabled=False)

#: Centre (HU) of the soft-tissue stretch, and the HU band it applies to (tapering outside).
SOFT_CENTRE = 30.0
SOFT_BAND = (-100.0, 150.0)
SOFT_TAPER = 100.0
AIR = -1000.0


def _gaussian_kernel(sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Per-sample normalised 1-D Gaussian kernels ``(N, 2 * radius + 1)``."""
    t = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None].clamp(min=1e-3)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable per-sample Gaussian blur of ``(N, 1, H, W)``."""
    n = x.shape[0]
    k = _gaussian_kernel(sigma)
    r = k.shape[1] // 2
    grouped = x.transpose(0, 1)  # (1, N, H, W): one group per sample
    grouped = F.conv2d(F.pad(grouped, (r, r, 0, 0), mode="replicate"), k.view(n, 1, 1, -1),
                       groups=n)  # fmt: skip
    grouped = F.conv2d(F.pad(grouped, (0, 0, r, r), mode="replicate"), k.view(n, 1, -1, 1),
                       groups=n)  # fmt: skip
    return grouped.transpose(0, 1)


#: Tissue a bleed is faded against, and faded in (HU): not bone, not air.
FADE_TISSUE = (-20.0, 120.0)
#: Width of the ring around a bleed whose mean is the level blood is faded towards (pixels).
FADE_RING_PX = 3


def fade_blood(hu: torch.Tensor, bleed: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """HU planes ``(N, P, H, W)`` with the blood of the middle plane (``bleed`` ``(N, 1, H, W)``,
    1 where it bleeds) brought towards the mean of the tissue around it: its contrast times
    ``factor`` ``(N,)`` (1: unchanged). Only tissue pixels change (bone and air beside an
    extra-axial bleed keep theirs); the edge is softened as a reconstruction kernel would."""
    n, planes = hu.shape[:2]
    centre = planes // 2
    plane = hu[:, centre : centre + 1]
    tissue = ((plane > FADE_TISSUE[0]) & (plane < FADE_TISSUE[1])).to(hu)
    size = 2 * FADE_RING_PX + 1
    ring = (F.max_pool2d(bleed, size, stride=1, padding=FADE_RING_PX) - bleed).clamp(0, 1)
    ring = ring * tissue
    area = ring.sum(dim=(2, 3), keepdim=True)
    level = (plane * ring).sum(dim=(2, 3), keepdim=True) / area.clamp(min=1.0)
    k = torch.where(area >= 10, factor.view(n, 1, 1, 1).to(hu), torch.ones_like(area))
    weight = _blur(bleed, torch.full((n,), 0.7)).clamp(0, 1) * tissue
    out = hu.clone()
    out[:, centre : centre + 1] = plane - weight * (1.0 - k) * (plane - level)
    return out


@overload
def augment_hu(
    hu: torch.Tensor, cfg: HUAugmentConfig, g: torch.Generator, masks: None = None
) -> torch.Tensor: ...
@overload
def augment_hu(
    hu: torch.Tensor, cfg: HUAugmentConfig, g: torch.Generator, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]: ...
def augment_hu(
    hu: torch.Tensor,
    cfg: HUAugmentConfig,
    g: torch.Generator,
    masks: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """A randomly altered copy of HU planes ``(N, P, H, W)`` (densities, noise, kernel, pose).

    With ``masks`` ``(N, K, H, W)`` (per-pixel bleed masks of phantoms) the masks get the same
    pose (flip, rotation, scale) as the planes, and ``(hu, masks)`` is returned; with
    ``cfg.blood_fade`` they also say where blood is faded (:func:`fade_blood`), before the
    noise and the kernel.
    """
    if not cfg.enabled:
        return hu if masks is None else (hu, masks)
    n, dev, dt = hu.shape[0], hu.device, hu.dtype

    def u(half: float) -> torch.Tensor:
        return _uniform(n, half, g).view(n, 1, 1, 1).to(dev, dt)

    lo, hi = SOFT_BAND
    weight = ((hu - (lo - SOFT_TAPER)) / SOFT_TAPER).clamp(0, 1) * (
        ((hi + SOFT_TAPER) - hu) / SOFT_TAPER
    ).clamp(0, 1)
    stretched = (
        SOFT_CENTRE + (hu - SOFT_CENTRE) * (1.0 + u(cfg.soft_stretch)) + u(cfg.soft_offset_hu)
    )
    out = hu + weight * (stretched - hu)
    if cfg.blood_fade > 0 and masks is not None:
        factor = 1.0 - torch.rand(n, generator=g) * cfg.blood_fade
        factor = torch.where(torch.rand(n, generator=g) < 0.5, factor, torch.ones(n))
        out = fade_blood(out, masks.sum(dim=1, keepdim=True).clamp(0, 1).to(dt), factor)
    sd = (torch.rand(n, generator=g) * cfg.noise_hu).view(n, 1, 1, 1).to(dev, dt)
    noise = torch.randn(hu.shape, generator=g).to(dev, dt)
    body = (hu > AIR + 200.0).to(dt)  # no noise in the air around the head
    out = out + noise * sd * body
    kernel = torch.randint(3, (n,), generator=g)  # 0 as is, 1 blur, 2 sharpen
    if cfg.blur_sigma > 0 and bool((kernel > 0).any()):
        sigma = 0.3 + torch.rand(n, generator=g) * max(cfg.blur_sigma - 0.3, 0.0)
        blurred = _blur(out, sigma.to(dev, dt))
        amount = (torch.rand(n, generator=g) * cfg.sharpen).view(n, 1, 1, 1).to(dev, dt)
        k = kernel.view(n, 1, 1, 1).to(dev)
        out = torch.where(k == 1, blurred, torch.where(k == 2, out + amount * (out - blurred), out))
    # Geometric warp with air outside: warp (HU - AIR), whose padding zero is air.
    pose = (cfg.rotate_deg, cfg.scale, cfg.hflip, g, cfg.aspect, cfg.elastic)
    if masks is None:
        return _warp(out - AIR, *pose) + AIR
    planes = out.shape[1]
    both = _warp(torch.cat([out - AIR, masks.to(dt)], dim=1), *pose)
    return both[:, :planes] + AIR, both[:, planes:]


def jitter_windows(
    windows: tuple, n: int, cfg: HUAugmentConfig, g: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-sample (centre, width) tensors ``(N, 1, 1)`` for each window, jittered by ``cfg``."""
    out = []
    for w in windows:
        shift = _uniform(n, cfg.window_centre_hu if cfg.enabled else 0.0, g)
        stretch = 1.0 + _uniform(n, cfg.window_width if cfg.enabled else 0.0, g)
        out.append(((w.center + shift).view(n, 1, 1), (w.width * stretch).view(n, 1, 1)))
    return out
