"""A seeded analytic 3-D head in Hounsfield units, foramen magnum to vertex, cut axially.

The head lives in canonical coordinates: millimetres of a scale-1 head along the DICOM
patient axes (+u the patient's left, +v posterior, +w superior), origin between the lateral
ventricles. A study's head is this one scaled by ``Head.scale``. Every structure is a closed
form of (u, v, w), so consecutive slices cut one and the same anatomy: the vault (scalp,
tables and diploe), the cranial floor (anterior, middle and posterior fossae, sella, clivus,
petrous ridges, foramen magnum), the face (orbits with globes, lenses, fat, muscles and optic
nerves; nasal cavity; ethmoid, sphenoid, frontal and maxillary sinuses), mastoid air cells,
the brain (cortex with sulci, white matter, deep grey nuclei, temporal lobes, brainstem,
cerebellum with folia), CSF spaces (ventricles, cisterns, Sylvian fissures), the falx and the
tentorium, and the normal mimics of hemorrhage (calcifications, dense venous sinuses).

Whatever depends on the in-plane position only (the cranial floor, the tentorium, gyral wave
phases, the head rest) is computed once per study; small structures are cut from their own
bounding box of pixels, so a slice costs a few dozen full-frame numpy operations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from scipy import ndimage

from phantoms.presets import Preset, draw


class Tissue(IntEnum):
    """Codes of the tissue map (the anatomy before any hemorrhage is painted)."""

    AIR = 0
    SCALP = 1
    BONE = 2
    BRAIN = 3
    CSF = 4
    VENTRICLE = 5
    FALX = 6  # dura: the falx and the tentorium
    SOFT = 7  # muscle, face, eyelids, optic nerve, mucosa
    FAT = 8  # orbital fat
    GLOBE = 9  # vitreous and lens
    SINUS = 10  # air inside the head: paranasal sinuses, nasal cavity, mastoid cells
    CALCIFICATION = 11  # physiological calcification (a hemorrhage mimic)
    VESSEL = 12  # dural venous sinuses
    DEVICE = 13  # the head rest


N_TISSUES = len(Tissue)
AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_HU = 42.0
VITREOUS_HU = 10.0
LENS_HU = 100.0
DEVICE_HU = (150.0, 350.0)
HEADREST_PAD_HU = -80.0

# --- vault (canonical mm) ---
#: Outer semi-axes ranges: left-right, antero-posterior, above and below the origin.
HEAD_A, HEAD_B, HEAD_C_UP, HEAD_C_LOW = (70.0, 77.0), (88.0, 96.0), (90.0, 98.0), (118.0, 128.0)
EGG = 0.05  # the head is this much wider behind
SKULL_POSTERIOR = 0.08  # the vault is this much thicker behind
NECK_MUSCLE = (14.0, 24.0)  # extra soft tissue behind the neck at the foramen magnum
NECK_TOP = -30.0  # neck muscles start below this height
TEMPORALIS = (4.0, 9.0)  # temporalis muscle over the temporal squama
FRONTAL_BOSS = 9.0  # extra frontal bone thickness around the frontal sinuses
FRONTAL_BOSS_CENTRE, FRONTAL_BOSS_AXES = (0.0, -86.0, -6.0), (24.0, 14.0, 18.0)

# --- cranial floor (canonical mm): heights of the fossae and where they meet ---
ANTERIOR_FLOOR = -24.0
ORBITAL_ROOF_BULGE = 6.0
CRIBRIFORM_DIP = 5.0
MIDDLE_FLOOR = -50.0
#: The middle fossa is a bowl: its deepest point (|u|, v) and how fast it rises from there.
MIDDLE_BOWL = (36.0, -6.0, 22.0, 20.0, 26.0)  # centre |u|, v; semi-axes; rise (mm)
ANTERIOR_BOWL = (22.0, -60.0, 18.0, 30.0, 10.0)
SELLA_FLOOR = -40.0
SELLA_BOX = (12.0, -22.0, -6.0)  # |u| below, v from, v to
DORSUM, BASION = (-6.0, -32.0), (14.0, -74.0)  # (v, w) of the clivus' top and bottom
CLIVUS_HALF = 16.0
CLIVUS_THICK = 14.0
POSTERIOR_FLOOR, POSTERIOR_RISE = -72.0, 22.0
POSTERIOR_BOWL = (0.0, 45.0, 50.0, 45.0)  # centre u, v and semi-axes of the bowl
FORAMEN = (15.0, 6.0, 38.0)  # half width, v from, v to
CANAL_FLOOR = -140.0
BASE_PLATE = 6.0  # thickness of the bony floor under the brain
FLOOR_SMOOTH_MM = 2.5
#: Sphenoid ridge (anterior / middle fossa) and petrous ridge (middle / posterior), per side:
#: (u, v) of the medial and lateral ends.
SPHENOID_RIDGE = ((10.0, -26.0), (50.0, -14.0))
PETROUS_RIDGE = ((14.0, -2.0), (52.0, 26.0))
PETROUS_TOP, PETROUS_HALF, PETROUS_BOTTOM = -33.0, 7.0, -68.0
# --- tentorium: a tent over the posterior fossa, apex behind the midbrain ---
TENT_APEX, TENT_LATERAL, TENT_POSTERIOR = -6.0, 28.0, 30.0
TENT_INCISURA = (13.0, 34.0)  # the gap the midbrain passes: |u| below, v below
DURA_HALF = 0.6  # half thickness of the falx and tentorium
#: Half the tentorium's drawn extent along the head's axis (canonical mm): the band of the
#: plane of a slice drawn as dura.
TENT_SHEET = DURA_HALF * 2.0
#: Canonical height and half-range a slice must reach to cut the tentorium.
TENT_REACH = (-30.0, 40.0)

# --- brain (canonical mm) ---
N_GYRAL_WAVES = 6
GYRAL_WAVELENGTH = (16.0, 24.0)
CORTEX = 2.5  # grey matter below the CSF rim and along sulci
FOLIA_WAVELENGTH = (4.5, 6.0)
FOLIA_CENTRE = (0.0, 30.0, -28.0)
FOLIA_HALF = 0.4
FOLIA_BREAK = 3.0  # folia show as CSF lines only near the gyral sulci (mm)
CEREBELLAR_CORE = 22.0  # white matter within this distance of the folia centre
MIDBRAIN = ((0.0, 12.0, -24.0), (11.0, 10.0, 9.0))
PONS = ((0.0, 14.0, -50.0), (13.0, 12.0, 15.0))
MEDULLA = (0.0, 20.0, 8.0, -60.0)  # u, v, radius, below this height
BRAINSTEM_CISTERN = 2.5  # CSF around the brainstem
FOURTH_VENTRICLE = ((0.0, 30.0, -46.0), (6.0, 4.5, 8.0))
CISTERNA_MAGNA = ((0.0, 58.0, -62.0), (9.0, 12.0, 8.0))
SUPRASELLAR = ((0.0, -14.0, -28.0), (12.0, 8.0, 6.0))
SYLVIAN = ((18.0, -18.0), (54.0, -6.0), -38.0, -4.0)  # medial, lateral end; w from, to
DEEP_GREY = (  # (u, v, w) offsets from the ventricles' centre and semi-axes: per side
    ((11.0, 12.0, -22.0), (8.0, 11.0, 9.0)),  # thalamus
    ((23.0, -6.0, -18.0), (6.0, 13.0, 10.0)),  # lentiform nucleus
    ((11.0, -18.0, -4.0), (5.0, 8.0, 7.0)),  # caudate head
)
EDEMA_DROP = 9.0  # HU below white matter

# --- face and skull base (canonical mm): (centre, semi-axes), per side where u > 0 ---
ORBIT = ((30.0, -64.0, -38.0), (16.0, 22.0, 15.0))
ORBIT_WALL = 2.0
EYE_MUSCLE = 0.72  # squared normalised radius beyond which the orbit's walls carry muscle
GLOBE = ((31.0, -72.0, -38.0), 11.5)
LENS = ((31.0, -82.0, -38.0), (4.5, 1.8, 4.5))
OPTIC_NERVE = ((30.0, -60.0, -38.0), (12.0, -32.0, -40.0), 2.5)
NASAL = ((0.0, -68.0, -64.0), (12.0, 26.0, 22.0))
SEPTUM_HALF = 1.0
TURBINATE_PERIOD = 11.0
ETHMOID = ((0.0, -62.0, -40.0), (13.0, 18.0, 12.0))
ETHMOID_MEDIAL = 2.5
SPHENOID_SINUS = ((0.0, -30.0, -52.0), (15.0, 11.0, 10.0))
MAXILLARY = ((27.0, -60.0, -72.0), (14.0, 17.0, 15.0))
FRONTAL_SINUS = ((9.0, -85.0, -6.0), (10.0, 6.0, 12.0))
MASTOID = ((48.0, 30.0, -56.0), (11.0, 12.0, 13.0))
NOSE = ((0.0, -96.0, -62.0), (10.0, 16.0, 20.0))
SINUS_WALL = 1.5
AIR_CELL_WAVELENGTH = {"ethmoid": 7.0, "mastoid": 5.0}
AIR_CELL_LEVEL = -1.0  # a cell is air where its wave sum is above this
# --- streaks between the petrous bones ---
STREAK_LEVEL, STREAK_REACH = -50.0, 9.0  # w of strongest streaks, fall-off (mm)
STREAK_V = 8.0  # the dark band crosses the pons here
STREAK_AMP = (10.0, 30.0)
# --- series coverage (canonical mm) ---
SERIES_BOTTOM = (-84.0, -76.0)  # the lowest slice: just below the foramen magnum
VERTEX_MARGIN = (-20.0, -11.0)  # the highest slice against the vertex
PARTIAL_VOLUME_BAND = 14.0  # slices this close to the vertex average sub-slices
PARTIAL_VOLUME_SAMPLES = 3


@dataclass(frozen=True)
class Ventricles:
    """Lateral ventricles (a bent ellipsoid per side) and the third ventricle."""

    ox: float  # lateral offset of each body's axis from the midline
    oy: float  # antero-posterior centre
    oz: float  # height of the bodies
    wx: float  # half-widths
    wy: float
    wz: float
    bend: float  # horns diverge laterally by this much at their tips
    arch: float  # horns dip down by this much at their tips


@dataclass(frozen=True)
class Head:
    """Per-study anatomy and acquisition parameters (canonical mm and HU)."""

    scale: float
    a: float
    b: float
    c_up: float
    c_low: float
    scalp: float
    neck: float
    temporalis: float
    skull: float
    bone_hu: float
    diploe_hu: float
    petrous_hu: float
    scalp_hu: float
    grey_hu: float
    white_hu: float
    csf_hu: float
    dura_hu: float
    venous_hu: float
    csf_rim: float
    sulcus_half: float
    sulcus_depth: float
    fissure_half: float
    waves: np.ndarray  # (N, 3) gyral wave vectors (rad/mm)
    phases: np.ndarray  # (N,)
    folia_k: float  # rad/mm
    folia_phase: float
    cell_waves: np.ndarray  # (3, 3) air-cell wave directions
    frontal_sinus: float  # size factor (0: aplastic)
    mucosa: float  # maxillary mucosal thickening (mm)
    ventricles: Ventricles
    calcifications: tuple[tuple[float, float, float, float, float, float, float], ...]
    streak_amp: float  # 0: no beam-hardening streaks
    headrest: tuple[float, float, float] | None  # gap behind the head, thickness, HU
    motion: float  # share of slices with a motion ghost (0: the patient kept still)
    noise_sd: float  # after the kernel
    blur: float  # Gaussian sigma (pixels at 512)
    sharpen: float  # unsharp-mask amount (0: smooth kernel)
    yaw: float  # rad
    shift: tuple[float, float]  # mm
    tilt: float  # rad
    roll: float  # rad
    bottom: float  # canonical height of the lowest slice
    top: float  # canonical height of the highest slice


def _calcification(c: tuple) -> tuple[float, float, float, float, float, float, float]:
    u, v, w, ru, rv, rw, hu = (float(x) for x in c)
    return u, v, w, ru, rv, rw, hu


def _calcifications(
    rng: np.random.Generator, p: Preset, v: Ventricles
) -> tuple[tuple[float, float, float, float, float, float, float], ...]:
    """Physiological calcifications: (u, v, w, semi-axes..., HU) ellipsoids."""
    out = []
    hu = lambda: draw(rng, p.calcification_hu)  # noqa: E731
    if rng.random() < p.pineal_rate:
        r = rng.uniform(1.5, 3.5)
        out.append((0.0, v.oy + 24.0, v.oz - 14.0, r, r, r, hu()))
    if rng.random() < p.choroid_rate:  # glomus of the choroid plexus in both trigones
        r, h = rng.uniform(1.8, 3.2), hu()
        for side in (-1.0, 1.0):
            out.append((side * (v.ox + v.bend * 0.5 + 4.0), v.oy + 20.0, v.oz - 4.0, r, r, r, h))
    if rng.random() < p.falx_calc_rate:  # a plaque in the falx
        out.append(
            (0.0, rng.uniform(-50.0, 40.0), rng.uniform(30.0, 60.0), 1.0,
             rng.uniform(3.0, 7.0), rng.uniform(2.0, 4.0), hu())
        )  # fmt: skip
    if rng.random() < p.basal_ganglia_rate:  # globus pallidus, both sides
        r, h = rng.uniform(1.2, 2.5), hu()
        for side in (-1.0, 1.0):
            out.append((side * 19.0, v.oy - 4.0, v.oz - 18.0, r, r * 1.5, r, h))
    return tuple(_calcification(c) for c in out)


def sample_head(rng: np.random.Generator, preset: Preset) -> Head:
    """Draw one head: size, shape, bone, densities, atrophy, mimics, pose, noise and kernel."""
    p = preset
    atrophy = draw(rng, p.atrophy)
    wavelength = rng.uniform(*GYRAL_WAVELENGTH, size=N_GYRAL_WAVES)
    dirs = rng.normal(size=(N_GYRAL_WAVES, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    cells, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # orthogonal: a lattice of cells
    scale = draw(rng, p.head_scale)
    white = draw(rng, p.white_hu)
    vent_w = 4.0 + 5.0 * atrophy + rng.uniform(-0.8, 0.8)
    ventricles = Ventricles(
        ox=vent_w + rng.uniform(1.0, 2.5),
        oy=rng.uniform(-6.0, 2.0),
        oz=rng.uniform(14.0, 22.0),
        wx=vent_w,
        wy=rng.uniform(26.0, 32.0),
        wz=rng.uniform(9.0, 13.0),
        bend=rng.uniform(6.0, 12.0),
        arch=rng.uniform(6.0, 14.0),
    )
    dense = rng.random() < p.dense_venous_rate
    c_up = draw(rng, HEAD_C_UP)
    headrest = None
    if rng.random() < p.headrest_rate:
        headrest = (rng.uniform(2.0, 12.0), rng.uniform(2.5, 5.0), draw(rng, DEVICE_HU))
    streak = draw(rng, STREAK_AMP) if rng.random() < p.streak_rate else 0.0
    sharp = rng.random() < p.sharp_rate
    return Head(
        scale=scale,
        a=draw(rng, HEAD_A),
        b=draw(rng, HEAD_B),
        c_up=c_up,
        c_low=draw(rng, HEAD_C_LOW),
        scalp=draw(rng, p.scalp_mm) / scale,
        neck=draw(rng, NECK_MUSCLE),
        temporalis=draw(rng, TEMPORALIS),
        skull=draw(rng, p.skull_mm) / scale,
        bone_hu=draw(rng, p.bone_hu),
        diploe_hu=draw(rng, p.diploe_hu),
        petrous_hu=draw(rng, p.petrous_hu),
        scalp_hu=rng.uniform(20.0, 60.0),
        grey_hu=white + draw(rng, p.grey_white_gap),
        white_hu=white,
        csf_hu=draw(rng, p.csf_hu),
        dura_hu=draw(rng, p.dura_hu),
        venous_hu=draw(rng, p.dense_venous_hu if dense else p.venous_hu),
        csf_rim=0.6 + 1.6 * atrophy,
        sulcus_half=0.45 + 0.7 * atrophy,
        sulcus_depth=rng.uniform(12.0, 18.0),
        fissure_half=0.8 + 1.2 * atrophy,
        waves=(dirs * (2.0 * np.pi / wavelength)[:, None]).astype(np.float32),
        phases=rng.uniform(0.0, 2.0 * np.pi, size=N_GYRAL_WAVES).astype(np.float32),
        folia_k=2.0 * math.pi / draw(rng, FOLIA_WAVELENGTH),
        folia_phase=rng.uniform(0.0, 2.0 * math.pi),
        cell_waves=cells.astype(np.float32),
        frontal_sinus=0.0 if rng.random() < 0.1 else rng.uniform(0.6, 1.3),
        mucosa=rng.uniform(0.0, 4.0) if rng.random() < 0.3 else 0.0,
        ventricles=ventricles,
        calcifications=_calcifications(rng, p, ventricles),
        streak_amp=streak,
        headrest=headrest,
        motion=p.motion_slice_rate if rng.random() < p.motion_rate else 0.0,
        noise_sd=draw(rng, p.noise_sd),
        blur=draw(rng, p.blur_px),
        sharpen=draw(rng, p.sharpen) if sharp else 0.0,
        yaw=math.radians(draw(rng, p.yaw_deg)),
        shift=(draw(rng, p.shift_mm), draw(rng, p.shift_mm)),
        tilt=math.radians(draw(rng, p.tilt_deg)),
        roll=math.radians(draw(rng, p.roll_deg)),
        bottom=draw(rng, SERIES_BOTTOM),
        top=c_up + draw(rng, VERTEX_MARGIN),
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


def third_ventricle(v: Ventricles, x, y, z) -> np.ndarray:
    """The third ventricle: a midline slit below the bodies."""
    return _ellipsoid(x, y, z, (0.0, v.oy + 4.0, v.oz - v.wz - 8.0), (2.0, 12.0, 8.0)) < 1.0


def fourth_ventricle(x, y, z) -> np.ndarray:
    """The fourth ventricle, between the pons and the cerebellum."""
    return _ellipsoid(x, y, z, *FOURTH_VENTRICLE) < 1.0


def all_ventricles(v: Ventricles, x, y, z) -> np.ndarray:
    """Every ventricle at the given points."""
    lat = lateral_ventricle(v, -1, x, y, z) | lateral_ventricle(v, 1, x, y, z)
    return lat | third_ventricle(v, x, y, z) | fourth_ventricle(x, y, z)


def _segment(u, v, p0, p1) -> tuple[np.ndarray, np.ndarray]:
    """In-plane distance of points to the segment p0-p1 and the signed side (+: v grows)."""
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    length2 = du * du + dv * dv
    t = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / length2, 0.0, 1.0)
    dist = np.sqrt((u - p0[0] - t * du) ** 2 + (v - p0[1] - t * dv) ** 2)
    cross = (du * (v - p0[1]) - dv * (u - p0[0])) / math.sqrt(length2)
    return dist, cross * math.copysign(1.0, du)


def cranial_floor(u: np.ndarray, v: np.ndarray, spacing: float) -> np.ndarray:
    """Height of the floor of the cranial cavity under each in-plane point (canonical mm)."""
    au = np.abs(u)
    bu, bv, su, sv, rise = ANTERIOR_BOWL
    ant = (
        ANTERIOR_FLOOR
        + ORBITAL_ROOF_BULGE * np.exp(-(((au - 22.0) / 11.0) ** 2))
        - CRIBRIFORM_DIP * np.exp(-((u / 6.0) ** 2))
        + rise * np.clip(((v - bv) / sv) ** 2, 0.0, 1.5)
    )
    bu, bv, su, sv, rise = MIDDLE_BOWL
    middle = MIDDLE_FLOOR + rise * np.minimum(((au - bu) / su) ** 2 + ((v - bv) / sv) ** 2, 1.5)
    cu, cv, su, sv = POSTERIOR_BOWL
    post = POSTERIOR_FLOOR + POSTERIOR_RISE * (((u - cu) / su) ** 2 + ((v - cv) / sv) ** 2)
    post = np.minimum(post, tentorium(u, v) - 8.0)
    _, behind_sphenoid = _segment(au, v, *SPHENOID_RIDGE)
    _, behind_petrous = _segment(au, v, *PETROUS_RIDGE)
    behind_sphenoid = np.where(au < SPHENOID_RIDGE[0][0], v - SPHENOID_RIDGE[0][1], behind_sphenoid)
    behind_petrous = np.where(au < PETROUS_RIDGE[0][0], v - DORSUM[0], behind_petrous)
    floor = np.where(behind_sphenoid < 0, ant, np.where(behind_petrous < 0, middle, post))
    sella = (au < SELLA_BOX[0]) & (v > SELLA_BOX[1]) & (v < SELLA_BOX[2])
    floor = np.where(sella, SELLA_FLOOR, floor)
    t = np.clip((v - DORSUM[0]) / (BASION[0] - DORSUM[0]), 0.0, 1.0)
    clivus = (au < CLIVUS_HALF) & (v >= DORSUM[0]) & (v <= BASION[0])
    floor = np.where(clivus, DORSUM[1] + t * (BASION[1] - DORSUM[1]), floor)
    foramen = (au < FORAMEN[0]) & (v > FORAMEN[1]) & (v < FORAMEN[2])
    floor = np.where(foramen, CANAL_FLOOR, floor)
    floor = ndimage.gaussian_filter(floor, FLOOR_SMOOTH_MM / spacing)
    dist, _ = _segment(au, v, *PETROUS_RIDGE)
    ridge = PETROUS_TOP - 20.0 * (dist / PETROUS_HALF) ** 2
    return np.maximum(floor, ridge).astype(np.float32)


def tentorium(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Height of the tentorium over each in-plane point (canonical mm)."""
    back = np.clip((v - TENT_INCISURA[1] + 4.0) / 60.0, 0.0, None)
    return (TENT_APEX - TENT_LATERAL * (u / 55.0) ** 2 - TENT_POSTERIOR * back**2).astype(
        np.float32
    )


