"""DICOM dataset → Hounsfield units → window stack → model input.

One function, :func:`preprocess`, turns a pydicom dataset into the tensor a model sees. Training,
``ichnode predict``, ``ichnode evaluate`` and the node's workers all call it with the
:class:`PreprocessSpec` recorded in the checkpoint, so a model is never served with
preprocessing other than the one it was trained with.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ichnode.errors import ImagingError, NotDicomError

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
#: Most neighbouring slices on each side a 2.5-D input may take.
MAX_CONTEXT = 3


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything that turns HU into model input; recorded in every checkpoint.

    Two geometries:

    - ``pixel_mm`` set (the default for new models): the HU image is resampled to
      ``pixel_mm`` millimetres per pixel (from PixelSpacing), so the model sees millimetres
      rather than matrix pixels, then a ``size`` x ``size`` field of view is cut around the
      head's centre (air outside); the windows are applied last. Training caches the HU plane
      (:func:`hu_plane`) and augments in Hounsfield units before windowing (:func:`window_planes`).
    - ``pixel_mm`` None (checkpoints written before it existed): windows first, then the
      image is padded (centred, air) to a square and resized to ``size``, whatever its
      pixel spacing.

    ``context`` (2.5-D input, ``pixel_mm`` geometry only): the ``context`` neighbouring slices
    on each side, by z within the series, are input planes too; each plane gets every window,
    plane-major from the lowest z (:func:`planes_to_input`). A slice without a neighbour on a
    side (the first and last of a series, or z unknown) repeats itself there.

    ``mirror`` (``pixel_mm`` geometry only): each plane's windows are followed by the same
    windows of the plane minus its mirror image across the head's own midline
    (:func:`mirror_planes`), so what one side has and the other lacks (a unilateral
    extra-axial bleed) stands out from the symmetric anatomy around it.
    """

    windows: tuple[Window, ...] = field(default_factory=lambda: windows_for_mode("stack"))
    size: int = 224
    #: ``area`` (box average; 3x cheaper on CPU) or ``antialias`` (antialiased bilinear).
    resample: str = "area"
    #: Millimetres per input pixel; None: the legacy matrix-pixel geometry.
    pixel_mm: float | None = None
    #: Neighbouring slices on each side as extra input planes (0: one slice, 2-D).
    context: int = 0
    #: Left-right differences as extra channels (:func:`mirror_planes`).
    mirror: bool = False

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE_MODES:
            raise ValueError(f"resample {self.resample!r}: expected one of {RESAMPLE_MODES}")
        if self.pixel_mm is not None and not (0.1 <= self.pixel_mm <= 10.0):
            raise ValueError(f"pixel_mm {self.pixel_mm!r}: expected 0.1 to 10 mm")
        if not 0 <= self.context <= MAX_CONTEXT:
            raise ValueError(f"context {self.context!r}: expected 0 to {MAX_CONTEXT} slices")
        if self.context and self.pixel_mm is None:
            raise ValueError("context slices need the pixel_mm geometry")
        if self.mirror and self.pixel_mm is None:
            raise ValueError("mirror channels need the pixel_mm geometry")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "windows": [[w.name, w.center, w.width] for w in self.windows],
            "size": self.size,
            "resample": self.resample,
        }
        if self.pixel_mm is not None:
            out["pixel_mm"] = self.pixel_mm
        if self.context:  # absent for 2-D specs, so their checkpoints and caches are unchanged
            out["context"] = self.context
        if self.mirror:  # likewise absent unless set
            out["mirror"] = True
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        windows = tuple(Window(str(n), float(c), float(w)) for n, c, w in data["windows"])
        # Checkpoints written before `resample` existed were trained with antialiasing.
        resample = str(data.get("resample", "antialias"))
        pixel_mm = data.get("pixel_mm")
        return cls(
            windows=windows,
            size=int(data["size"]),
            resample=resample,
            pixel_mm=None if pixel_mm is None else float(pixel_mm),
            context=int(data.get("context", 0)),
            mirror=bool(data.get("mirror", False)),
        )

    @property
    def planes(self) -> int:
        """Slices per input: the slice and its ``context`` neighbours on each side."""
        return 2 * self.context + 1

    @property
    def channels(self) -> int:
        return len(self.windows) * self.planes * (2 if self.mirror else 1)


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Read without per-file validation warnings: the RSNA download stores ``ID_...`` strings
    in UID elements, and 750 000 warnings would drown every useful log line."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = saved


