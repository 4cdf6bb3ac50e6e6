"""One slice as a scanner would reconstruct it: anatomy, hemorrhages, artefacts, noise, kernel.

The anatomy's HU are averaged over sub-slices near the vertex (partial volume of the grazed
vault) and, elsewhere, the tentorium over the slice's thickness; the bleeds painted (labels
count the very pixels painted), then beam-hardening streaks, patient motion (a ghost), noise
and the reconstruction kernel (Gaussian blur, or blur plus an unsharp mask for a sharp kernel)
are applied, drawing their randomness from the study's RNG.

Each slice also records how visible its blood is to the *ideal observer*, the one that knows
the anatomy, the bleed and the noise exactly: the noise is white before the kernel and the
kernel is an invertible linear filter applied to signal and noise alike, so that observer's
detectability index is the norm of what the bleeds changed (before noise and kernel, after the
motion ghost) over the noise's SD before the kernel. No reader or model can do better, so a
bleed with an ideal d' near 1 is a label no reader would have given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ichnode import subtypes as st
from phantoms.anatomy import EDEMA_DROP, N_TISSUES, PARTIAL_VOLUME_SAMPLES, Phantom, Tissue
from phantoms.bleeds import Bleed

#: Integer HU range every rendered slice is clipped to (fits all storage variants).
HU_MIN, HU_MAX = -1000, 3071
#: A bleed is labelled on a slice when it shows at least this many pixels at 512 x 512.
MIN_BLEED_PIXELS_512 = 20
#: Motion ghost: its weight and its offset (pixels at 512).
GHOST_WEIGHT = (0.12, 0.3)
GHOST_SHIFT_512 = (3.0, 10.0)
#: The unsharp mask subtracts a blur this many times wider than the kernel's.
UNSHARP_WIDTH = 2.5
REFERENCE_SIZE = 512


def min_bleed_pixels(size: int) -> int:
    """Pixels a bleed needs on a slice to count at ``size`` (the 512 threshold, by area)."""
    return max(3, math.ceil(MIN_BLEED_PIXELS_512 * (size / 512.0) ** 2))


@dataclass(frozen=True)
class RenderedSlice:
    """One rendered slice: integer HU, the tissue map and the bleed map.

    ``bleed`` holds 0, or 1 + the subtype's index in :data:`ichnode.subtypes.SUBTYPES`.
    """

    hu: np.ndarray  # int16
    tissue: np.ndarray  # uint8 Tissue codes
    bleed: np.ndarray  # uint8
    ideal_dprime: float = 0.0  # the ideal observer's d' of the blood on this slice (0: none)

    def pixel_counts(self) -> dict[str, int]:
        """Bleed pixels per hemorrhage subtype."""
        counts = np.bincount(self.bleed.ravel(), minlength=len(st.SUBTYPES))
        return {name: int(counts[st.index(name) + 1]) for name in st.HEMORRHAGE_SUBTYPES}

    def labels(self) -> dict[str, int]:
        """Per-subtype 0/1 labels of this slice, ``any`` included, read off the bleed map."""
        labels = {name: int(n > 0) for name, n in self.pixel_counts().items()}
        labels[st.ANY] = int(any(labels.values()))
        return {name: labels[name] for name in st.SUBTYPES}


def _allowed_lut(tissues: tuple[Tissue, ...]) -> np.ndarray:
    lut = np.zeros(N_TISSUES, dtype=bool)
    lut[list(tissues)] = True
    return lut


class Scanner:
    """Renders slices of one phantom with one study's artefacts, noise and kernel."""

    def __init__(self, phantom: Phantom, thickness: float) -> None:
        self.phantom, self.thickness = phantom, thickness
        self.min_pixels = min_bleed_pixels(phantom.size)
        head, size = phantom.head, phantom.size
        self.px_scale = size / REFERENCE_SIZE
        self.blur = max(head.blur * self.px_scale, 0.35)
        # Noise is added before the kernel: scale it so its SD after the blur is noise_sd.
        self.sd_before_blur = head.noise_sd * 2.0 * math.sqrt(math.pi) * self.blur
        self._luts: dict[tuple[Tissue, ...], np.ndarray] = {}

    def _lut(self, tissues: tuple[Tissue, ...]) -> np.ndarray:
        if tissues not in self._luts:
            self._luts[tissues] = _allowed_lut(tissues)
        return self._luts[tissues]

    def _anatomy(self, z: float):
        ph = self.phantom
        g = ph.geometry(z)
        hu = ph.hu(g, z)
        if ph.vertex_partial_volume(z, self.thickness):
            offsets = np.linspace(-1.0, 1.0, PARTIAL_VOLUME_SAMPLES) * self.thickness / 3.0
            for off in offsets:
                if off == 0.0:
                    continue
                gs = ph.geometry(z + float(off))
                hu += ph.hu(gs, z + float(off))
            hu /= np.float32(len(offsets))
        else:
            ph.tentorium_partial_volume(g, z, hu, self.thickness)
        return g, hu

    def render(self, z: float, bleeds: list[Bleed], rng: np.random.Generator) -> RenderedSlice:
        """Render the slice at head height ``z`` (mm); draws its randomness from ``rng``."""
        ph = self.phantom
        head = ph.head
        g, hu = self._anatomy(z)
        anatomy = hu.copy()
        bleed_map = np.zeros(hu.shape, dtype=np.uint8)
        for b in bleeds:
            if not ph.near(z, (b.z_lo + b.z_hi) / 2.0, (b.z_hi - b.z_lo) / 2.0):
                continue
            ok = self._lut(b.allowed)[g.tissue]
            visible = b.mask(g) & ok & (bleed_map == 0)  # an earlier bleed keeps its pixels
            if np.count_nonzero(visible) < self.min_pixels:
                continue  # too few pixels to label: leave the anatomy untouched
            edema = b.edema(g)
            if edema is not None:
                hu[edema & ok & (bleed_map == 0) & ~visible] = head.white_hu - EDEMA_DROP
            hu[visible] = b.texture.values(g, visible)
            bleed_map[visible] = st.index(b.subtype) + 1
        signal = hu - anatomy  # what the bleeds (and an IPH's oedema) changed
        ph.streaks(hu, z)
        if head.motion > 0 and rng.random() < head.motion:
            weight = rng.uniform(*GHOST_WEIGHT)
            shift = int(round(rng.uniform(*GHOST_SHIFT_512) * self.px_scale)) or 1
            axis = int(rng.integers(0, 2))
            hu = (1.0 - weight) * hu + weight * np.roll(hu, shift, axis=axis)
            signal = (1.0 - weight) * signal + weight * np.roll(signal, shift, axis=axis)
        ideal = float(np.linalg.norm(signal.astype(np.float64))) / self.sd_before_blur
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(self.sd_before_blur)
        smooth = ndimage.gaussian_filter(hu, self.blur, truncate=3.0)
        if head.sharpen > 0:
            wide = ndimage.gaussian_filter(smooth, self.blur * UNSHARP_WIDTH, truncate=2.0)
            smooth += np.float32(head.sharpen) * (smooth - wide)
        out = np.clip(np.rint(smooth), HU_MIN, HU_MAX).astype(np.int16)
        return RenderedSlice(hu=out, tissue=g.tissue, bleed=bleed_map, ideal_dprime=ideal)
