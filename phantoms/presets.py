"""Parameter ranges the phantoms are drawn from (domain randomisation), one preset per family.

Every appearance parameter of a study -- anatomy scale, tissue and blood densities, bleed
shapes, noise, reconstruction kernel, field of view, slice spacing, pose, stored window -- is
drawn uniformly from a range held here. ``train`` is the family models are trained on;
``heldout`` is never used for training: its ranges sit partly outside ``train`` (a smaller
head, noisier and smoother or sharper images, lower grey/white and blood contrast, other bleed
shapes) so that evaluating on it tells whether a model learnt hemorrhage or the generator.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ichnode.errors import IchnodeError

#: A closed interval values are drawn from uniformly.
Range = tuple[float, float]

TRAIN, HELDOUT = "train", "heldout"


@dataclass(frozen=True)
class Preset:
    """The ranges (and rates) one family of phantoms is drawn from."""

    name: str
    # Anatomy
    head_scale: Range  # uniform scale of the whole head
    atrophy: Range  # 0..1: widens sulci, ventricles and the CSF rim together
    scalp_mm: Range
    skull_mm: Range
    bone_hu: Range
    diploe_hu: Range
    petrous_hu: Range
    white_hu: Range
    grey_white_gap: Range  # grey minus white (HU)
    csf_hu: Range
    dura_hu: Range  # falx and tentorium
    venous_hu: Range  # superior sagittal and transverse sinuses, normal
    dense_venous_hu: Range  # the same when hemoconcentrated (a mimic)
    calcification_hu: Range
    # Rates of the normal mimics (per study, independent)
    pineal_rate: float
    choroid_rate: float
    falx_calc_rate: float
    basal_ganglia_rate: float
    dense_venous_rate: float
    streak_rate: float
    headrest_rate: float
    motion_rate: float  # a study moves; then some of its slices show a ghost
    motion_slice_rate: float
    # Acquisition
    slices: tuple[int, int]  # slices per generated study (inclusive); sets the spacing
    spacing_mm: Range  # slice spacing (= thickness) is clipped to this
    fov_mm: Range  # reconstructed field of view: pixel spacing = fov / size
    noise_sd: Range  # HU, after the kernel
    blur_px: Range  # Gaussian sigma of the kernel (pixels at 512, scaled with size)
    sharp_rate: float  # share of studies reconstructed with a sharp (unsharp-mask) kernel
    sharpen: Range  # unsharp-mask amount of a sharp kernel
    tilt_deg: Range  # gantry tilt / head flexion against the slice plane
    roll_deg: Range  # head roll (about the antero-posterior axis)
    yaw_deg: Range  # in-plane rotation
    shift_mm: Range  # in-plane offset of the head
    window_center: Range
    window_width: Range
    # Hemorrhage
    subtle_fraction: float  # share of bleeds drawn thin, small or faint
    blood_hu: Range  # acute clot
    subtle_blood_hu: Range  # low-contrast blood (anaemia, partial volume)
    hyperacute_hu: Range  # unclotted swirl component
    hyperacute_rate: float
    mixed_rate: float  # mixed density (acute on chronic, a fluid level)
    thin_extra_axial_mm: Range  # a thin subdural/epidural
    thick_subdural_mm: Range
    thick_epidural_mm: Range
    subdural_half_angle: Range  # rad, extent along the convexity
    epidural_half_angle: Range
    small_iph_radius_mm: Range
    large_iph_radius_mm: Range
    iph_lumpiness: Range  # amplitude of the radius wobble
    sah_half_width_mm: Range  # half width of blood in a sulcus (>= 0.8: 3 px at 512)


TRAIN_PRESET = Preset(
    name=TRAIN,
    head_scale=(0.92, 1.08),
    atrophy=(0.0, 1.0),
    scalp_mm=(3.0, 8.0),
    skull_mm=(4.5, 8.5),
    bone_hu=(1250.0, 1600.0),
    diploe_hu=(650.0, 900.0),
    petrous_hu=(1700.0, 2300.0),
    white_hu=(24.0, 31.0),
    grey_white_gap=(6.0, 11.0),
    csf_hu=(2.0, 12.0),
    dura_hu=(45.0, 60.0),
    venous_hu=(38.0, 48.0),
    dense_venous_hu=(52.0, 70.0),
    calcification_hu=(100.0, 400.0),
    pineal_rate=0.6,
    choroid_rate=0.5,
    falx_calc_rate=0.25,
    basal_ganglia_rate=0.15,
    dense_venous_rate=0.35,
    streak_rate=0.75,
    headrest_rate=0.8,
    motion_rate=0.15,
    motion_slice_rate=0.3,
    slices=(24, 40),
    spacing_mm=(3.0, 7.5),
    fov_mm=(200.0, 250.0),
    noise_sd=(3.0, 8.0),
    blur_px=(0.5, 0.85),
    sharp_rate=0.35,
    sharpen=(0.2, 0.7),
    tilt_deg=(-12.0, 12.0),
    roll_deg=(-4.0, 4.0),
    yaw_deg=(-10.0, 10.0),
    shift_mm=(-10.0, 10.0),
    window_center=(30.0, 45.0),
    window_width=(70.0, 100.0),
    subtle_fraction=0.45,
    blood_hu=(60.0, 85.0),
    subtle_blood_hu=(50.0, 60.0),
    hyperacute_hu=(38.0, 50.0),
    hyperacute_rate=0.15,
    mixed_rate=0.15,
    thin_extra_axial_mm=(2.0, 5.0),
    thick_subdural_mm=(5.0, 12.0),
    thick_epidural_mm=(8.0, 20.0),
    subdural_half_angle=(0.45, 0.85),
    epidural_half_angle=(0.22, 0.45),
    small_iph_radius_mm=(2.5, 5.0),
    large_iph_radius_mm=(8.0, 18.0),
    iph_lumpiness=(0.05, 0.12),
    sah_half_width_mm=(0.8, 1.6),
)

#: Out-of-family: a smaller head, noisier and smoother-or-sharper images, thicker slices,
#: lower grey/white and blood contrast, flatter and lumpier bleeds. Never train on it.
HELDOUT_PRESET = Preset(
    name=HELDOUT,
    head_scale=(0.84, 0.94),
    atrophy=(0.2, 1.0),
    scalp_mm=(2.0, 6.0),
    skull_mm=(4.0, 7.0),
    bone_hu=(1150.0, 1450.0),
    diploe_hu=(550.0, 800.0),
    petrous_hu=(1500.0, 2000.0),
    white_hu=(27.0, 33.0),
    grey_white_gap=(4.0, 7.0),
    csf_hu=(6.0, 15.0),
    dura_hu=(50.0, 65.0),
    venous_hu=(40.0, 50.0),
    dense_venous_hu=(55.0, 72.0),
    calcification_hu=(150.0, 500.0),
    pineal_rate=0.7,
    choroid_rate=0.6,
    falx_calc_rate=0.35,
    basal_ganglia_rate=0.2,
    dense_venous_rate=0.45,
    streak_rate=0.9,
    headrest_rate=0.9,
    motion_rate=0.25,
    motion_slice_rate=0.3,
    slices=(20, 30),
    spacing_mm=(5.0, 9.0),
    fov_mm=(230.0, 260.0),
    noise_sd=(6.5, 11.0),
    blur_px=(0.75, 1.1),
    sharp_rate=0.5,
    sharpen=(0.6, 1.0),
    tilt_deg=(-16.0, 16.0),
    roll_deg=(-6.0, 6.0),
    yaw_deg=(-14.0, 14.0),
    shift_mm=(-12.0, 12.0),
    window_center=(35.0, 50.0),
    window_width=(80.0, 120.0),
    subtle_fraction=0.5,
    blood_hu=(55.0, 78.0),
    subtle_blood_hu=(47.0, 56.0),
    hyperacute_hu=(35.0, 48.0),
    hyperacute_rate=0.2,
    mixed_rate=0.2,
    thin_extra_axial_mm=(1.5, 4.0),
    thick_subdural_mm=(4.0, 10.0),
    thick_epidural_mm=(6.0, 16.0),
    subdural_half_angle=(0.6, 1.0),
    epidural_half_angle=(0.18, 0.35),
    small_iph_radius_mm=(2.5, 4.5),
    large_iph_radius_mm=(7.0, 15.0),
    iph_lumpiness=(0.1, 0.2),
    sah_half_width_mm=(0.8, 1.3),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (TRAIN_PRESET, HELDOUT_PRESET)}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an :class:`IchnodeError` naming the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise IchnodeError(
            f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}"
        ) from None


def draw(rng: np.random.Generator, span: Range) -> float:
    """One value drawn uniformly from ``span``."""
    return float(rng.uniform(span[0], span[1]))


def range_fields(preset: Preset) -> dict[str, Range]:
    """The preset's ranges by field name (rates and the name left out)."""
    out = {}
    for f in fields(preset):
        value = getattr(preset, f.name)
        if isinstance(value, tuple):
            out[f.name] = value
    return out
