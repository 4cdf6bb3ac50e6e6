"""The slices the pages show (``ichnode.web.render``): heat only on the head, letters burned in."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ichnode.imaging import read, resize, to_hu
from ichnode.inference import Predictor
from ichnode.report.saliency import SaliencyModel, head_mask
from ichnode.web.render import LETTERS_MIN_SIZE, render_png
from phantoms.synth import synth_study

SIZE = 256


@pytest.fixture(scope="module")
def slice_path(tmp_path_factory) -> str:
    slices = synth_study(2, n_slices=8, size=SIZE, subtypes=("intraparenchymal",))
    path = tmp_path_factory.mktemp("render") / "slice.dcm"
    slices[len(slices) // 2].dataset.save_as(path, enforce_file_format=True)
    return str(path)


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def test_saliency_overlay_leaves_the_air_around_the_head_alone(slice_path):
    saliency = SaliencyModel(Predictor(None, "cpu"))
    plain = _png(render_png(slice_path, "brain", SIZE))
    heat = _png(render_png(slice_path, "brain", SIZE, saliency, "any"))
    hu = to_hu(read(slice_path))
    outside = resize(head_mask(hu).astype(np.float32)[None], SIZE)[0] == 0.0
    assert outside.mean() > 0.2
    assert np.array_equal(plain[outside], heat[outside])
    # The grey image itself is unchanged there; the overlay is on the head (if anywhere).
    assert np.all(plain[..., 0] == plain[..., 2])


def test_orientation_letters_on_the_viewer_image_but_not_on_thumbnails(slice_path):
    big = _png(render_png(slice_path, "brain", SIZE))
    mid = SIZE // 2
    bright = big.min(axis=2) > 230
    # R left, L right, A top, P bottom: on air (black), so bright pixels are the letters.
    assert bright[mid - 20 : mid + 20, :24].sum() > 5
    assert bright[mid - 20 : mid + 20, SIZE - 24 :].sum() > 5
    assert bright[:24, mid - 20 : mid + 20].sum() > 5
    small = _png(render_png(slice_path, "brain", 96))
    assert LETTERS_MIN_SIZE > 96
    assert small[40:56, :10].max() < 30  # air at the left edge of a thumbnail: no letter


def test_letters_can_be_left_to_the_page(slice_path):
    """The web viewer draws its own letters (they must not move when it zooms)."""
    bare = _png(render_png(slice_path, "brain", SIZE, letters=False))
    with_letters = _png(render_png(slice_path, "brain", SIZE))
    mid = SIZE // 2
    assert (bare.min(axis=2) > 230)[mid - 20 : mid + 20, :24].sum() == 0
    assert not np.array_equal(bare, with_letters)
