"""A seeded analytic 3-D head in Hounsfield units, rendered one axial slice at a time.

The head lives in its own coordinates: millimetres along the DICOM patient axes (+x the
patient's left, +y posterior, +z superior), origin at the centre of the head. Every structure
-- scalp, skull, cortex with sulci, ventricles, falx, cisterns, skull base, and the
hemorrhages -- is a closed-form function of (x, y, z), so consecutive slices cut one and the
same 3-D anatomy. The slice plane may be rotated, shifted and tilted against the head.

Alongside the HU image a render returns the tissue map (anatomy without bleeds) and the bleed
map (which subtype painted each pixel), so labels are counted from the very pixels written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

import numpy as np
from scipy import ndimage

from ichnode import subtypes as st


class Tissue(IntEnum):
    """Codes of the tissue map (the anatomy before any hemorrhage is painted)."""

    AIR = 0
    SCALP = 1
    BONE = 2
    BRAIN = 3
    CSF = 4
    VENTRICLE = 5
    FALX = 6


#: Integer HU range every rendered slice is clipped to (fits all storage variants).
HU_MIN, HU_MAX = -1000, 3071
AIR_HU = -1000.0
#: Plane waves summed into the gyral field; its zero set is the maze of sulci.
N_GYRAL_WAVES = 6
#: Gyral wavelength range (mm).
GYRAL_WAVELENGTH = (16.0, 24.0)
#: A bleed is labelled on a slice when it shows at least this many pixels at 512 x 512.
MIN_BLEED_PIXELS_512 = 20
#: Bleeds keep this far (mm) from the midline on their own side (the falx stops them).
MIDLINE_MARGIN = 2.0


def min_bleed_pixels(size: int) -> int:
    """Pixels a bleed needs on a slice to count at ``size`` (the 512 threshold, by area)."""
    return max(3, math.ceil(MIN_BLEED_PIXELS_512 * (size / 512.0) ** 2))


@dataclass(frozen=True)
class Ventricles:
    """Lateral ventricles (a bent ellipsoid per side) and the third and fourth ventricles."""

    ox: float  # lateral offset of each body's axis from the midline (mm)
    oy: float  # antero-posterior centre (mm)
    oz: float  # height of the bodies (mm)
    wx: float  # half-widths (mm)
    wy: float
    wz: float
    bend: float  # horns diverge laterally by this much at their tips (mm)
    arch: float  # horns dip down by this much at their tips (mm)


@dataclass(frozen=True)
class Head:
    """Per-study anatomy and acquisition parameters (mm and HU)."""

    a: float  # outer semi-axes: left-right, antero-posterior, supero-inferior
    b: float
    c: float
    scalp: float
    skull: float  # vault thickness
    skull_base: float  # extra thickness reached at the base
    bone_hu: float
    diploe_hu: float
    scalp_hu: float
    grey_hu: float
    white_hu: float
    csf_hu: float
    falx_hu: float
    csf_rim: float  # CSF between the inner table and the cortex
    sulcus_half: float
    sulcus_depth: float
    fissure_half: float
    waves: np.ndarray  # (N, 3) gyral wave vectors (rad/mm)
    phases: np.ndarray  # (N,)
    ventricles: Ventricles
    calcifications: tuple[tuple[float, float, float, float, float], ...]  # x, y, z, r, HU
    noise_sd: float  # after smoothing
    blur: float  # Gaussian sigma in pixels
    angle: float  # in-plane rotation (rad)
    shift: tuple[float, float]  # in-plane translation (mm)
    tilt: float  # head flexion against the slice plane (rad)


def sample_head(rng: np.random.Generator) -> Head:
    """Draw one head: size, shape, skull, densities, atrophy, pose and noise all vary."""
    scale = rng.uniform(0.9, 1.08)
    atrophy = rng.uniform(0.0, 1.0)  # widens sulci, ventricles and the CSF rim together
    wavelength = rng.uniform(*GYRAL_WAVELENGTH, size=N_GYRAL_WAVES)
    dirs = rng.normal(size=(N_GYRAL_WAVES, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    white = rng.uniform(25.0, 31.0)
    vent_w = 4.0 + 5.0 * atrophy + rng.uniform(-0.8, 0.8)
    calcs: list[tuple[float, float, float, float, float]] = []
    oy, oz = rng.uniform(-6.0, 2.0), rng.uniform(14.0, 22.0)
    if rng.random() < 0.5:  # pineal gland
        calcs.append((0.0, oy + 24.0, oz - 14.0, rng.uniform(2.0, 3.5), rng.uniform(120, 260)))
    if rng.random() < 0.4:  # choroid plexus in both trigones
        r, hu = rng.uniform(2.0, 3.2), rng.uniform(110, 220)
        for side in (-1.0, 1.0):
            calcs.append((side * (vent_w + 9.0), oy + 20.0, oz - 4.0, r, hu))
    return Head(
        a=scale * rng.uniform(70.0, 78.0),
        b=scale * rng.uniform(88.0, 97.0),
        c=scale * rng.uniform(92.0, 102.0),
        scalp=rng.uniform(3.5, 7.0),
        skull=rng.uniform(5.0, 8.5),
        skull_base=rng.uniform(3.0, 7.0),
        bone_hu=rng.uniform(1250.0, 1500.0),
        diploe_hu=rng.uniform(700.0, 900.0),
        scalp_hu=rng.uniform(20.0, 60.0),
        grey_hu=white + rng.uniform(6.0, 10.0),
        white_hu=white,
        csf_hu=rng.uniform(3.0, 12.0),
        falx_hu=rng.uniform(42.0, 55.0),
        csf_rim=0.6 + 1.6 * atrophy,
        sulcus_half=0.45 + 0.7 * atrophy,
        sulcus_depth=rng.uniform(12.0, 18.0),
        fissure_half=0.8 + 1.2 * atrophy,
        waves=(dirs * (2.0 * np.pi / wavelength)[:, None]).astype(np.float32),
        phases=rng.uniform(0.0, 2.0 * np.pi, size=N_GYRAL_WAVES).astype(np.float32),
        ventricles=Ventricles(
            ox=vent_w + rng.uniform(1.0, 2.5),
            oy=oy,
            oz=oz,
            wx=vent_w,
            wy=rng.uniform(26.0, 32.0),
            wz=rng.uniform(9.0, 13.0),
            bend=rng.uniform(6.0, 12.0),
            arch=rng.uniform(6.0, 14.0),
        ),
        calcifications=tuple(calcs),
        noise_sd=rng.uniform(4.0, 8.0),
        blur=rng.uniform(0.5, 0.8),
        angle=math.radians(rng.uniform(-10.0, 10.0)),
        shift=(rng.uniform(-10.0, 10.0), rng.uniform(-10.0, 10.0)),
        tilt=math.radians(rng.uniform(-8.0, 8.0)),
    )


def _ellipsoid(x, y, z, center, axes) -> np.ndarray:
    """Normalised squared radius of points relative to an axis-aligned ellipsoid."""
    return (
        ((x - center[0]) / axes[0]) ** 2
        + ((y - center[1]) / axes[1]) ** 2
        + ((z - center[2]) / axes[2]) ** 2
    )


def lateral_ventricle(v: Ventricles, side: float, x, y, z) -> np.ndarray:
    """Boolean mask of the lateral ventricle on ``side`` (+1 left, -1 right)."""
    t = ((y - v.oy) / v.wy) ** 2
    xc = x - side * (v.ox + v.bend * t)
    zc = z - v.oz + v.arch * t
    return (xc / v.wx) ** 2 + t + (zc / v.wz) ** 2 < 1.0


def other_ventricles(v: Ventricles, x, y, z) -> np.ndarray:
    """Third (midline slit below the bodies) and fourth (posterior fossa) ventricles."""
    third = _ellipsoid(x, y, z, (0.0, v.oy + 4.0, v.oz - v.wz - 8.0), (2.0, 12.0, 8.0)) < 1.0
    fourth = _ellipsoid(x, y, z, (0.0, v.oy + 32.0, -40.0), (6.0, 5.0, 8.0)) < 1.0
    return third | fourth


def depth_below_scalp(head: Head, x, y, z) -> np.ndarray:
    """Approximate distance (mm) inward from the head's outer surface (negative outside).

    First-order distance to the ellipsoid: (1 - r) / |grad r|, exact on the surface and
    monotonic along every ray from the centre. The head is slightly egg-shaped (wider behind).
    """
    a = head.a * (1.0 + 0.05 * y / head.b)
    xn, yn, zn = x / a, y / head.b, z / head.c
    r = np.sqrt(xn * xn + yn * yn + zn * zn)
    grad = np.sqrt((xn / a) ** 2 + (yn / head.b) ** 2 + (zn / head.c) ** 2) / np.maximum(r, 1e-6)
    return (1.0 - r) / np.maximum(grad, 1e-6)


def skull_thickness(head: Head, y, z) -> np.ndarray:
    """Vault thickness, thicker behind and growing towards the base."""
    base = np.clip(-z / 60.0, 0.0, 1.0)
    return head.skull * (1.0 + 0.08 * y / head.b) + head.skull_base * base


def brain_depth(head: Head, x, y, z) -> np.ndarray:
    """Distance (mm) below the inner table of the skull (negative in bone, scalp, air)."""
    return depth_below_scalp(head, x, y, z) - head.scalp - skull_thickness(head, y, z)


@dataclass
class SliceGeometry:
    """Per-slice fields the anatomy and the bleeds are cut from (all ``(size, size)``)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    xn: np.ndarray  # normalised coordinates (x/a, y/b, z/c) and their norm
    yn: np.ndarray
    zn: np.ndarray
    r: np.ndarray
    depth: np.ndarray  # below the inner table (mm)
    sulcus: np.ndarray  # approximate distance to the nearest sulcus line (mm)
    fissure_zone: np.ndarray  # where the interhemispheric fissure runs
    cistern: np.ndarray
    tissue: np.ndarray
    head: Head
    lateral: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Bleed:
    """A hemorrhage: its subtype, density and head-z extent (to skip slices it misses)."""

    subtype: str
    hu: float
    z_lo: float
    z_hi: float
    allowed: ClassVar[tuple[Tissue, ...]] = (Tissue.BRAIN, Tissue.CSF)

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
            & (g.depth < self.thickness * profile)
            & (self.side * g.x > MIDLINE_MARGIN)
        )


