"""Slices as PNG, rendered on the fly from the stored file: a window, optionally Grad-CAM.

Saliency runs on the node's private CPU copy of its checkpoint
(:class:`ichnode.report.saliency.SaliencyModel`, shared with the reports).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ichnode.imaging import WINDOWS, Window, read, resize, to_hu
from ichnode.report.saliency import SaliencyModel, overlay
from ichnode.report.summary import draw_edge_letters, edge_letters, text_font
from ichnode.subtypes import ANY

log = logging.getLogger(__name__)

#: Largest rendered side; thumbnails ask for less.
MAX_SIZE = 1024
MIN_SIZE = 32
#: Images at least this large get the orientation letters burned in (not the thumbnails).
LETTERS_MIN_SIZE = 192


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
