"""How visible each phantom bleed is: contrast over its surroundings against the image noise.

A model that misses a bleed nobody could see is not the same failure as one that misses a
plain one. For every bleeding slice of a phantom folder (its bleed map beside the image, as
:func:`phantoms.synth.generate` writes it) this measures, in Hounsfield units and soft tissue
only (-5 to 100 HU, so bone and air next to an extra-axial bleed do not count):

* ``contrast``: mean HU of the bleed minus mean HU of a 3-pixel ring around it;
* ``sd``: the standard deviation of the ring (noise plus whatever anatomy the ring crosses,
  so an upper bound on the noise);
* ``dprime``: ``contrast / sd * sqrt(pixels)``, the detectability index of an ideal observer
  who knows where to look, in white noise. Real readers, and a model that must also find the
  place, need several times more; a bleed under about 3 is near invisible.

A study's visibility is that of its most visible slice.

``dprime`` above is measured on the image: the blood's contrast after the kernel (which lowers
a thin bleed's) over a ring that holds anatomy as well as noise, as if that were white noise. It
is what the image shows a reader, not the most an observer could get out of it. That is the
*ideal observer's* d' (one that knows the anatomy, the bleed and the noise; on the held-out
preset's seed 25 it is 1.4-2.7 times ``dprime`` for the middle half of bleeding slices, and
higher for 93 % of them), which :mod:`phantoms.scanner` records for every slice it renders
(``ideal_dprime`` in ``phantom_slices.csv``, from the generator's own pre-noise images).
:func:`study_ideal_dprime` combines a study's slices (their noise is independent) and
:func:`ideal_study_auc` gives the study AUC of that observer: no model can rank the studies
better.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from scipy import ndimage, stats

from ichnode.imaging import to_hu
from phantoms.synth import IMAGE_DIR, MASK_DIR, SLICES_CSV, read_mask

#: Soft tissue, where blood is judged against its surroundings (HU).
SOFT_TISSUE_HU = (-5.0, 100.0)
#: Width of the ring around a bleed (pixels).
RING_PX = 3


def slice_visibility(hu: np.ndarray, bleed: np.ndarray) -> tuple[int, float, float, float] | None:
    """``(pixels, contrast, sd, dprime)`` of the blood in one slice; None when the bleed or
    its ring has no soft-tissue pixels (or too few to judge: under 10 in the ring)."""
    soft = (hu > SOFT_TISSUE_HU[0]) & (hu < SOFT_TISSUE_HU[1])
    blood = bleed.astype(bool)
    ring = ndimage.binary_dilation(blood, iterations=RING_PX) & ~blood & soft
    blood &= soft
    n = int(blood.sum())
    if n == 0 or ring.sum() < 10:
        return None
    contrast = float(hu[blood].mean() - hu[ring].mean())
    sd = float(hu[ring].std())
    return n, contrast, sd, contrast / max(sd, 1e-6) * float(np.sqrt(n))


def _bleeding_slices(
    folder: Path, image_ids: Collection[str] | None = None
) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """``(image_id, study, hu, bleed)`` of each bleeding slice of a phantom folder (of
    ``image_ids`` only, when given): its Hounsfield units and its bleed map at their size."""
    folder = Path(folder)
    slices = pd.read_csv(folder / SLICES_CSV, dtype={"study": str})
    if image_ids is not None:
        slices = slices[slices["image_id"].isin(set(image_ids))]
    for image_id, study in slices.loc[slices["bleed_pixels"] > 0, ["image_id", "study"]].values:
        with warnings.catch_warnings():  # RSNA-style "ID_..." values in UID elements
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(folder / IMAGE_DIR / f"{image_id}.dcm")
        hu = to_hu(ds)  # the RSNA 12-bit quirk of a quarter of the phantoms corrected
        bleed = read_mask(folder / MASK_DIR / f"{image_id}.png") > 0
        if bleed.shape != hu.shape:  # written at another size: nearest neighbour
            zoom = (hu.shape[0] / bleed.shape[0], hu.shape[1] / bleed.shape[1])
            bleed = ndimage.zoom(bleed.astype(np.uint8), zoom, order=0) > 0
        yield image_id, study, hu, bleed


def folder_visibility(folder: Path, image_ids: Collection[str] | None = None) -> pd.DataFrame:
    """One row per bleeding slice of a phantom folder (of ``image_ids`` only, when given):
    ``image_id, study, pixels, contrast, sd, dprime``."""
    rows = []
    for image_id, study, hu, bleed in _bleeding_slices(folder, image_ids):
        measured = slice_visibility(hu, bleed)
        if measured is not None:
            rows.append((image_id, study, *measured))
    return pd.DataFrame(rows, columns=["image_id", "study", "pixels", "contrast", "sd", "dprime"])


def study_visibility(per_slice: pd.DataFrame) -> pd.DataFrame:
    """Per study (index: the phantom's study key), the values of its most visible slice."""
    if per_slice.empty:
        return per_slice.set_index("study")[["image_id", "pixels", "contrast", "sd", "dprime"]]
    best = per_slice.loc[per_slice.groupby("study")["dprime"].idxmax()]
    return best.set_index("study")[["image_id", "pixels", "contrast", "sd", "dprime"]]


def study_ideal_dprime(folder: Path) -> pd.Series:
    """The ideal observer's d' of each study's blood (index: the phantom's study key): the
    root sum of squares of its slices' ``ideal_dprime`` (0 for a normal study). A
    :class:`KeyError` for a folder written before the generator recorded it."""
    slices = pd.read_csv(Path(folder) / SLICES_CSV, dtype={"study": str})
    if "ideal_dprime" not in slices.columns:
        raise KeyError(f"{folder}/{SLICES_CSV} has no ideal_dprime column (an older folder)")
    squares = slices["ideal_dprime"].astype(float) ** 2
    return np.sqrt(squares.groupby(slices["study"]).sum()).rename("ideal_dprime")


def ideal_study_auc(dprimes: np.ndarray) -> float:
    """The study AUC of the ideal observer over bleeding studies of these d' against normal
    ones: each bleeding study outranks a normal one with probability Phi(d' / sqrt 2)
    (equal-variance Gaussian statistics, the case of known signal in Gaussian noise)."""
    d = np.asarray(dprimes, dtype=float)
    return float(stats.norm.cdf(d / np.sqrt(2.0)).mean())


def study_blood_hu(folder: Path) -> pd.Series:
    """Per bleeding study (index: the phantom's study key), the median HU of its blood on the
    slice where that median is highest: what a reader sees at best. Blood is painted at
    35-85 HU; a value under brain's ~30 means the image hides it (partial volume, or a sharp
    kernel's undershoot beside bone)."""
    best: dict[str, float] = {}
    for _, study, hu, bleed in _bleeding_slices(folder):
        if bleed.any():
            best[study] = max(best.get(study, -np.inf), float(np.median(hu[bleed])))
    return pd.Series(best, name="blood_hu", dtype=float)
