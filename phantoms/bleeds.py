"""Hemorrhage shapes (closed forms of the canonical head coordinates) and their sampling.

Each bleed paints a mask on a slice's geometry, restricted to the tissues it can occupy, and
gives the HU of its pixels: uniform clot, a hyperacute swirl (unclotted blood, lower HU, with
clotted islands), or mixed density (dependent layering, acute on chronic). Sampling draws every
size, density and shape from the study's :class:`phantoms.presets.Preset`; a share of the
bleeds (``subtle_fraction``) is thin, small or faint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ichnode import subtypes as st
from phantoms.anatomy import (
    CISTERNA_MAGNA,
    EDEMA_DROP,
    EGG,
    FRONTAL_BOSS,
    FRONTAL_BOSS_AXES,
    FRONTAL_BOSS_CENTRE,
    SKULL_POSTERIOR,
    SUPRASELLAR,
    Head,
    SliceGeometry,
    Tissue,
    _ellipsoid,
    all_ventricles,
    cranial_floor,
    tentorium,
)
from phantoms.presets import Preset, draw

#: Bleeds keep this far (mm) from the midline on their own side (the falx stops them).
MIDLINE_MARGIN = 2.0
UNIFORM, SWIRL, MIXED = "uniform", "swirl", "mixed"
SWIRL_WAVELENGTH = 6.0  # mm
SWIRL_SPOTS = 0.35  # share of a swirl that is clotted (at the acute density)
MIXED_DROP = (12.0, 25.0)  # HU the non-dependent part of a mixed bleed is lower
#: Shares of convexity / falx / tentorium among subdurals; of sulcal / cisternal SAH.
SUBDURAL_SITES = {"convexity": 0.65, "falx": 0.2, "tentorium": 0.15}
CISTERNAL_SAH = 0.35
IVH_CAST = 0.3
#: Heights an intraparenchymal bleed is centred at, and its clearance from the inner table (mm).
IPH_HEIGHTS = (-5.0, 50.0)
IPH_CLEARANCE = 10.0


@dataclass(frozen=True)
class Texture:
    """How a bleed's density varies over its pixels."""

    kind: str = UNIFORM
    hu: float = 70.0
    low_hu: float = 70.0  # the swirl's or the non-dependent part's density
    phase: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def values(self, g: SliceGeometry, mask: np.ndarray) -> np.ndarray | float:
        if self.kind == UNIFORM:
            return self.hu
        x, y, z = g.x[mask], g.y[mask], g.z[mask]
        if self.kind == SWIRL:
            k = 2.0 * math.pi / SWIRL_WAVELENGTH
            field = np.cos(k * x + self.phase[0]) * np.cos(k * y + self.phase[1])
            field = field * np.cos(k * z + self.phase[2])
            spots = field > 1.0 - 2.0 * SWIRL_SPOTS
            return np.where(spots, self.hu, self.low_hu)
        # Mixed: denser dependently (posterior, the patient lies supine).
        level = float(np.median(y)) + self.phase[0]
        return np.where(y > level, self.hu, self.low_hu)


@dataclass(frozen=True)
class Bleed:
    """A hemorrhage: its subtype, texture and canonical-height extent (to skip slices)."""

    subtype: str
    texture: Texture
    z_lo: float
    z_hi: float
    allowed: ClassVar[tuple[Tissue, ...]] = (Tissue.BRAIN, Tissue.CSF)

    @property
    def hu(self) -> float:
        return self.texture.hu

    def mask(self, g: SliceGeometry) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def edema(self, g: SliceGeometry) -> np.ndarray | None:
        """Hypodense rim around the bleed, if it has one."""
        return None


