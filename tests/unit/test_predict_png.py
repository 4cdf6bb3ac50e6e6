"""``ichnode predict --png``: text on a semi-opaque box, a font scaled to the image, letters."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ct_dataset
from PIL import Image

from ichnode.inference import SlicePrediction
from ichnode.predict import PNG_BACKING_ALPHA, write_png
from ichnode.subtypes import SUBTYPES

#: A uniform slice at 60 HU: brain window 40/80 shows it as 0.75 grey (191).
HU = 60
GREY = round(0.75 * 255)


def _prediction() -> SlicePrediction:
    probs = dict.fromkeys(SUBTYPES, 0.1) | {"subdural": 0.9, "any": 0.95}
    return SlicePrediction(probabilities=probs, predicted=["subdural", "any"])


def _png(tmp_path, side: int) -> np.ndarray:
    ds = ct_dataset(np.full((side, side), HU + 1024, np.uint16))
    out = tmp_path / f"{side}.png"
    write_png(ds, _prediction(), out)
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def _box_rows(img: np.ndarray) -> int:
    """Rows of the top text box: darkened by the backing along its left margin."""
    column = img[:, 2, 0]
    return int(np.argmax(column > GREY - 5))


@pytest.mark.parametrize("side", [256, 512, 1024])
def test_text_sits_on_a_semi_opaque_dark_box(tmp_path, side):
    img = _png(tmp_path, side)
    backed = round(GREY * (1 - PNG_BACKING_ALPHA / 255))
    # Left of the text, inside the box: the grey shows through, darkened, not hidden.
    assert abs(img[10, 2, 0] - backed) <= 2
    # The footer has its box too; the middle of the image is untouched.
    assert abs(img[side - 3, 2, 0] - backed) <= 2
    assert np.all(img[side // 2, side // 2 - 30 : side // 2 + 30] == GREY)
    # The flagged label is written in red on the box.
    red = (img[..., 0] > 200) & (img[..., 1] < 100)
    assert red[: _box_rows(img)].sum() > 10


def test_font_and_box_scale_with_the_image(tmp_path):
    small, large = _box_rows(_png(tmp_path, 512)), _box_rows(_png(tmp_path, 1024))
    assert 1.7 < large / small < 2.3


def test_orientation_letters_are_drawn_at_the_edges(tmp_path):
    img = _png(tmp_path, 512)
    white = img.min(axis=2) > 230  # antialiased strokes; the slice is 191 grey
    assert white[236:276, :40].sum() > 5  # R on the left
    assert white[236:276, 472:].sum() > 5  # L on the right
    assert white[:40, 236:276].sum() > 5  # A on top
    assert white[472:, 236:276].sum() > 5  # P at the bottom
    # The plain slice is uniform grey: nothing else there is white.
    assert not white[236:276, 100:400].any()