@dataclass(frozen=True)
class Subarachnoid(Bleed):
    """Blood filling (and widening) the sulci, fissure and cisterns within a sphere."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radius: float = 30.0
    half_width: float = 1.0
    allowed: ClassVar[tuple[Tissue, ...]] = (Tissue.BRAIN, Tissue.CSF, Tissue.FALX)

    def mask(self, g: SliceGeometry) -> np.ndarray:
        c = self.center
        near = (g.x - c[0]) ** 2 + (g.y - c[1]) ** 2 + (g.z - c[2]) ** 2 < self.radius**2
        sulci = (g.sulcus < self.half_width) & (g.depth > g.head.csf_rim)
        sulci &= g.depth < g.head.sulcus_depth
        fissure = g.fissure_zone & (np.abs(g.x) < g.head.fissure_half + self.half_width)
        return near & (g.depth >= 0) & (sulci | fissure | g.cistern)


@dataclass(frozen=True)
class Intraparenchymal(Bleed):
    """A lumpy blob in the parenchyma with a darker rim of edema."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radius: float = 10.0
    rim: float = 3.0
    lumps: tuple[tuple[float, float, float, float, float], ...] = ()  # mx, my, mz, phase, amp

    def _radius_ratio(self, g: SliceGeometry) -> tuple[np.ndarray, np.ndarray]:
        c = self.center
        dx, dy, dz = g.x - c[0], g.y - c[1], g.z - c[2]
        dist = np.sqrt(dx * dx + dy * dy + dz * dz)
        inv = 1.0 / np.maximum(dist, 1e-6)
        wobble = 1.0
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
    """Blood layering in the dependent (posterior) part of one or both lateral ventricles."""

    side: int = 0  # +1 left, -1 right, 0 both
    y_level: float = 0.0  # blood lies behind this y (mm)
    allowed: ClassVar[tuple[Tissue, ...]] = (Tissue.VENTRICLE,)

    def mask(self, g: SliceGeometry) -> np.ndarray:
        sides = (-1, 1) if self.side == 0 else (self.side,)
        vent = np.zeros_like(g.depth, dtype=bool)
        for s in sides:
            vent |= g.lateral[s]
        return vent & (g.y > self.y_level) & (g.z >= self.z_lo) & (g.z <= self.z_hi)