@dataclass(frozen=True)
class ExtraAxial(Bleed):
    """Epidural (biconvex lens) or subdural (long thin crescent) against the inner table."""

    direction: tuple[float, float, float] = (1.0, 0.0, 0.0)  # unit, normalised coordinates
    half_angle: float = 0.4  # rad
    thickness: float = 10.0  # mm at the centre
    side: int = 1

    def mask(self, g: SliceGeometry) -> np.ndarray:
        d = self.direction
        cos = (g.xn * d[0] + g.yn * d[1] + g.zn * d[2]) / np.maximum(g.r, 1e-6)
        q = (1.0 - cos) / (1.0 - math.cos(self.half_angle))  # ~ (angle / half_angle)^2
        if self.subtype == st.EPIDURAL:
            profile = 1.0 - q  # parabolic: a lens, thickest in the middle
        else:
            profile = np.sqrt(np.clip(1.0 - q * q, 0.0, None))  # flat with tapered ends
        return (
            (g.depth >= 0)
            & (g.vault_depth < self.thickness * profile)
            & (self.side * g.x > MIDLINE_MARGIN)
            & (g.tent > 0)
        )


@dataclass(frozen=True)
class Falcine(Bleed):
    """Interhemispheric subdural: a thin sheet along one or both sides of the falx."""

    y_centre: float = 0.0
    y_half: float = 30.0
    z_centre: float = 40.0
    z_half: float = 20.0
    thickness: float = 3.0
    side: int = 0  # 0: both sides

    def mask(self, g: SliceGeometry) -> np.ndarray:
        q = ((g.y - self.y_centre) / self.y_half) ** 2 + ((g.z - self.z_centre) / self.z_half) ** 2
        reach = 0.6 + self.thickness * np.sqrt(np.clip(1.0 - q, 0.0, None))
        ax = g.x if self.side == 0 else self.side * g.x
        band = (np.abs(ax) if self.side == 0 else ax) > 0.6
        return band & (np.abs(g.x) < reach) & g.fissure_zone & (g.depth >= 0)


@dataclass(frozen=True)
class Tentorial(Bleed):
    """Subdural along the tentorium: a thin layer just above or below it on one side."""

    side: int = 1
    thickness: float = 3.0
    below: bool = False
    u_reach: float = 40.0

    def mask(self, g: SliceGeometry) -> np.ndarray:
        h = -g.tent if self.below else g.tent
        lateral = (self.side * g.x > MIDLINE_MARGIN + 8.0) & (self.side * g.x < self.u_reach)
        return lateral & (h > 0.7) & (h < 0.7 + self.thickness) & (g.y > 0) & (g.depth >= 0)


@dataclass(frozen=True)
class Subarachnoid(Bleed):
    """Blood filling (and widening) the sulci, fissures and cisterns within a sphere."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radius: float = 30.0
    half_width: float = 1.0
    cisternal: bool = False
    allowed: ClassVar[tuple[Tissue, ...]] = (Tissue.BRAIN, Tissue.CSF, Tissue.FALX)

    def mask(self, g: SliceGeometry) -> np.ndarray:
        c = self.center
        near = (g.x - c[0]) ** 2 + (g.y - c[1]) ** 2 + (g.z - c[2]) ** 2 < self.radius**2
        h = g.head
        sulci = (g.sulcus < self.half_width) & (g.depth > h.csf_rim) & (g.tent > 0)
        sulci &= g.depth < h.sulcus_depth
        fissure = g.fissure_zone & (np.abs(g.x) < h.fissure_half + self.half_width)
        cistern = g.cistern & (g.tissue == Tissue.CSF)
        if self.cisternal:
            return near & (g.depth >= 0) & (cistern | fissure)
        return near & (g.depth >= 0) & (sulci | fissure | cistern)


@dataclass(frozen=True)
class Intraparenchymal(Bleed):
    """A lumpy blob in the parenchyma with a darker rim of edema."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radius: float = 10.0
    rim: float = 3.0
    lumps: tuple[tuple[float, float, float, float, float], ...] = ()  # mx, my, mz, phase, amp

    def _radius_ratio(self, g: SliceGeometry) -> tuple[np.ndarray, np.ndarray | float]:
        c = self.center
        dx, dy, dz = g.x - c[0], g.y - c[1], g.z - c[2]
        dist = np.sqrt(dx * dx + dy * dy + dz * dz)
        inv = 1.0 / np.maximum(dist, 1e-6)
        wobble: np.ndarray | float = 1.0
        for mx, my, mz, phase, amp in self.lumps:
            wobble = wobble + amp * np.cos((mx * dx + my * dy + mz * dz) * inv + phase)
        return dist, self.radius * wobble

    def mask(self, g: SliceGeometry) -> np.ndarray:
        dist, reach = self._radius_ratio(g)
        return dist < reach

    def edema(self, g: SliceGeometry) -> np.ndarray:
        dist, reach = self._radius_ratio(g)
        return (dist >= reach) & (dist < reach + self.rim)


