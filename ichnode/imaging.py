"""DICOM dataset → Hounsfield units → window stack → model input.

One function, :func:`preprocess`, turns a pydicom dataset into the tensor a model sees. Training,
``ichnode predict``, ``ichnode evaluate`` and the node's workers all call it with the
:class:`PreprocessSpec` recorded in the checkpoint, so a model is never served with
preprocessing other than the one it was trained with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ichnode.errors import ImagingError

log = logging.getLogger(__name__)

#: SOP classes whose pixels are CT Hounsfield units.
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
ENHANCED_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2.1")
CT_SOP_CLASSES = frozenset({CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE})

#: Refuse to decode images larger than this many pixels per frame (a 65535 × 65535 header
#: with a few bytes of pixel data must not allocate gigabytes).
MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class Window:
    """A display window in Hounsfield units."""

    name: str
    center: float
    width: float

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """Clip ``hu`` to the window and scale it to [0, 1] (float32)."""
        low = self.center - self.width / 2.0
        out = (hu - low) / self.width
        return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


#: Named windows. The default stack (brain, subdural, soft) is the one of the 2nd-place RSNA
#: solution; ``bone`` is for viewing.
WINDOWS: dict[str, Window] = {
    w.name: w
    for w in (
        Window("brain", 40.0, 80.0),
        Window("subdural", 80.0, 200.0),
        Window("soft", 40.0, 380.0),
        Window("bone", 600.0, 2800.0),
    )
}

DEFAULT_WINDOWS: tuple[str, ...] = ("brain", "subdural", "soft")

#: ``single`` mode: the brain window repeated over three channels (the seed's "convert to RGB").
SINGLE_WINDOWS: tuple[str, ...] = ("brain", "brain", "brain")


def parse_window(text: str) -> Window:
    """A window from a name (``brain``) or ``center/width`` (``40/80``)."""
    text = text.strip()
    if text in WINDOWS:
        return WINDOWS[text]
    try:
        center, width = (float(part) for part in text.split("/"))
    except ValueError:
        names = ", ".join(WINDOWS)
        raise ValueError(f"window {text!r} is neither a name ({names}) nor CENTER/WIDTH") from None
    if width <= 0:
        raise ValueError(f"window {text!r} has a width of {width}; it must be positive")
    return Window(f"{center:g}/{width:g}", center, width)


def windows_for_mode(mode: str) -> tuple[Window, ...]:
    """Windows for ``stack`` (brain, subdural, soft) or ``single`` (brain × 3)."""
    if mode == "stack":
        return tuple(WINDOWS[n] for n in DEFAULT_WINDOWS)
    if mode == "single":
        return tuple(WINDOWS[n] for n in SINGLE_WINDOWS)
    raise ValueError(f"window mode {mode!r}: expected 'stack' or 'single'")


RESAMPLE_MODES = ("area", "antialias")


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything that turns HU into model input; recorded in every checkpoint.

    Non-square images are padded (centred, with air = the windows' 0) to a square before
    resizing, so anatomy is never stretched. Windows are applied before resizing.
    """

    windows: tuple[Window, ...] = field(default_factory=lambda: windows_for_mode("stack"))
    size: int = 224
    #: ``area`` (box average; 3x cheaper on CPU) or ``antialias`` (antialiased bilinear).
    resample: str = "area"

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE_MODES:
            raise ValueError(f"resample {self.resample!r}: expected one of {RESAMPLE_MODES}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "windows": [[w.name, w.center, w.width] for w in self.windows],
            "size": self.size,
            "resample": self.resample,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        windows = tuple(Window(str(n), float(c), float(w)) for n, c, w in data["windows"])
        # Checkpoints written before `resample` existed were trained with antialiasing.
        resample = str(data.get("resample", "antialias"))
        return cls(windows=windows, size=int(data["size"]), resample=resample)

    @property
    def channels(self) -> int:
        return len(self.windows)


def read(path: str | Path) -> Dataset:
    """Read a DICOM file (header and pixel data) with a clear error for non-DICOM input."""
    try:
        return pydicom.dcmread(str(path))
    except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise ImagingError(f"{Path(path).name}: not a readable DICOM file ({exc})") from None


def check_ct(ds: Dataset) -> None:
    """Raise :class:`ImagingError` unless ``ds`` is a single-channel CT image with pixels."""
    modality = str(ds.get("Modality", ""))
    sop_class = str(ds.get("SOPClassUID", ""))
    if modality != "CT" and sop_class not in CT_SOP_CLASSES:
        raise ImagingError(f"not a CT image (Modality {modality or 'missing'})")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise ImagingError("no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ImagingError("not a grayscale image (SamplesPerPixel != 1)")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows <= 0 or cols <= 0 or rows * cols > MAX_PIXELS:
        raise ImagingError(f"implausible image size {rows}x{cols}")


def _pixels(ds: Dataset) -> np.ndarray:
    """Stored values of the first frame, decoded by pydicom's handlers (pylibjpeg & co)."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - every decoder failure means the same to us
        name = UID(tsyntax).name if tsyntax else "unknown transfer syntax"
        raise ImagingError(f"cannot decode pixel data ({name}): {exc}") from None
    if arr.ndim == 3:  # multi-frame: the first frame
        arr = arr[0]
    if arr.ndim != 2:
        raise ImagingError(f"unexpected pixel array shape {arr.shape}")
    return arr


def first_frame_value(ds: Dataset, keyword: str, functional_group: str) -> object | None:
    """``keyword`` for the first frame: at the top level (CT Image), else in the shared or
    the first per-frame functional group's ``functional_group`` item (Enhanced CT keeps the
    rescale in PixelValueTransformationSequence and the geometry in PlanePosition/Orientation).
    None when absent.
    """
    value = ds.get(keyword)
    if value is not None and value != "":
        return value
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = ds.get(groups)
        if not items:
            continue
        group = items[0].get(functional_group)
        if group and keyword in group[0]:
            return group[0].get(keyword)
    return None


def rescale(ds: Dataset) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of the first frame; (1, 0) when absent."""
    slope = first_frame_value(ds, "RescaleSlope", "PixelValueTransformationSequence")
    intercept = first_frame_value(ds, "RescaleIntercept", "PixelValueTransformationSequence")
    return float(slope or 1), float(intercept or 0)


def needs_rsna_12bit_fix(ds: Dataset) -> bool:
    """True for the RSNA slices stored as 12-bit unsigned with a wrong intercept.

    Some RSNA 2019 slices store BitsStored 12, PixelRepresentation 0 and a RescaleIntercept
    near 0 while the values are really signed. The public fix (Ryan Epp, "Gradient & Sigmoid
    Windowing", Kaggle RSNA Intracranial Hemorrhage Detection kernels, 2019, function
    ``correct_dcm``) applies when BitsStored == 12, PixelRepresentation == 0 and
    int(RescaleIntercept) > -100: add 1000 to the stored values, subtract 4096 from those at or
    above 4096, and use intercept -1000.
    """
    return (
        int(ds.get("BitsStored", 16)) == 12
        and int(ds.get("PixelRepresentation", 0)) == 0
        and int(rescale(ds)[1]) > -100
    )


def to_hu(ds: Dataset) -> np.ndarray:
    """Hounsfield units (float32, 2-D) of the dataset's first frame.

    Applies RescaleSlope / RescaleIntercept (:func:`rescale`; pydicom already returns signed
    values for PixelRepresentation 1), the RSNA 12-bit correction and MONOCHROME1 inversion.
    """
    check_ct(ds)
    stored = _pixels(ds).astype(np.float32)
    slope, intercept = rescale(ds)
    if needs_rsna_12bit_fix(ds):
        stored = stored + 1000.0
        stored[stored >= 4096] -= 4096.0
        intercept = -1000.0
    hu = stored * slope + intercept
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        # MONOCHROME1 displays high values dark: mirror around the stored range.
        hu = hu.max() + hu.min() - hu
    return hu


def window_stack(hu: np.ndarray, windows: tuple[Window, ...]) -> np.ndarray:
    """Stack the windows of a 2-D HU image: float32 ``(len(windows), H, W)`` in [0, 1]."""
    return np.stack([w.apply(hu) for w in windows])


def _pad_square(img: np.ndarray) -> np.ndarray:
    """Pad ``(C, H, W)`` with zeros (air after windowing) to a centred square."""
    _, h, w = img.shape
    side = max(h, w)
    if h == w:
        return img
    top, left = (side - h) // 2, (side - w) // 2
    out = np.zeros((img.shape[0], side, side), dtype=img.dtype)
    out[:, top : top + h, left : left + w] = img
    return out


def resize(img: np.ndarray, size: int, resample: str = "area") -> np.ndarray:
    """Pad ``(C, H, W)`` to a square and resize it to ``size`` × ``size``.

    ``area`` averages the source pixels under each target pixel (exact for integer factors,
    never aliases when shrinking); ``antialias`` is antialiased bilinear. Enlarging always
    uses bilinear.
    """
    img = _pad_square(img)
    if img.shape[-1] == size:
        return np.ascontiguousarray(img, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None]
    if resample == "area" and img.shape[-1] > size:
        out = F.interpolate(t, size=(size, size), mode="area")
    else:
        out = F.interpolate(
            t, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return out[0].clamp_(0.0, 1.0).numpy()


def hu_to_input(hu: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """HU image → model input: the windows of ``spec``, padded square, resized."""
    return resize(window_stack(hu, spec.windows), spec.size, spec.resample)


def preprocess(ds: Dataset, spec: PreprocessSpec) -> np.ndarray:
    """Dataset → model input: float32 ``(channels, size, size)`` in [0, 1]."""
    return hu_to_input(to_hu(ds), spec)


def preprocess_file(path: str | Path, spec: PreprocessSpec) -> np.ndarray:
    """:func:`preprocess` of a file on disk."""
    return preprocess(read(path), spec)