@dataclass(frozen=True)
class RenderedSlice:
    """One rendered slice: integer HU, the tissue map and the bleed map.

    ``bleed`` holds 0, or 1 + the subtype's index in :data:`ichnode.subtypes.SUBTYPES`.
    """

    hu: np.ndarray  # int16
    tissue: np.ndarray  # uint8 Tissue codes
    bleed: np.ndarray  # uint8

    def labels(self) -> dict[str, int]:
        """Per-subtype 0/1 labels of this slice, ``any`` included, read off the bleed map."""
        counts = np.bincount(self.bleed.ravel(), minlength=len(st.SUBTYPES))
        labels = {name: int(counts[st.index(name) + 1] > 0) for name in st.HEMORRHAGE_SUBTYPES}
        labels[st.ANY] = int(any(labels.values()))
        return {name: labels[name] for name in st.SUBTYPES}


class Phantom:
    """Renders axial slices of one head on a ``size`` x ``size`` grid of ``spacing`` mm."""

    def __init__(self, head: Head, size: int, spacing: float) -> None:
        self.head, self.size = head, size
        self.min_pixels = min_bleed_pixels(size)
        coords = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) * np.float32(spacing)
        cols, rows = np.meshgrid(coords, coords)  # x along columns, y along rows
        dx, dy = cols - np.float32(head.shift[0]), rows - np.float32(head.shift[1])
        ca, sa = np.float32(math.cos(head.angle)), np.float32(math.sin(head.angle))
        self.x = ca * dx + sa * dy
        self.y = -sa * dx + ca * dy
        self.tilt = np.float32(math.sin(head.tilt))
        a = head.a * (1.0 + 0.05 * self.y / head.b)  # egg-shaped, as in depth_below_scalp()
        self._xn, self._yn = self.x / a, self.y / np.float32(head.b)
        self._r2_xy = self._xn**2 + self._yn**2
        self._g2_xy = (self._xn / a) ** 2 + (self._yn / np.float32(head.b)) ** 2
        # Gyral waves: the in-plane part of each phase is the same on every slice.
        k = head.waves
        xy_phase = [
            k[i, 0] * self.x + (k[i, 1] + k[i, 2] * self.tilt) * self.y for i in range(len(k))
        ]
        self._wave_cos = [np.cos(p) for p in xy_phase]
        self._wave_sin = [np.sin(p) for p in xy_phase]
        self._gyral_grad = float(np.linalg.norm(k, axis=1).mean()) * math.sqrt(len(k) / 2.0)
        self._z_span = float(np.abs(self.y).max() * abs(self.tilt))
        self.sd_before_blur = head.noise_sd * 2.0 * math.sqrt(math.pi) * head.blur

    def geometry(self, z: float) -> SliceGeometry:
        """The fields of the slice at head height ``z`` (mm), anatomy painted into ``tissue``."""
        head, v = self.head, self.head.ventricles
        x, y = self.x, self.y
        zz = np.float32(z) + self.tilt * y
        xn, yn, zn = self._xn, self._yn, zz / np.float32(head.c)
        r = np.sqrt(self._r2_xy + zn * zn)
        grad = np.sqrt(self._g2_xy + (zn / np.float32(head.c)) ** 2) / np.maximum(r, 1e-6)
        below_scalp = (1.0 - r) / np.maximum(grad, 1e-6)  # as depth_below_scalp()
        depth = below_scalp - head.scalp - skull_thickness(head, y, zz)
        gyral = np.zeros_like(x)
        for i in range(len(head.phases)):
            alpha = float(head.waves[i, 2]) * z + float(head.phases[i])
            gyral += self._wave_cos[i] * np.float32(math.cos(alpha))
            gyral -= self._wave_sin[i] * np.float32(math.sin(alpha))
        sulcus = np.abs(gyral) / np.float32(self._gyral_grad)
        above_cc = zz > v.oz + v.wz + 4.0
        beyond_cc = np.abs(y - v.oy) > v.wy + 10.0
        fissure_zone = (np.abs(x) < head.fissure_half + 3.0) & (above_cc | beyond_cc)
        ring = np.sqrt(x * x + (y - (v.oy + 14.0)) ** 2)
        cistern = (zz > -34.0) & (zz < -16.0) & (ring > 11.0) & (ring < 14.0)

        tissue = np.full(x.shape, Tissue.AIR, dtype=np.uint8)
        tissue[below_scalp >= 0] = Tissue.SCALP
        tissue[below_scalp >= head.scalp] = Tissue.BONE
        inside = depth >= 0
        tissue[inside] = Tissue.BRAIN
        csf = (depth < head.csf_rim) | ((sulcus < head.sulcus_half) & (depth < head.sulcus_depth))
        csf |= fissure_zone & (np.abs(x) < head.fissure_half)
        csf |= cistern
        tissue[inside & csf] = Tissue.CSF
        if self.near(z, v.oz - v.arch / 2.0, v.wz + v.arch / 2.0):
            lateral = {s: lateral_ventricle(v, s, x, y, zz) & inside for s in (-1, 1)}
        else:
            lateral = {s: np.zeros(x.shape, dtype=bool) for s in (-1, 1)}
        vent = lateral[-1] | lateral[1]
        if self.near(z, v.oz - v.wz - 8.0, 8.0) or self.near(z, -40.0, 8.0):
            vent |= other_ventricles(v, x, y, zz) & inside
        tissue[vent] = Tissue.VENTRICLE
        falx = fissure_zone & (np.abs(x) < 0.5) & inside
        tissue[falx] = Tissue.FALX
        # Skull base: petrous ridges (bone) and the sphenoid sinus (air) in the lowest slices.
        if z - self._z_span < -40.0:
            for s in (-1.0, 1.0):
                ridge = _segment_distance(x, y, (s * 52.0, 22.0), (s * 16.0, -4.0)) < 5.0
                tissue[ridge & inside & (zz < -44.0) & (zz > -66.0)] = Tissue.BONE
            sinus = _ellipsoid(x, y, zz, (0.0, -28.0, -64.0), (13.0, 10.0, 9.0)) < 1.0
            tissue[sinus & inside] = Tissue.AIR
        return SliceGeometry(
            x=x, y=y, z=zz, xn=xn, yn=yn, zn=zn, r=r, depth=depth, sulcus=sulcus,
            fissure_zone=fissure_zone, cistern=cistern, tissue=tissue, head=head, lateral=lateral,
        )  # fmt: skip

    def near(self, z: float, centre: float, half: float) -> bool:
        """Whether the slice at ``z`` (tilted) can reach the band ``centre`` +- ``half``."""
        return abs(z - centre) <= half + self._z_span

    def _anatomy_hu(self, g: SliceGeometry, z: float) -> np.ndarray:
        head, tissue = self.head, g.tissue
        hu = np.full(tissue.shape, AIR_HU, dtype=np.float32)
        hu[tissue == Tissue.SCALP] = head.scalp_hu
        bone = tissue == Tissue.BONE
        u = np.clip((g.depth[bone] + skull_thickness(head, g.y[bone], g.z[bone])), 0.0, None)
        u = np.clip(u / skull_thickness(head, g.y[bone], g.z[bone]), 0.0, 1.0)
        diploe = np.clip(1.0 - np.abs(u - 0.5) / 0.25, 0.0, 1.0)  # tables: outer quarters
        hu[bone] = head.bone_hu - (head.bone_hu - head.diploe_hu) * diploe
        brain = tissue == Tissue.BRAIN
        hu[brain] = head.white_hu
        grey = (g.depth < head.csf_rim + 2.5) | (
            (g.sulcus < head.sulcus_half + 2.2) & (g.depth < head.sulcus_depth + 2.0)
        )
        v = head.ventricles
        for s in (-1.0, 1.0):  # thalamus and lentiform nucleus
            for cx, cy, cz, axes in (
                (11.0, 12.0, 22.0, (8, 11, 9)),
                (23.0, -6.0, 18.0, (6, 13, 10)),
            ):
                if self.near(z, v.oz - cz, axes[2]):
                    centre = (s * cx, v.oy + cy, v.oz - cz)
                    grey |= _ellipsoid(g.x, g.y, g.z, centre, axes) < 1.0
        hu[brain & grey] = head.grey_hu
        hu[(tissue == Tissue.CSF) | (tissue == Tissue.VENTRICLE)] = head.csf_hu
        hu[tissue == Tissue.FALX] = head.falx_hu
        for cx, cy, cz, rad, chu in head.calcifications:
            if not self.near(z, cz, rad):
                continue
            ball = _ellipsoid(g.x, g.y, g.z, (cx, cy, cz), (rad, rad, rad)) < 1.0
            hu[ball & (tissue >= Tissue.BRAIN)] = chu
        return hu

    def render(self, z: float, bleeds: list[Bleed], rng: np.random.Generator) -> RenderedSlice:
        """Render the slice at head height ``z``; draws its noise from ``rng``."""
        g = self.geometry(z)
        hu = self._anatomy_hu(g, z)
        bleed_map = np.zeros(hu.shape, dtype=np.uint8)
        for b in bleeds:
            if b.z_hi < z - self._z_span or b.z_lo > z + self._z_span:
                continue
            ok = np.isin(g.tissue, b.allowed)
            visible = b.mask(g) & ok & (bleed_map == 0)  # an earlier bleed keeps its pixels
            if np.count_nonzero(visible) < self.min_pixels:
                continue  # too few pixels to label: leave the anatomy untouched
            edema = b.edema(g)
            if edema is not None:
                hu[edema & ok & (bleed_map == 0) & ~visible] = self.head.white_hu - 9.0
            hu[visible] = b.hu
            bleed_map[visible] = st.index(b.subtype) + 1
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(self.sd_before_blur)
        hu = ndimage.gaussian_filter(hu, self.head.blur, truncate=3.0)
        out = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
        return RenderedSlice(hu=out, tissue=g.tissue, bleed=bleed_map)