@dataclass(frozen=True)
class Box:
    """A rectangle of pixels a local structure is cut from, and the heights it can reach."""

    rows: slice
    cols: slice
    w_lo: float  # canonical in-plane height offset range over the box (tilt)
    w_hi: float

    @property
    def index(self) -> tuple[slice, slice]:
        return (self.rows, self.cols)


@dataclass
class SliceGeometry:
    """Per-slice fields the anatomy and the bleeds are cut from (all ``(size, size)``).

    Coordinates are canonical (see the module docstring); depths are canonical mm.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    xn: np.ndarray  # normalised outer-ellipsoid coordinates and their norm
    yn: np.ndarray
    zn: np.ndarray
    r: np.ndarray
    vault_depth: np.ndarray  # below the inner table of the vault
    depth: np.ndarray  # inside the cranial cavity (vault and floor): >= 0
    floor_depth: np.ndarray  # above the cranial floor
    tent: np.ndarray  # height above the tentorium
    sulcus: np.ndarray  # approximate distance to the nearest sulcus line
    fissure_zone: np.ndarray  # where the interhemispheric fissure runs
    cistern: np.ndarray  # basal cisterns and Sylvian fissures
    tissue: np.ndarray
    head: Head
    lateral: dict[int, np.ndarray] = field(default_factory=dict)
    ventricles: np.ndarray | None = None  # every ventricle


class Phantom:
    """Renders the anatomy of one head on a ``size`` x ``size`` grid of ``spacing`` mm."""

    def __init__(self, head: Head, size: int, spacing: float) -> None:
        self.head, self.size, self.spacing = head, size, spacing
        s = head.scale
        self.canonical_spacing = spacing / s
        coords = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) * np.float32(spacing)
        cols, rows = np.meshgrid(coords, coords)  # x along columns, y along rows
        dx, dy = cols - np.float32(head.shift[0]), rows - np.float32(head.shift[1])
        ca, sa = np.float32(math.cos(head.yaw)), np.float32(math.sin(head.yaw))
        x, y = ca * dx + sa * dy, -sa * dx + ca * dy
        self.u, self.v = x / np.float32(s), y / np.float32(s)
        tilt, roll = math.sin(head.tilt), math.sin(head.roll)
        self.w_xy = (np.float32(tilt) * self.v + np.float32(roll) * self.u).astype(np.float32)
        self._w_span = (float(self.w_xy.min()), float(self.w_xy.max()))
        a = head.a * (1.0 + EGG * self.v / head.b)
        self._xn, self._yn = self.u / a, self.v / np.float32(head.b)
        self._r2_xy = self._xn**2 + self._yn**2
        self._g2_xy = (self._xn / a) ** 2 + (self._yn / np.float32(head.b)) ** 2
        self._skull = (head.skull * (1.0 + SKULL_POSTERIOR * self.v / head.b)).astype(np.float32)
        self._neck_xy = np.clip(self.v / head.b + 0.3, 0.0, 1.0).astype(np.float32) * head.neck
        self._temporal_xy = (
            head.temporalis
            * np.clip((np.abs(self.u) - 45.0) / 15.0, 0.0, 1.0)
            * np.exp(-(((self.v + 15.0) / 30.0) ** 2))
        ).astype(np.float32)
        self.floor = cranial_floor(self.u, self.v, self.canonical_spacing)
        self.tent_h = tentorium(self.u, self.v)
        au = np.abs(self.u)
        self._incisura = (au < TENT_INCISURA[0]) & (self.v < TENT_INCISURA[1])
        self._posterior = self.floor < MIDDLE_FLOOR - 4.0  # the posterior fossa (and canal)
        # Gyral waves: the in-plane part of each phase is the same on every slice.
        k = head.waves
        phase_xy = [
            k[i, 0] * self.u + k[i, 1] * self.v + k[i, 2] * self.w_xy for i in range(len(k))
        ]
        self._wave_cos = [np.cos(ph) for ph in phase_xy]
        self._wave_sin = [np.sin(ph) for ph in phase_xy]
        self._gyral_grad = float(np.linalg.norm(k, axis=1).mean()) * math.sqrt(len(k) / 2.0)
        d_syl, _ = _segment(au, self.v, SYLVIAN[0], SYLVIAN[1])
        self._sylvian_xy = d_syl
        self.headrest = self._headrest(cols, rows)
        self.boxes = self._boxes()
        _, self._streak_v = _segment(au, self.v, *PETROUS_RIDGE)

    # ------------------------------------------------------------------ set-up helpers

    def _box(self, centre, axes, mirror: bool = False) -> list[Box]:
        """Pixel boxes around an ellipsoid (and its mirror image across the midline)."""
        out = []
        for side in (-1.0, 1.0) if mirror else (1.0,):
            m = (np.abs(self.u - side * centre[0]) <= axes[0] + 2.0) & (
                np.abs(self.v - centre[1]) <= axes[1] + 2.0
            )
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            if rows.size == 0:
                continue
            r, c = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
            w = self.w_xy[r, c]
            out.append(Box(r, c, float(w.min()), float(w.max())))
        return out

    def _boxes(self) -> dict[str, list[Box]]:
        h = self.head
        pet_c = tuple((a + b) / 2.0 for a, b in zip(*PETROUS_RIDGE, strict=True))
        pet_axes = (abs(PETROUS_RIDGE[1][0] - PETROUS_RIDGE[0][0]) / 2 + PETROUS_HALF,
                    abs(PETROUS_RIDGE[1][1] - PETROUS_RIDGE[0][1]) / 2 + PETROUS_HALF)  # fmt: skip
        fs = (FRONTAL_SINUS[0], tuple(a * max(h.frontal_sinus, 0.1) for a in FRONTAL_SINUS[1]))
        return {
            "orbit": self._box(*ORBIT, mirror=True),
            "nasal": self._box(NASAL[0], (NASAL[1][0] + 4, NASAL[1][1] + 22, NASAL[1][2])),
            "ethmoid": self._box(*ETHMOID),
            "sphenoid": self._box(*SPHENOID_SINUS),
            "maxillary": self._box(*MAXILLARY, mirror=True),
            "frontal": self._box(*fs, mirror=True),
            "mastoid": self._box(*MASTOID, mirror=True),
            "petrous": self._box((pet_c[0], pet_c[1], 0.0), pet_axes, mirror=True),
            "fossa": self._box((0.0, 40.0, 0.0), (62.0, 60.0)),
            "streak": self._box((0.0, STREAK_V, 0.0), (50.0, 30.0)),
        }

    def _headrest(self, cols: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
        """Mask (shell, pad) of the head rest: an arc behind the head, on the table."""
        h = self.head
        if h.headrest is None:
            return None
        gap, thick, _ = h.headrest
        dx, dy = cols - np.float32(h.shift[0]), rows - np.float32(h.shift[1])
        centre_v = -20.0 * h.scale
        radius = (h.b + 20.0) * h.scale + gap
        rho = np.sqrt(dx * dx + (dy - centre_v) ** 2)
        behind = dy > 0.25 * radius
        shell = behind & (np.abs(rho - radius - thick / 2.0) < thick / 2.0)
        pad = behind & (rho > radius - gap) & (rho <= radius) & (dy > 0.55 * radius)
        out = np.zeros(cols.shape, dtype=np.uint8)
        out[pad] = 1
        out[shell] = 2
        return out

    def near(self, z: float, centre: float, half: float) -> bool:
        """Whether the slice at head height ``z`` (mm) reaches canonical ``centre`` +- ``half``."""
        w = z / self.head.scale
        return w + self._w_span[1] >= centre - half and w + self._w_span[0] <= centre + half

    @staticmethod
    def _box_near(box: Box, w0: float, centre: float, half: float) -> bool:
        return w0 + box.w_hi >= centre - half and w0 + box.w_lo <= centre + half

    # ------------------------------------------------------------------ the anatomy

    def geometry(self, z: float) -> SliceGeometry:
        """The fields of the slice at head height ``z`` (mm), anatomy painted into ``tissue``."""
        head, vent = self.head, self.head.ventricles
        u, v = self.u, self.v
        w0 = z / head.scale
        w = self.w_xy + np.float32(w0)
        c = np.where(w > 0, np.float32(head.c_up), np.float32(head.c_low))
        zn = w / c
        r = np.sqrt(self._r2_xy + zn * zn)
        grad = np.sqrt(self._g2_xy + (zn / c) ** 2) / np.maximum(r, 1e-6)
        below_scalp = (1.0 - r) / np.maximum(grad, 1e-6)
        soft = np.float32(head.scalp) + self._temporal_xy
        if w0 + self._w_span[0] < NECK_TOP:
            soft = soft + self._neck_xy * np.clip((NECK_TOP - w) / 40.0, 0.0, 1.0)
        skull = self._skull
        fb = self.boxes["frontal"]
        if self.head.frontal_sinus > 0 and fb and self.near(z, FRONTAL_BOSS_CENTRE[2], 20.0):
            boss = _ellipsoid(u, v, w, FRONTAL_BOSS_CENTRE, FRONTAL_BOSS_AXES)
            skull = skull + np.float32(FRONTAL_BOSS * head.frontal_sinus) * np.exp(-boss)
        vault_depth = below_scalp - soft - skull
        floor_depth = w - self.floor
        depth = np.minimum(vault_depth, floor_depth)
        tent = w - self.tent_h

        tissue = np.full(u.shape, Tissue.AIR, dtype=np.uint8)
        inside_head = below_scalp >= 0
        tissue[inside_head] = Tissue.SCALP
        above_base = floor_depth > -BASE_PLATE
        clivus_zone = (np.abs(u) < CLIVUS_HALF) & (floor_depth > -CLIVUS_THICK)
        shell = (below_scalp >= soft) & (above_base | clivus_zone)
        tissue[shell] = Tissue.BONE
        deep = (below_scalp >= soft) & ~(above_base | clivus_zone)
        tissue[deep] = Tissue.SOFT
        inside = depth >= 0
        tissue[inside] = Tissue.BRAIN

        # CSF: rim, sulci, fissures, cisterns; the cerebellum has folia instead of gyri.
        gyral = np.zeros_like(u)
        for i in range(len(head.phases)):
            alpha = float(head.waves[i, 2]) * w0 + float(head.phases[i])
            gyral += self._wave_cos[i] * np.float32(math.cos(alpha))
            gyral -= self._wave_sin[i] * np.float32(math.sin(alpha))
        sulcus = np.abs(gyral) / np.float32(self._gyral_grad)
        above_cc = w > vent.oz + vent.wz + 4.0
        beyond_cc = np.abs(v - vent.oy) > vent.wy + 10.0
        fissure_zone = (np.abs(u) < head.fissure_half + 3.0) & (above_cc | beyond_cc) & (tent > 0)
        infratentorial = (tent < 0) & self._posterior & ~self._incisura
        csf = (depth < head.csf_rim) | ((sulcus < head.sulcus_half) & (depth < head.sulcus_depth))
        csf &= ~infratentorial
        csf |= fissure_zone & (np.abs(u) < head.fissure_half)
        cistern = np.zeros(u.shape, dtype=bool)
        if self.near(z, -20.0, 22.0):
            syl = (self._sylvian_xy < head.fissure_half + 0.6) & (w > SYLVIAN[2]) & (w < SYLVIAN[3])
            cistern |= syl | (_ellipsoid(u, v, w, *SUPRASELLAR) < 1.0)
        fossa_grey = None
        if self.near(z, -45.0, 40.0):
            cistern, fossa_grey = self._posterior_fossa(
                u, v, w, gyral, inside, infratentorial, cistern
            )
        csf |= cistern
        tissue[inside & csf] = Tissue.CSF

        # Ventricles.
        lat_near = self.near(z, vent.oz - vent.arch / 2.0, vent.wz + vent.arch / 2.0)
        lateral = {
            s: (lateral_ventricle(vent, s, u, v, w) & inside)
            if lat_near
            else np.zeros(u.shape, bool)
            for s in (-1, 1)
        }
        ventricles = lateral[-1] | lateral[1]
        if self.near(z, vent.oz - vent.wz - 8.0, 8.0):
            ventricles |= third_ventricle(vent, u, v, w) & inside
        if self.near(z, FOURTH_VENTRICLE[0][2], FOURTH_VENTRICLE[1][2]):
            ventricles |= fourth_ventricle(u, v, w) & inside
        tissue[ventricles] = Tissue.VENTRICLE

        # Dura: falx in the fissure, tentorium over the posterior fossa (its slope widens it).
        falx = fissure_zone & (np.abs(u) < DURA_HALF) & inside
        tissue[falx] = Tissue.FALX
        if self.near(z, *TENT_REACH):
            tent_band = (np.abs(tent) < TENT_SHEET) & self._tent_zone(depth, floor_depth)
            tissue[tent_band] = Tissue.FALX

        # Dural venous sinuses: superior sagittal along the vertex, transverse at the tentorium.
        sss = inside & (vault_depth < 5.0) & (np.abs(u) < 4.0 * (1.0 - vault_depth / 6.0)) & (w > 0)
        tissue[sss] = Tissue.VESSEL
        if self.near(z, -40.0, 20.0):
            trans = inside & (vault_depth < 5.0) & (np.abs(tent) < 4.0) & (v > 20.0)
            tissue[trans] = Tissue.VESSEL

        g = SliceGeometry(
            x=u, y=v, z=w, xn=self._xn, yn=self._yn, zn=zn, r=r, vault_depth=vault_depth,
            depth=depth, floor_depth=floor_depth, tent=tent, sulcus=sulcus,
            fissure_zone=fissure_zone, cistern=cistern, tissue=tissue, head=head,
            lateral=lateral, ventricles=ventricles,
        )  # fmt: skip
        g.fossa_grey = fossa_grey  # type: ignore[attr-defined]
        self._skull_base(g, w0)
        self._calcify(g, z)
        return g

    def _posterior_fossa(self, u, v, w, gyral, inside, infratentorial, cistern):
        """Brainstem with its cisterns and the cerebellum's folia (CSF lines, grey cortex)."""
        head = self.head
        stem = _ellipsoid(u, v, w, *PONS) < 1.0
        stem |= _ellipsoid(u, v, w, *MIDBRAIN) < 1.0
        mu, mv, mr, mtop = MEDULLA
        ring = np.sqrt((u - mu) ** 2 + (v - mv) ** 2)
        stem |= (ring < mr) & (w < mtop)
        around = _ellipsoid(u, v, w, PONS[0], tuple(a + BRAINSTEM_CISTERN for a in PONS[1])) < 1.0
        around |= (ring < mr + BRAINSTEM_CISTERN + 2.0) & (w < mtop)
        around |= _ellipsoid(u, v, w, MIDBRAIN[0], tuple(a + 3.0 for a in MIDBRAIN[1])) < 1.0
        cistern = cistern | (around & ~stem & inside)
        cistern |= (_ellipsoid(u, v, w, *CISTERNA_MAGNA) < 1.0) & inside & infratentorial
        fu, fv, fw = FOLIA_CENTRE
        b = self.boxes["fossa"]
        grey = np.zeros(u.shape, dtype=bool)
        for box in b:
            sub = box.index
            uu, vv, ww = u[sub], v[sub], w[sub]
            rho = np.sqrt((uu - fu) ** 2 * 0.5 + (vv - fv) ** 2 + (ww - fw) ** 2)
            folia = np.abs(np.cos(np.float32(head.folia_k) * rho + np.float32(head.folia_phase)))
            cere = infratentorial[sub] & ~around[sub] & inside[sub]
            line = folia < np.float32(FOLIA_HALF * head.folia_k / 2.0)
            broken = np.abs(gyral[sub]) < np.float32(FOLIA_BREAK * self._gyral_grad)
            cistern[sub] |= cere & line & broken & (rho > CEREBELLAR_CORE)
            grey[sub] = cere & (rho > CEREBELLAR_CORE)
        return cistern, grey

    def _skull_base(self, g: SliceGeometry, w0: float) -> None:
        """Face, sinuses, orbits, mastoids and petrous bones below the cranial floor."""
        h, t = self.head, g.tissue
        if w0 + self._w_span[0] > -15.0:
            return
        below = g.floor_depth < 0.0

        def each(name: str, centre_w: float, half_w: float):
            for box in self.boxes[name]:
                if self._box_near(box, w0, centre_w, half_w):
                    sub = box.index
                    yield sub, self.u[sub], self.v[sub], g.z[sub], t[sub], below[sub]

        # Orbits: fat cone with a bony wall, muscles along its walls, the globe and the lens.
        oc, oa = ORBIT
        for sub, uu, vv, ww, tt, bb in each("orbit", oc[2], oa[2] + ORBIT_WALL):
            au = np.abs(uu)
            taper = 1.0 - 0.45 * np.clip((vv - oc[1]) / oa[1], 0.0, 1.0)
            rr = ((au - oc[0]) / (oa[0] * taper)) ** 2 + ((vv - oc[1]) / oa[1]) ** 2
            rr = rr + ((ww - oc[2]) / (oa[2] * taper)) ** 2
            wall = bb & (rr < (1.0 + ORBIT_WALL / oa[0]) ** 2) & (vv > oc[1] - oa[1] * 0.55)
            tt[wall] = Tissue.BONE
            orbit = bb & (rr < 1.0)
            tt[orbit] = Tissue.FAT
            tt[orbit & (rr > EYE_MUSCLE) & (np.abs(ww - oc[2]) < oa[2] * 0.35)] = Tissue.SOFT
            (n0, n1, nr) = OPTIC_NERVE
            dist, _ = _segment(au, vv, (n0[0], n0[1]), (n1[0], n1[1]))
            tt[orbit & (dist < nr) & (np.abs(ww - n0[2]) < nr)] = Tissue.SOFT
            gc, gr = GLOBE
            globe = _ellipsoid(au, vv, ww, gc, (gr, gr, gr)) < 1.0
            tt[globe & (g.floor_depth[sub] < 0)] = Tissue.GLOBE
        # Nasal cavity and the external nose.
        nc, na = NASAL
        for _sub, uu, vv, ww, tt, bb in each("nasal", nc[2], na[2] + 2.0):
            rr = _ellipsoid(uu, vv, ww, nc, na)
            tt[bb & (rr < (1.0 + SINUS_WALL / na[0]) ** 2) & (tt != Tissue.FAT)] = Tissue.BONE
            cavity = bb & (rr < 1.0)
            tt[cavity] = Tissue.SINUS
            turb = (np.abs(uu) > 5.0) & (np.cos(2 * np.pi * (ww - nc[2]) / TURBINATE_PERIOD) > 0.3)
            tt[cavity & (turb | (np.abs(uu) < SEPTUM_HALF * 1.5))] = Tissue.SOFT
            tt[cavity & (np.abs(uu) < SEPTUM_HALF)] = Tissue.BONE
            nose = (_ellipsoid(uu, vv, ww, *NOSE) < 1.0) & (tt == Tissue.AIR)
            tt[nose] = Tissue.SOFT
        # Air-cell sinuses: ethmoid (between the orbits) and mastoid (behind the ear).
        for name, (cc, ca) in (("ethmoid", ETHMOID), ("mastoid", MASTOID)):
            k = np.float32(2.0 * np.pi / AIR_CELL_WAVELENGTH[name])
            for sub, uu, vv, ww, tt, bb in each(name, cc[2], ca[2]):
                cu = np.abs(uu) if name == "mastoid" else uu
                rr = _ellipsoid(cu, vv, ww, cc, ca)
                region = bb & (rr < 1.0)
                if name == "ethmoid":
                    region &= (np.abs(uu) > ETHMOID_MEDIAL) & np.isin(
                        tt, (Tissue.SOFT, Tissue.BONE)
                    )
                else:
                    region &= g.depth[sub] < -1.0
                cw = h.cell_waves
                cells = sum(
                    np.cos(k * (cw[i, 0] * cu + cw[i, 1] * vv + cw[i, 2] * ww)) for i in range(3)
                )
                tt[region] = Tissue.BONE
                tt[region & (cells > AIR_CELL_LEVEL)] = Tissue.SINUS
        # Single-cavity sinuses with a bony wall: sphenoid, maxillary (mucosa), frontal.
        for name, (cc, ca), mirror in (
            ("sphenoid", SPHENOID_SINUS, False),
            ("maxillary", MAXILLARY, True),
        ):
            for _sub, uu, vv, ww, tt, bb in each(name, cc[2], ca[2] + SINUS_WALL):
                cu = np.abs(uu) if mirror else uu
                rr = _ellipsoid(cu, vv, ww, cc, ca)
                ok = bb & (tt != Tissue.FAT) & (tt != Tissue.GLOBE)
                tt[ok & (rr < (1.0 + SINUS_WALL / ca[0]) ** 2)] = Tissue.BONE
                cavity = ok & (rr < 1.0)
                tt[cavity] = Tissue.SOFT
                inner = rr < (1.0 - h.mucosa / ca[0]) ** 2 if name == "maxillary" else rr < 1.0
                tt[cavity & inner] = Tissue.SINUS
                if name == "sphenoid":
                    tt[cavity & (np.abs(uu - 2.0) < SEPTUM_HALF)] = Tissue.BONE
        if h.frontal_sinus > 0:
            fc = FRONTAL_SINUS[0]
            fa = tuple(a * h.frontal_sinus for a in FRONTAL_SINUS[1])
            for sub, uu, vv, ww, tt, _bb in each("frontal", fc[2], fa[2]):
                inside_bone = (tt == Tissue.BONE) & (g.vault_depth[sub] < -1.5)
                rr = _ellipsoid(np.abs(uu), vv, ww, fc, fa)
                tt[inside_bone & (rr < 1.0)] = Tissue.SINUS
        # Petrous pyramids: dense bone from the ridge down, lateral of the clivus.
        for _sub, uu, vv, ww, tt, bb in each("petrous", (PETROUS_TOP + PETROUS_BOTTOM) / 2, 20.0):
            dist, _ = _segment(np.abs(uu), vv, *PETROUS_RIDGE)
            pet = bb & (dist < PETROUS_HALF) & (ww > PETROUS_BOTTOM) & (tt != Tissue.SINUS)
            tt[pet] = Tissue.BONE

    def _calcify(self, g: SliceGeometry, z: float) -> None:
        for cu, cv, cw, ru, rv, rw, _hu in self.head.calcifications:
            if not self.near(z, cw, rw):
                continue
            ball = _ellipsoid(g.x, g.y, g.z, (cu, cv, cw), (ru, rv, rw)) < 1.0
            ok = (g.tissue == Tissue.BRAIN) | (g.tissue == Tissue.CSF) | (g.tissue >= Tissue.FALX)
            g.tissue[ball & ok & (g.depth >= 0)] = Tissue.CALCIFICATION

    # ------------------------------------------------------------------ densities

    def hu(self, g: SliceGeometry, z: float) -> np.ndarray:
        """HU of the anatomy (no noise): tissue densities, tables and diploe, grey matter."""
        h, t = self.head, g.tissue
        lut = np.full(N_TISSUES, AIR_HU, dtype=np.float32)
        lut[Tissue.SCALP] = h.scalp_hu
        lut[Tissue.BONE] = h.bone_hu
        lut[Tissue.BRAIN] = h.white_hu
        lut[Tissue.CSF] = lut[Tissue.VENTRICLE] = h.csf_hu
        lut[Tissue.FALX] = h.dura_hu
        lut[Tissue.SOFT] = SOFT_HU
        lut[Tissue.FAT] = FAT_HU
        lut[Tissue.GLOBE] = VITREOUS_HU
        lut[Tissue.VESSEL] = h.venous_hu
        lut[Tissue.DEVICE] = h.headrest[2] if h.headrest else AIR_HU
        hu = lut[t]
        bone = t == Tissue.BONE
        # Vault: dense tables, softer diploe in the middle third.
        frac = np.clip((g.vault_depth[bone] + self._skull[bone]) / self._skull[bone], 0.0, 1.0)
        diploe = np.clip(1.0 - np.abs(frac - 0.5) / 0.25, 0.0, 1.0)
        hu[bone] = h.bone_hu - (h.bone_hu - h.diploe_hu) * diploe
        for box in self.boxes["petrous"]:
            if self._box_near(box, z / h.scale, (PETROUS_TOP + PETROUS_BOTTOM) / 2, 20.0):
                sub = box.index
                dist, _ = _segment(np.abs(self.u[sub]), self.v[sub], *PETROUS_RIDGE)
                dense = (t[sub] == Tissue.BONE) & (dist < PETROUS_HALF) & (g.floor_depth[sub] < 0)
                hu[sub][dense] = h.petrous_hu
        brain = t == Tissue.BRAIN
        grey = (g.depth < h.csf_rim + CORTEX) | (
            (g.sulcus < h.sulcus_half + CORTEX) & (g.depth < h.sulcus_depth + 2.0)
        )
        fossa_grey = getattr(g, "fossa_grey", None)
        if fossa_grey is not None:
            grey = (grey & (g.tent > 0)) | fossa_grey
        v = h.ventricles
        for side in (-1.0, 1.0):
            for (cu, cv, cw), axes in DEEP_GREY:
                if self.near(z, v.oz + cw, axes[2]):
                    centre = (side * cu, v.oy + cv, v.oz + cw)
                    grey |= _ellipsoid(g.x, g.y, g.z, centre, axes) < 1.0
        hu[brain & grey] = h.grey_hu
        lens_c, lens_a = LENS
        if self.near(z, lens_c[2], lens_a[2]):
            for box in self.boxes["orbit"]:
                sub = box.index
                lens = _ellipsoid(np.abs(self.u[sub]), self.v[sub], g.z[sub], lens_c, lens_a) < 1
                hu[sub][lens & (t[sub] == Tissue.GLOBE)] = LENS_HU
        calc = t == Tissue.CALCIFICATION
        if calc.any():
            for cu, cv, cw, ru, rv, rw, chu in h.calcifications:
                ball = _ellipsoid(g.x, g.y, g.z, (cu, cv, cw), (ru, rv, rw)) < 1.0
                hu[calc & ball] = chu
        if self.headrest is not None and h.headrest is not None:
            hu[self.headrest == 1] = HEADREST_PAD_HU
            hu[self.headrest == 2] = h.headrest[2]
            t[self.headrest == 2] = Tissue.DEVICE
            t[self.headrest == 1] = Tissue.DEVICE
        return hu

    def streaks(self, hu: np.ndarray, z: float) -> None:
        """Beam hardening between the petrous bones: a dark band with bright edges (in place)."""
        h = self.head
        w0 = z / h.scale
        if h.streak_amp <= 0 or not self.near(z, STREAK_LEVEL, 2.0 * STREAK_REACH):
            return
        for box in self.boxes["streak"]:
            sub = box.index
            ww = self.w_xy[sub] + np.float32(w0)
            level = np.exp(-(((ww - STREAK_LEVEL) / STREAK_REACH) ** 2))
            dv = self.v[sub] - STREAK_V
            band = -np.exp(-((dv / 3.0) ** 2)) + 0.5 * np.exp(-(((np.abs(dv) - 7.0) / 1.5) ** 2))
            lateral = np.exp(-((self.u[sub] / 40.0) ** 2))
            hu[sub] += np.float32(h.streak_amp) * level * band * lateral

    def _tent_zone(self, depth: np.ndarray, floor_depth: np.ndarray) -> np.ndarray:
        """Where the tentorium can be: over the posterior fossa, in the brain, off the floor."""
        return self._posterior & ~self._incisura & (depth >= 0) & (floor_depth > 1.0)

    def tentorium_partial_volume(
        self, g: SliceGeometry, z: float, hu: np.ndarray, thickness: float
    ) -> None:
        """Average the tentorium of the slice at ``z`` over its thickness, in place.

        A slice is drawn as one plane, so where the tent is nearly level (its top, behind the
        incisura) a plane within :data:`TENT_SHEET` of it would show a disc of full dural
        density centimetres wide, as dense as fresh blood: no scanner shows that. Here each
        pixel near the sheet gets the share of the slab (``thickness`` mm) the sheet fills
        along the head's axis, over the brain around it: a faint haze where the tent is level,
        a thin line where it is steep, as a thick real slice shows it.
        """
        if not self.near(z, *TENT_REACH):  # where geometry() draws it
            return
        half = 0.5 * thickness / self.head.scale
        near = (np.abs(g.tent) < half + TENT_SHEET) & self._tent_zone(g.depth, g.floor_depth)
        if not near.any():
            return
        d = g.tent[near]
        filled = np.minimum(TENT_SHEET, d + half) - np.maximum(-TENT_SHEET, d - half)
        share = (np.clip(filled, 0.0, None) / (2.0 * half)).astype(np.float32)
        band = np.abs(d) < TENT_SHEET  # drawn as dura: the brain around it is under the sheet
        under = np.where(band, np.float32(self.head.grey_hu), hu[near])
        hu[near] = under + share * (np.float32(self.head.dura_hu) - under)

    def vertex_partial_volume(self, z: float, thickness: float) -> bool:
        """Whether the slice at ``z`` is close enough to the vertex to average sub-slices."""
        top = self.head.c_up * self.head.scale
        return z + thickness / 2.0 > top - PARTIAL_VOLUME_BAND * self.head.scale


def series_span(head: Head) -> tuple[float, float]:
    """Head heights (mm) of the lowest and the highest slice a full series covers."""
    return head.bottom * head.scale, head.top * head.scale