def read(path: str | Path, stop_before_pixels: bool = False) -> Dataset:
    """Read a DICOM file (header and pixel data, or the header alone) with a clear error for
    non-DICOM input."""
    try:
        return pydicom.dcmread(str(path), force=False, stop_before_pixels=stop_before_pixels)
    except pydicom.errors.InvalidDicomError:  # no preamble and "DICM" prefix
        raise NotDicomError("not a DICOM file") from None
    except OSError as exc:  # missing, a folder, unreadable: the reason without the path again
        raise ImagingError(f"cannot read: {exc.strerror or type(exc).__name__}") from None
    except (EOFError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImagingError(f"not a readable DICOM file ({message})") from None


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


def first_frame_value(ds: Dataset, keyword: str, functional_group: str) -> Any:
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


#: Field of view assumed for an image without PixelSpacing (a typical head CT, in mm).
DEFAULT_FOV_MM = 230.0
#: Air in Hounsfield units (the fill outside the image).
AIR_HU = -1000.0
#: Voxels above this HU belong to the patient (or the head rest) when centring the view.
BODY_HU = -300.0


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm of the first frame; None when absent or implausible."""
    value = first_frame_value(ds, "PixelSpacing", "PixelMeasuresSequence")
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not (0.01 <= row <= 10.0 and 0.01 <= col <= 10.0):
        return None
    return row, col


def _resampled_shape(
    shape: tuple[int, ...], spacing: tuple[float, float] | None, pixel_mm: float
) -> tuple[int, int]:
    """Rows and columns of an image of ``shape`` resampled to ``pixel_mm`` per pixel."""
    h, w = shape
    if spacing is None:
        spacing = (DEFAULT_FOV_MM / max(h, w),) * 2
    return max(1, round(h * spacing[0] / pixel_mm)), max(1, round(w * spacing[1] / pixel_mm))


def _resample(t: torch.Tensor, size: tuple[int, int], resample: str) -> torch.Tensor:
    """``(N, C, H, W)`` resampled to ``size``: area average when shrinking (``area``),
    antialiased bilinear otherwise when shrinking, bilinear when enlarging."""
    if tuple(t.shape[-2:]) == size:
        return t
    shrink = size[0] < t.shape[-2] and size[1] < t.shape[-1]
    if shrink and resample == "area":
        return F.interpolate(t, size=size, mode="area")
    return F.interpolate(t, size=size, mode="bilinear", antialias=shrink, align_corners=False)


def _locate(
    hu: np.ndarray, spacing: tuple[float, float] | None, spec: PreprocessSpec
) -> tuple[np.ndarray, int, int]:
    """The HU image resampled to ``spec.pixel_mm`` and the top-left corner (in it) of the
    ``size`` x ``size`` view centred on the head's pixels."""
    if spec.pixel_mm is None:
        raise ValueError("hu_plane needs a spec with pixel_mm")
    new_h, new_w = _resampled_shape(hu.shape, spacing, spec.pixel_mm)
    t = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None, None]
    img = _resample(t, (new_h, new_w), spec.resample)[0, 0].numpy()
    body = img > BODY_HU
    if body.any():
        rows, cols = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
        cy, cx = (rows[0] + rows[-1] + 1) // 2, (cols[0] + cols[-1] + 1) // 2
    else:
        cy, cx = new_h // 2, new_w // 2
    return img, int(cy - spec.size // 2), int(cx - spec.size // 2)


def _overlap(
    shape: tuple[int, ...], top: int, left: int, size: int
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Where a ``size`` x ``size`` window at (top, left) overlaps an image of ``shape``: the
    image's slices and the window's."""
    h, w = shape
    t, lft, b, r = max(top, 0), max(left, 0), min(top + size, h), min(left + size, w)
    b, r = max(b, t), max(r, lft)
    return (slice(t, b), slice(lft, r)), (slice(t - top, b - top), slice(lft - left, r - left))


def _view(src: np.ndarray, top: int, left: int, size: int, fill: float) -> np.ndarray:
    """The ``size`` x ``size`` window of ``src`` at (top, left); ``fill`` outside ``src``."""
    out = np.full((size, size), fill, dtype=np.float32)
    inside, window = _overlap(src.shape, top, left, size)
    out[window] = src[inside]
    return out


def hu_plane(
    hu: np.ndarray, spacing: tuple[float, float] | None, spec: PreprocessSpec
) -> np.ndarray:
    """HU image → ``(size, size)`` float32 HU at ``spec.pixel_mm``, centred on the head.

    Resamples (area average when shrinking, bilinear when enlarging) so that one pixel is
    ``pixel_mm`` square, then cuts ``size`` x ``size`` around the centre of the body's pixels;
    what falls outside the image is air. Without PixelSpacing the image is taken to span
    :data:`DEFAULT_FOV_MM`.
    """
    img, top, left = _locate(hu, spacing, spec)
    return _view(img, top, left, spec.size, AIR_HU)


def hu_and_label_planes(
    hu: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, float] | None,
    spec: PreprocessSpec,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hu_plane`, and a per-pixel label map of the same image (uint8 classes, 0
    background; a phantom's bleed map) cut to the same view.

    Each class is resampled as a fraction of a pixel, as the HU are; a pixel of the view takes
    the class that covers at least half of it, else 0. Training uses it as per-pixel
    supervision that moves with the image.
    """
    if labels.shape != hu.shape:
        raise ValueError(f"label map {labels.shape} does not match the image {hu.shape}")
    img, top, left = _locate(hu, spacing, spec)
    out = np.zeros((spec.size, spec.size), dtype=np.uint8)
    classes = np.unique(labels)
    classes = classes[classes > 0]
    if len(classes):
        onehot = np.stack([labels == c for c in classes]).astype(np.float32)
        frac = _resample(torch.from_numpy(onehot)[None], img.shape, spec.resample)[0].numpy()
        view = np.zeros((len(classes), spec.size, spec.size), dtype=np.float32)
        inside, window = _overlap(img.shape, top, left, spec.size)
        view[(slice(None), *window)] = frac[(slice(None), *inside)]
        out = np.where(view.max(axis=0) >= 0.5, classes[view.argmax(axis=0)], 0)
    return _view(img, top, left, spec.size, AIR_HU), out.astype(np.uint8)


def input_to_display(
    values: np.ndarray, hu: np.ndarray, spacing: tuple[float, float] | None, spec: PreprocessSpec
) -> np.ndarray:
    """A map over the model's input (a saliency map, ``(s, s)`` at any resolution) → the same
    map over the slice as displayed: the HU image padded (centred) to a ``max(H, W)`` square.

    For a ``pixel_mm`` spec this undoes :func:`hu_plane` (the view cut from the resampled
    image); for a legacy spec the input already is the padded square.
    """
    values = np.asarray(values, dtype=np.float32)
    if spec.pixel_mm is None:
        return values
    img, top, left = _locate(hu, spacing, spec)
    size = spec.size
    if values.shape != (size, size):
        values = resize(values[None], size)[0]
    canvas = np.zeros(img.shape, dtype=np.float32)
    inside, window = _overlap(img.shape, top, left, size)
    canvas[inside] = values[window]
    t = torch.from_numpy(canvas)[None, None]
    back = F.interpolate(t, size=hu.shape, mode="bilinear", align_corners=False)[0].numpy()
    return _pad_square(back)[0]


def window_planes(planes: torch.Tensor, windows: tuple[Window, ...]) -> torch.Tensor:
    """HU planes ``(..., S, S)`` → windows stacked on a new channel axis ``(..., C, S, S)``.

    The torch twin of :func:`window_stack`, so training can augment in HU on the device and
    window afterwards with exactly the serving windows.
    """
    chans = [((planes - (w.center - w.width / 2.0)) / w.width).clamp(0.0, 1.0) for w in windows]
    return torch.stack(chans, dim=-3)


def planes_to_input(
    planes: torch.Tensor, windows: tuple[Window, ...], mirror: bool = False
) -> torch.Tensor:
    """HU planes ``(..., P, S, S)`` (a slice and its neighbours, lowest z first) → model input
    ``(..., P * C, S, S)``: every window of each plane, plane-major. One plane is the 2-D input.
    With ``mirror`` each plane has ``2 * C`` channels: its windows, then the same windows of
    the plane minus those of its mirror image (:func:`mirror_planes`), in [-1, 1]."""

    def window(hu: torch.Tensor) -> torch.Tensor:
        return window_planes(hu, windows)

    out = with_mirror_differences(planes, window) if mirror else window(planes)
    return out.flatten(-4, -3)


def with_mirror_differences(
    planes: torch.Tensor, window: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``window(planes)`` ``(..., P, C, S, S)`` followed on the channel axis by ``window(planes)
    - window(mirror_planes(planes))``: the mirror channels' one definition, for serving's
    windows and training's jittered ones alike."""
    out = window(planes)
    return torch.cat([out, out - window(mirror_planes(planes))], dim=-3)


#: Largest tilt of the head's midline from the image's vertical that :func:`mirror_planes`
#: trusts; a rounder section (the vertex) or a ragged one (the skull base) gives none.
MAX_MIDLINE_TILT_DEG = 25.0
#: The HU range whose pixels place the midline (:func:`mirror_planes`).
MIDLINE_HU = (-20.0, 100.0)


def mirror_planes(planes: torch.Tensor) -> torch.Tensor:
    """Each HU plane of ``(..., S, S)`` reflected across its head's midline.

    The midline is the long axis of the plane's soft tissue (:data:`MIDLINE_HU`: brain,
    CSF, muscle; not the bone, fat, pads or the head-rest, which need not be centred on the
    head) through its centroid, from the second moments; where that axis is more than
    :data:`MAX_MIDLINE_TILT_DEG` from the image's vertical, or the section is nearly round,
    the vertical through the centroid. A head lies front to back along the image's columns
    in axial CT, so the long axis is the midline whatever the rotation within that tilt.
    Outside the image is air. Bilinear.
    """
    shape = planes.shape
    s_h, s_w = shape[-2:]
    x = planes.reshape(-1, 1, s_h, s_w).float()
    w = ((x[:, 0] > MIDLINE_HU[0]) & (x[:, 0] < MIDLINE_HU[1])).float()
    dt, dev = x.dtype, x.device  # training mirrors on its device
    ys = torch.linspace(-1 + 1 / s_h, 1 - 1 / s_h, s_h, dtype=dt, device=dev)[:, None]
    xs = torch.linspace(-1 + 1 / s_w, 1 - 1 / s_w, s_w, dtype=dt, device=dev)[None, :]
    ys, xs = ys.expand(s_h, s_w), xs.expand(s_h, s_w)
    m = w.sum(dim=(1, 2)).clamp_min(1.0)
    cx, cy = (w * xs).sum(dim=(1, 2)) / m, (w * ys).sum(dim=(1, 2)) / m
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    mu20, mu02 = (w * dx * dx).sum(dim=(1, 2)) / m, (w * dy * dy).sum(dim=(1, 2)) / m
    mu11 = (w * dx * dy).sum(dim=(1, 2)) / m
    phi = 0.5 * torch.atan2(2 * mu11, mu20 - mu02)  # the long axis, from the x axis
    tilt = torch.remainder(phi, torch.pi) - torch.pi / 2  # from the vertical, (-pi/2, pi/2]
    spread = torch.sqrt((mu20 - mu02) ** 2 + 4 * mu11**2) / (mu20 + mu02).clamp_min(1e-6)
    trusted = (tilt.abs() <= math.radians(MAX_MIDLINE_TILT_DEG)) & (spread > 0.05)
    phi = torch.where(trusted, tilt + torch.pi / 2, torch.full_like(tilt, torch.pi / 2))
    c2, s2 = torch.cos(2 * phi), torch.sin(2 * phi)
    rot = torch.stack([torch.stack([c2, s2], -1), torch.stack([s2, -c2], -1)], -2)  # (N, 2, 2)
    centre = torch.stack([cx, cy], -1)[..., None]
    theta = torch.cat([rot, centre - rot @ centre], dim=-1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x - AIR_HU, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False) + AIR_HU  # fmt: skip
    return out.reshape(shape).to(planes.dtype)


def hu_to_input(
    hu: np.ndarray, spec: PreprocessSpec, spacing: tuple[float, float] | None = None
) -> np.ndarray:
    """HU image → model input ``(channels, size, size)`` in [0, 1], per ``spec``'s geometry.

    For a spec with ``context`` the slice stands in for its missing neighbours (as at the
    ends of a series); :func:`preprocess_planes` gives it the real ones.
    """
    if spec.pixel_mm is None:
        return resize(window_stack(hu, spec.windows), spec.size, spec.resample)
    plane = torch.from_numpy(hu_plane(hu, spacing, spec))
    return planes_to_input(plane.expand(spec.planes, -1, -1), spec.windows, spec.mirror).numpy()


def preprocess(ds: Dataset, spec: PreprocessSpec) -> np.ndarray:
    """Dataset → model input: float32 ``(channels, size, size)`` in [0, 1]."""
    return hu_to_input(to_hu(ds), spec, pixel_spacing(ds))


def context_positions(pos: int, length: int, context: int) -> list[int | None]:
    """Where the neighbours of the slice at ``pos`` of ``length`` z-ordered slices are: the
    ``context`` below, then the ``context`` above (its own place left out); None past an end.
    The one definition of a neighbour that training, ``predict`` and the node share."""
    around = (*range(pos - context, pos), *range(pos + 1, pos + 1 + context))
    return [j if 0 <= j < length else None for j in around]


def context_planes(
    centre: np.ndarray, neighbours: Sequence[np.ndarray | None], spec: PreprocessSpec
) -> np.ndarray:
    """The ``(planes, S, S)`` HU stack of a slice: ``neighbours`` holds the ``2 * context``
    neighbours' HU planes, lowest z first, the slice's own place left out; None (no such
    neighbour, or unreadable) repeats the slice."""
    if len(neighbours) != 2 * spec.context:
        raise ValueError(f"{len(neighbours)} neighbours for a context of {spec.context}")
    k = spec.context
    stack = [centre if n is None else n for n in neighbours[:k]]
    stack += [centre] + [centre if n is None else n for n in neighbours[k:]]
    return np.stack(stack).astype(np.float32, copy=False)


def context_input(
    centre: np.ndarray, neighbours: Sequence[np.ndarray | None], spec: PreprocessSpec
) -> np.ndarray:
    """Model input of a slice from its and its neighbours' HU planes (:func:`hu_plane`;
    neighbours as :func:`context_planes` takes them)."""
    planes = context_planes(centre, neighbours, spec)
    return planes_to_input(torch.from_numpy(planes), spec.windows, spec.mirror).numpy()


def read_neighbours(paths: Sequence[str | Path | None]) -> list[Dataset | None]:
    """The datasets of a slice's neighbours (as :func:`context_planes` takes them); None where
    there is none or it cannot be read, so the slice stands in for it (as at a series' end)."""
    out: list[Dataset | None] = []
    for path in paths:
        try:
            out.append(None if path is None else read(path))
        except ImagingError:
            out.append(None)
    return out


def preprocess_planes(
    ds: Dataset, neighbours: Sequence[Dataset | None], spec: PreprocessSpec
) -> np.ndarray:
    """:func:`preprocess` of a slice with its neighbours (lowest z first, see
    :func:`context_planes`; empty: none known, the slice stands in for all of them); for a
    2-D spec the neighbours are not read."""
    if not spec.context:
        return preprocess(ds, spec)
    hu = [None if n is None else preprocess_hu(n, spec) for n in neighbours]
    return context_input(preprocess_hu(ds, spec), hu or [None] * (2 * spec.context), spec)


def preprocess_hu(ds: Dataset, spec: PreprocessSpec) -> np.ndarray:
    """Dataset → the HU plane of :func:`hu_plane` (what training caches and augments)."""
    return hu_plane(to_hu(ds), pixel_spacing(ds), spec)