def _segment_distance(x, y, p0, p1) -> np.ndarray:
    """In-plane distance of points to the segment p0-p1 (mm)."""
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((x - p0[0]) * vx + (y - p0[1]) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    return np.sqrt((x - p0[0] - t * vx) ** 2 + (y - p0[1] - t * vy) ** 2)


# ----------------------------------------------------------------------------- bleed sampling

#: Share of bleeds drawn small and faint.
SUBTLE_FRACTION = 0.2


def _pick(rng: np.random.Generator, span: tuple[float, float], lo: float, hi: float) -> float:
    """A height in [lo, hi] that the series also covers (its middle when they miss)."""
    low, high = max(lo, span[0]), min(hi, span[1])
    if low > high:
        return float(np.clip((span[0] + span[1]) / 2.0, lo, hi))
    return float(rng.uniform(low, high))


def _density(rng: np.random.Generator, subtle: bool) -> float:
    """Acute blood: 62-85 HU, or 54-60 HU for a faint one."""
    return float(rng.uniform(54.0, 60.0) if subtle else rng.uniform(62.0, 85.0))


def _extra_axial(
    subtype: str, head: Head, span: tuple[float, float], rng: np.random.Generator, subtle: bool
) -> ExtraAxial:
    side = int(rng.choice((-1, 1)))
    epidural = subtype == st.EPIDURAL
    beta = math.radians(rng.uniform(-50.0, 50.0) if epidural else rng.uniform(-60.0, 60.0))
    zc = _pick(rng, span, -20.0, 60.0)
    zn = float(np.clip(zc / head.c, -0.9, 0.9))
    h = math.sqrt(1.0 - zn * zn)
    if epidural:
        half = rng.uniform(0.2, 0.28) if subtle else rng.uniform(0.3, 0.48)
        thick = rng.uniform(5.0, 8.0) if subtle else rng.uniform(9.0, 20.0)
    else:
        half = rng.uniform(0.4, 0.55) if subtle else rng.uniform(0.55, 0.85)
        thick = rng.uniform(2.5, 4.0) if subtle else rng.uniform(4.0, 11.0)
    reach = half * head.c + 10.0
    return ExtraAxial(
        subtype=subtype,
        hu=_density(rng, subtle),
        z_lo=zc - reach,
        z_hi=zc + reach,
        direction=(side * math.cos(beta) * h, math.sin(beta) * h, zn),
        half_angle=float(half),
        thickness=float(thick),
        side=side,
    )


def _in_brain_point(
    rng: np.random.Generator, head: Head, zc: float, min_depth: float, max_depth: float
) -> tuple[float, float, float]:
    """A point at height ``zc`` between ``min_depth`` and ``max_depth`` below the inner table."""
    best = (0.0, 0.0, zc)
    for _ in range(200):
        x, y = rng.uniform(-0.8, 0.8) * head.a, rng.uniform(-0.8, 0.8) * head.b
        d = float(brain_depth(head, np.float32(x), np.float32(y), np.float32(zc)))
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
    v = head.ventricles
    hit = lateral_ventricle(v, -1, x, y, z) | lateral_ventricle(v, 1, x, y, z)
    return not bool((hit | other_ventricles(v, x, y, z)).any())


def _intraparenchymal(
    head: Head, span: tuple[float, float], rng: np.random.Generator, subtle: bool
) -> Intraparenchymal:
    radius = rng.uniform(4.0, 6.5) if subtle else rng.uniform(8.0, 18.0)
    rim = rng.uniform(1.0, 2.0) if subtle else rng.uniform(2.0, 5.0)
    center = (0.0, 0.0, 0.0)
    for _ in range(50):
        zc = _pick(rng, span, -15.0, 50.0)
        center = _in_brain_point(rng, head, zc, radius + rim + 8.0, 200.0)
        if _clear_of_ventricles(head, center, radius * 1.25 + rim + 2.0):
            break
    lumps = tuple(
        (*(rng.normal(size=3) * 1.5), rng.uniform(0.0, 2 * math.pi), rng.uniform(0.05, 0.12))
        for _ in range(3)
    )
    reach = radius * 1.4 + rim
    return Intraparenchymal(
        subtype=st.INTRAPARENCHYMAL,
        hu=_density(rng, subtle),
        z_lo=center[2] - reach,
        z_hi=center[2] + reach,
        center=center,
        radius=float(radius),
        rim=float(rim),
        lumps=tuple(tuple(float(v) for v in lump) for lump in lumps),
    )


def _subarachnoid(
    head: Head, span: tuple[float, float], rng: np.random.Generator, subtle: bool
) -> Subarachnoid:
    v = head.ventricles
    if span[0] <= -22.0 and rng.random() < 0.3:  # basal cisterns
        center = (0.0, v.oy + 14.0, -25.0)
    else:
        center = _in_brain_point(rng, head, _pick(rng, span, -10.0, 60.0), 4.0, 22.0)
    radius = rng.uniform(15.0, 22.0) if subtle else rng.uniform(25.0, 40.0)
    return Subarachnoid(
        subtype=st.SUBARACHNOID,
        hu=_density(rng, subtle),
        z_lo=center[2] - radius,
        z_hi=center[2] + radius,
        center=center,
        radius=float(radius),
        half_width=float(rng.uniform(0.8, 0.95) if subtle else rng.uniform(1.0, 1.6)),
    )


def _intraventricular(
    head: Head, span: tuple[float, float], rng: np.random.Generator, subtle: bool
) -> Intraventricular:
    v = head.ventricles
    frac = rng.uniform(0.45, 0.65) if subtle else rng.uniform(-0.4, 0.3)
    zc = _pick(rng, span, v.oz - v.wz - 0.5 * v.arch, v.oz + 0.6 * v.wz)
    half = rng.uniform(8.0, 18.0)
    return Intraventricular(
        subtype=st.INTRAVENTRICULAR,
        hu=_density(rng, subtle),
        z_lo=zc - half,
        z_hi=zc + half,
        side=int(rng.choice((-1, 0, 1))),
        y_level=float(v.oy + frac * v.wy),
    )


def sample_bleed(
    subtype: str, head: Head, span: tuple[float, float], rng: np.random.Generator
) -> Bleed:
    """Draw a hemorrhage of ``subtype`` placed where the series (head-z ``span``) sees it."""
    subtle = bool(rng.random() < SUBTLE_FRACTION)
    if subtype in (st.EPIDURAL, st.SUBDURAL):
        return _extra_axial(subtype, head, span, rng, subtle)
    if subtype == st.INTRAPARENCHYMAL:
        return _intraparenchymal(head, span, rng, subtle)
    if subtype == st.SUBARACHNOID:
        return _subarachnoid(head, span, rng, subtle)
    if subtype == st.INTRAVENTRICULAR:
        return _intraventricular(head, span, rng, subtle)
    raise ValueError(f"not a hemorrhage subtype: {subtype!r}")