@dataclass(frozen=True)
class Intraventricular(Bleed):
    """Blood layering dependently (occipital horns) or a cast filling the ventricles."""

    side: int = 0  # +1 left, -1 right, 0 both
    y_level: float = 0.0  # layering blood lies behind this y (mm)
    cast: bool = False
    allowed: ClassVar[tuple[Tissue, ...]] = (Tissue.VENTRICLE,)

    def mask(self, g: SliceGeometry) -> np.ndarray:
        inrange = (g.z >= self.z_lo) & (g.z <= self.z_hi)
        if self.cast and g.ventricles is not None:  # always given by the renderer
            return g.ventricles & inrange
        sides = (-1, 1) if self.side == 0 else (self.side,)
        vent = np.zeros_like(g.depth, dtype=bool)
        for s in sides:
            vent |= g.lateral[s]
        return vent & (g.y > self.y_level) & inrange


# ----------------------------------------------------------------------------- sampling


def _pick(rng: np.random.Generator, span: tuple[float, float], lo: float, hi: float) -> float:
    """A height in [lo, hi] that the series also covers (its middle when they miss)."""
    low, high = max(lo, span[0]), min(hi, span[1])
    if low > high:
        return float(np.clip((span[0] + span[1]) / 2.0, lo, hi))
    return float(rng.uniform(low, high))


def _texture(rng: np.random.Generator, p: Preset, subtle: bool) -> Texture:
    """Acute clot, faint blood when subtle, sometimes a hyperacute swirl or mixed density."""
    hu = draw(rng, p.subtle_blood_hu if subtle else p.blood_hu)
    roll = rng.random()
    a, b, c = (float(x) for x in rng.uniform(0.0, 2.0 * math.pi, size=3))
    phase = (a, b, c)
    if roll < p.hyperacute_rate:
        return Texture(SWIRL, hu=hu, low_hu=draw(rng, p.hyperacute_hu), phase=phase)
    if roll < p.hyperacute_rate + p.mixed_rate:
        return Texture(MIXED, hu=hu, low_hu=hu - draw(rng, MIXED_DROP), phase=(0.0, 0.0, 0.0))
    return Texture(UNIFORM, hu=hu)


