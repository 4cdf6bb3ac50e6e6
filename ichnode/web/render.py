"""Slices as PNG, rendered on the fly from the stored file: a window, optionally Grad-CAM.

Saliency runs on a private copy of the node's checkpoint: Grad-CAM hooks the model and
switches it to eval mode, which must not race the workers' forward passes on the shared one.
"""

from __future__ import annotations

import copy
import io
import logging
import threading
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ichnode.imaging import (
    WINDOWS,
    Window,
    input_to_display,
    pixel_spacing,
    preprocess_planes,
    read,
    read_neighbours,
    resize,
    to_hu,
)
from ichnode.inference import Predictor
from ichnode.report.saliency import grad_cam, overlay
from ichnode.report.summary import draw_edge_letters, edge_letters, text_font
from ichnode.subtypes import ANY

log = logging.getLogger(__name__)

#: Largest rendered side; thumbnails ask for less.
MAX_SIZE = 1024
MIN_SIZE = 32
#: Images at least this large get the orientation letters burned in (not the thumbnails).
LETTERS_MIN_SIZE = 192


class SaliencyModel:
    """A lazily made private copy of the predictor's checkpoint, used under a lock."""

    def __init__(self, predictor: Predictor | None) -> None:
        self._predictor = predictor
        self._ckpt = None
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return self._predictor is not None

    @property
    def context(self) -> int:
        """Neighbouring slices on each side the model reads (0: 2-D)."""
        return self._predictor.checkpoint.spec.context if self._predictor else 0

    def cam(
        self, ds: object, subtype: str = ANY, neighbour_paths: Sequence[str | None] = ()
    ) -> np.ndarray:
        """Grad-CAM map of ``subtype`` over the displayed slice of ``ds`` (its padded square,
        in [0, 1]): computed on the model input (with the stored neighbours of a 2.5-D model,
        lowest z first), mapped back to the slice's pixels."""
        if self._predictor is None:
            raise RuntimeError("no model loaded: saliency is not available")
        neighbours = read_neighbours(neighbour_paths)
        with self._lock:
            served = self._predictor.checkpoint
            if self._ckpt is None or self._ckpt.model_id != served.model_id:  # also a reload
                self._ckpt = copy.deepcopy(served)
            spec = self._ckpt.spec
            cam = grad_cam(self._ckpt, preprocess_planes(ds, neighbours, spec), subtype)
        return input_to_display(cam, to_hu(ds), pixel_spacing(ds), spec)


def render_png(
    path: str,
    window: str | Window = "brain",
    size: int | None = None,
    saliency: SaliencyModel | None = None,
    subtype: str = ANY,
    letters: bool = True,
    neighbour_paths: Sequence[str | None] = (),
) -> bytes:
    """The slice at ``path`` in ``window`` (a name or any HU window; padded square, ``size``
    px), as PNG bytes.

    With ``saliency`` the Grad-CAM map of ``subtype`` is blended in, confined to the head; with
    ``letters``, from :data:`LETTERS_MIN_SIZE` px on, the orientation letters are drawn at the
    edges (the web viewer draws its own, which stay put when it zooms).
    """
    ds = read(path)
    hu = to_hu(ds)
    gray = (WINDOWS[window] if isinstance(window, str) else window).apply(hu)
    side = size or max(gray.shape)
    side = int(min(max(side, MIN_SIZE), MAX_SIZE))
    gray = resize(gray[None], side)[0]
    if saliency is not None:
        rgb = overlay(gray, saliency.cam(ds, subtype, neighbour_paths), hu)
    else:
        rgb = np.repeat(gray[..., None], 3, axis=2)
    image = Image.fromarray((np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    if letters and side >= LETTERS_MIN_SIZE:
        font = text_font(max(14, side // 28))
        draw_edge_letters(ImageDraw.Draw(image), (0, 0, side, side), edge_letters(ds), font)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def orientation(path: str) -> dict[str, str]:
    """The patient-direction letters at the edges of the slice at ``path`` (header only)."""
    return edge_letters(read(path, stop_before_pixels=True))