def _choose(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array(list(weights.values()))
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _extra_axial(
    subtype: str, head: Head, span: tuple[float, float], rng: np.random.Generator,
    subtle: bool, p: Preset,
) -> Bleed:  # fmt: skip
    texture = _texture(rng, p, subtle)
    epidural = subtype == st.EPIDURAL
    site = "convexity" if epidural else _choose(rng, SUBDURAL_SITES)
    thin = draw(rng, p.thin_extra_axial_mm)
    if site == "falx":
        zc = _pick(rng, span, 25.0, 70.0)
        zh = rng.uniform(12.0, 25.0)
        return Falcine(
            subtype=subtype, texture=texture, z_lo=zc - zh, z_hi=zc + zh,
            y_centre=float(rng.uniform(-40.0, 50.0)), y_half=float(rng.uniform(20.0, 45.0)),
            z_centre=zc, z_half=float(zh), thickness=float(thin if subtle else thin * 1.5),
            side=int(rng.choice((-1, 0, 1))),
        )  # fmt: skip
    if site == "tentorium":
        return Tentorial(
            subtype=subtype, texture=texture, z_lo=-75.0, z_hi=0.0, side=int(rng.choice((-1, 1))),
            thickness=float(thin), below=bool(rng.random() < 0.4),
            u_reach=float(rng.uniform(30.0, 60.0)),
        )  # fmt: skip
    side = int(rng.choice((-1, 1)))
    beta = math.radians(rng.uniform(-50.0, 50.0) if epidural else rng.uniform(-60.0, 60.0))
    zc = _pick(rng, span, -20.0, 60.0)
    zn = float(np.clip(zc / head.c_up, -0.9, 0.9))
    h = math.sqrt(1.0 - zn * zn)
    if epidural:
        half = draw(rng, p.epidural_half_angle)
        thick = max(thin, 4.0) if subtle else draw(rng, p.thick_epidural_mm)
    else:
        half = draw(rng, p.subdural_half_angle)
        thick = thin if subtle else draw(rng, p.thick_subdural_mm)
    reach = half * head.c_up + 10.0
    return ExtraAxial(
        subtype=subtype, texture=texture, z_lo=zc - reach, z_hi=zc + reach,
        direction=(side * math.cos(beta) * h, math.sin(beta) * h, zn),
        half_angle=float(half), thickness=float(thick), side=side,
    )  # fmt: skip


def _brain_depth(head: Head, x: float, y: float, z: float) -> float:
    """Approximate canonical depth of a point inside the cranial cavity (vault and floor)."""
    a = head.a * (1.0 + EGG * y / head.b)
    c = head.c_up if z > 0 else head.c_low
    xn, yn, zn = x / a, y / head.b, z / c
    r = math.sqrt(xn * xn + yn * yn + zn * zn)
    grad = math.sqrt((xn / a) ** 2 + (yn / head.b) ** 2 + (zn / c) ** 2) / max(r, 1e-6)
    temporal = head.temporalis * min(max((abs(x) - 45.0) / 15.0, 0.0), 1.0)
    temporal *= math.exp(-(((y + 15.0) / 30.0) ** 2))
    reach = float(_ellipsoid(x, y, z, FRONTAL_BOSS_CENTRE, FRONTAL_BOSS_AXES))
    boss = FRONTAL_BOSS * head.frontal_sinus * math.exp(-reach)
    skull = head.skull * (1.0 + SKULL_POSTERIOR * y / head.b) + boss
    vault = (1.0 - r) / max(grad, 1e-6) - head.scalp - temporal - skull
    floor = float(cranial_floor(np.array([[x]]), np.array([[y]]), 1e6)[0, 0])
    return min(vault, z - floor)


def _in_brain_point(
    rng: np.random.Generator, head: Head, zc: float, min_depth: float, max_depth: float
) -> tuple[float, float, float]:
    """A point at height ``zc`` between ``min_depth`` and ``max_depth`` inside the cavity."""
    best = (0.0, 0.0, zc)
    for _ in range(200):
        x, y = rng.uniform(-0.8, 0.8) * head.a, rng.uniform(-0.8, 0.8) * head.b
        d = _brain_depth(head, x, y, zc)
        if min_depth <= d <= max_depth:
            return (float(x), float(y), zc)
        if d > min_depth:
            best = (float(x), float(y), zc)
    return best


def _clear_of_ventricles(head: Head, center: tuple[float, float, float], reach: float) -> bool:
    """No ventricle within ``reach`` mm of ``center`` (checked on 27 probe points)."""
    offs = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
    offs = offs / np.maximum(np.linalg.norm(offs, axis=1, keepdims=True), 1.0) * reach
    x, y, z = (center[i] + offs[:, i] for i in range(3))
    return not bool(all_ventricles(head.ventricles, x, y, z).any())


def _intraparenchymal(
    head: Head, span: tuple[float, float], rng: np.random.Generator, subtle: bool, p: Preset
) -> Intraparenchymal:
    radius = draw(rng, p.small_iph_radius_mm if subtle else p.large_iph_radius_mm)
    rim = rng.uniform(0.5, 2.0) if subtle else rng.uniform(2.0, 5.0)
    center = (0.0, 0.0, 0.0)
    for _ in range(50):
        zc = _pick(rng, span, *IPH_HEIGHTS)
        center = _in_brain_point(rng, head, zc, radius + rim + IPH_CLEARANCE, 200.0)
        if _clear_of_ventricles(head, center, radius * 1.25 + rim + 2.0):
            break
    lumps = tuple(
        (*(rng.normal(size=3) * 1.5), rng.uniform(0.0, 2 * math.pi), draw(rng, p.iph_lumpiness))
        for _ in range(3)
    )
    reach = radius * 1.4 + rim
    return Intraparenchymal(
        subtype=st.INTRAPARENCHYMAL, texture=_texture(rng, p, subtle),
        z_lo=center[2] - reach, z_hi=center[2] + reach, center=center, radius=float(radius),
        rim=float(rim), lumps=tuple(_lump(lump) for lump in lumps),
    )  # fmt: skip


def _lump(values: tuple) -> tuple[float, float, float, float, float]:
    mx, my, mz, phase, amp = (float(v) for v in values)
    return mx, my, mz, phase, amp


def _subarachnoid(
    head: Head, span: tuple[float, float], rng: np.random.Generator, subtle: bool, p: Preset
) -> Subarachnoid:
    cisternal = span[0] <= SUPRASELLAR[0][2] and rng.random() < CISTERNAL_SAH
    if cisternal:
        centre = SUPRASELLAR[0] if rng.random() < 0.7 else CISTERNA_MAGNA[0]
        cx, cy, cz = (float(c) for c in centre)
        center = (cx, cy, cz)
        radius = rng.uniform(18.0, 26.0) if subtle else rng.uniform(28.0, 40.0)
    else:  # convexity / sulcal: a patch near the surface
        center = _in_brain_point(rng, head, _pick(rng, span, -10.0, 70.0), 4.0, 22.0)
        radius = rng.uniform(12.0, 20.0) if subtle else rng.uniform(25.0, 40.0)
    return Subarachnoid(
        subtype=st.SUBARACHNOID, texture=_texture(rng, p, subtle),
        z_lo=center[2] - radius, z_hi=center[2] + radius, center=center, radius=float(radius),
        half_width=float(p.sah_half_width_mm[0] if subtle else draw(rng, p.sah_half_width_mm)),
        cisternal=bool(cisternal),
    )  # fmt: skip


def _intraventricular(
    head: Head, span: tuple[float, float], rng: np.random.Generator, subtle: bool, p: Preset
) -> Intraventricular:
    v = head.ventricles
    cast = (not subtle) and rng.random() < IVH_CAST
    frac = rng.uniform(0.45, 0.65) if subtle else rng.uniform(-0.4, 0.3)
    zc = _pick(rng, span, v.oz - v.wz - 0.5 * v.arch, v.oz + 0.6 * v.wz)
    half = rng.uniform(8.0, 18.0) if not cast else 60.0
    return Intraventricular(
        subtype=st.INTRAVENTRICULAR, texture=_texture(rng, p, subtle),
        z_lo=zc - half, z_hi=zc + half, side=int(rng.choice((-1, 0, 1))),
        y_level=float(v.oy + frac * v.wy), cast=bool(cast),
    )  # fmt: skip


def sample_bleed(
    subtype: str, head: Head, span: tuple[float, float], rng: np.random.Generator, preset: Preset
) -> Bleed:
    """Draw a hemorrhage of ``subtype`` placed where the series (canonical ``span``) sees it."""
    subtle = bool(rng.random() < preset.subtle_fraction)
    if subtype in (st.EPIDURAL, st.SUBDURAL):
        return _extra_axial(subtype, head, span, rng, subtle, preset)
    if subtype == st.INTRAPARENCHYMAL:
        return _intraparenchymal(head, span, rng, subtle, preset)
    if subtype == st.SUBARACHNOID:
        return _subarachnoid(head, span, rng, subtle, preset)
    if subtype == st.INTRAVENTRICULAR:
        return _intraventricular(head, span, rng, subtle, preset)
    raise ValueError(f"not a hemorrhage subtype: {subtype!r}")


__all__ = ["EDEMA_DROP", "Bleed", "sample_bleed", "tentorium"]
