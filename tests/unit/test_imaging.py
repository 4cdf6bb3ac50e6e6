"""ichnode.imaging: HU conversion per storage variant, transfer syntaxes, windows, resize."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from helpers import ct_dataset, run_dcmtk, sample_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from ichnode.errors import ImagingError
from ichnode.imaging import (
    WINDOWS,
    PreprocessSpec,
    needs_rsna_12bit_fix,
    parse_window,
    preprocess,
    rescale,
    resize,
    to_hu,
    window_stack,
    windows_for_mode,
)
from ichnode.node.selection import geometry

# Known HU values placed at known pixels.
HU = np.array([[-1000, -100, 0, 35], [80, 700, 1500, 3000]], dtype=np.int32)


def test_unsigned_storage_with_intercept_gives_exact_hu():
    ds = ct_dataset((HU + 1024).astype(np.uint16), intercept=-1024)
    assert np.array_equal(to_hu(ds), HU)


def test_signed_storage_with_zero_intercept_gives_exact_hu():
    ds = ct_dataset(HU.astype(np.int16), intercept=0, signed=True)
    assert np.array_equal(to_hu(ds), HU)


def test_slope_is_applied():
    ds = ct_dataset((HU + 1024).astype(np.uint16) * 2, slope=0.5, intercept=-1024)
    assert np.array_equal(to_hu(ds), HU)


def test_rsna_12bit_quirk_is_corrected():
    # RSNA slices: BitsStored 12, unsigned, intercept 0, negative HU wrapped around 4096.
    stored = np.where(HU < 0, HU + 4096, HU).astype(np.uint16)
    ds = ct_dataset(stored, intercept=0, bits_stored=12)
    assert np.array_equal(to_hu(ds), HU)


def test_12bit_with_a_proper_intercept_is_left_alone():
    stored = (np.clip(HU, -1000, 3000) + 1024).astype(np.uint16)
    ds = ct_dataset(stored, intercept=-1024, bits_stored=12)
    assert np.array_equal(to_hu(ds), stored.astype(np.int32) - 1024)


def test_monochrome1_is_inverted():
    ds = ct_dataset((HU + 1024).astype(np.uint16), photometric="MONOCHROME1")
    hu = to_hu(ds)
    assert hu[0, 0] == HU.max() and hu[1, 3] == HU.min()


def test_multivalued_window_attributes_are_tolerated():
    ds = ct_dataset((HU + 1024).astype(np.uint16), WindowCenter=[40, 40], WindowWidth=[80, 80])
    assert preprocess(ds, PreprocessSpec(size=8)).shape == (3, 8, 8)


@pytest.mark.parametrize(
    "args",
    [
        ("dcmcjpeg", "+e1"),  # JPEG lossless, first-order prediction (SV1)
        ("dcmcjpeg", "+el"),  # JPEG lossless, process 14
        ("dcmcjpls", "+el"),  # JPEG-LS lossless
        ("dcmcrle",),  # RLE lossless
        ("dcmconv", "+td"),  # deflated explicit VR little endian
    ],
    ids=["jpeg-lossless-sv1", "jpeg-lossless-p14", "jpeg-ls", "rle", "deflated"],
)
def test_lossless_transfer_syntaxes_decode_to_the_same_hu(tmp_path, args):
    source = sample_file("693_UNCR.dcm")
    out = tmp_path / "encoded.dcm"
    done = run_dcmtk(args[0], *args[1:], str(source), str(out))
    assert done.returncode == 0, done.stderr
    encoded = pydicom.dcmread(out)
    assert (
        encoded.file_meta.TransferSyntaxUID != pydicom.dcmread(source).file_meta.TransferSyntaxUID
    )
    assert np.array_equal(to_hu(encoded), to_hu(pydicom.dcmread(source)))


def test_jpeg2000_lossless_real_head_ct_matches_uncompressed():
    j2k = pydicom.dcmread(sample_file("693_J2KR.dcm"))
    assert j2k.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert np.array_equal(to_hu(j2k), to_hu(pydicom.dcmread(sample_file("693_UNCR.dcm"))))


def test_jpeg2000_lossy_real_head_ct_is_close():
    lossy = to_hu(pydicom.dcmread(sample_file("693_J2KI.dcm")))
    reference = to_hu(pydicom.dcmread(sample_file("693_UNCI.dcm")))
    assert np.abs(lossy - reference).mean() < 20


def test_rle_and_deflate_written_by_pydicom_round_trip(tmp_path):
    ds = ct_dataset((HU + 1024).astype(np.uint16))
    rle = ct_dataset((HU + 1024).astype(np.uint16))
    rle.compress(RLELossless)
    assert np.array_equal(to_hu(rle), HU)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "d.dcm", enforce_file_format=True)
    assert np.array_equal(to_hu(pydicom.dcmread(tmp_path / "d.dcm")), HU)


def test_undecodable_pixels_name_the_transfer_syntax():
    ds = pydicom.dcmread(sample_file("693_J2KR.dcm"))
    ds.PixelData = ds.PixelData[:200] + b"\x00" * 64  # corrupt the codestream
    with pytest.raises(ImagingError, match="JPEG 2000"):
        to_hu(ds)


def test_dataset_without_pixels_is_a_clear_error():
    ds = ct_dataset((HU + 1024).astype(np.uint16))
    del ds.PixelData
    with pytest.raises(ImagingError, match="no pixel data"):
        to_hu(ds)


def test_non_ct_is_a_clear_error():
    ds = pydicom.dcmread(sample_file("MR_small.dcm"))
    with pytest.raises(ImagingError, match="not a CT image"):
        to_hu(ds)


def test_huge_header_with_tiny_pixel_data_does_not_allocate():
    ds = ct_dataset(np.zeros((2, 2), np.uint16))
    ds.Rows = ds.Columns = 65535
    with pytest.raises(ImagingError, match="implausible image size"):
        to_hu(ds)


def test_windows_clip_and_scale_to_unit_range():
    hu = np.array([[-1000.0, 0.0, 40.0, 80.0, 1000.0]])
    brain = WINDOWS["brain"].apply(hu.copy())
    assert brain.tolist() == [[0.0, 0.0, 0.5, 1.0, 1.0]]
    stack = window_stack(hu, windows_for_mode("stack"))
    assert stack.shape == (3, 1, 5) and stack.min() >= 0 and stack.max() <= 1


def test_single_mode_repeats_the_brain_window():
    hu = np.linspace(-50, 150, 25, dtype=np.float32).reshape(5, 5)
    stack = window_stack(hu, windows_for_mode("single"))
    assert np.array_equal(stack[0], stack[1]) and np.array_equal(stack[0], stack[2])


def test_parse_window_accepts_names_and_center_width():
    assert parse_window("subdural") == WINDOWS["subdural"]
    w = parse_window("40/380")
    assert (w.center, w.width) == (40, 380)
    with pytest.raises(ValueError, match="neither a name"):
        parse_window("wide")


def test_non_square_images_are_padded_not_stretched():
    img = np.ones((1, 100, 50), dtype=np.float32)
    out = resize(img, 100)
    assert out.shape == (1, 100, 100)
    # The 50-pixel-wide content stays 50 pixels wide, centred, with zero (air) either side.
    assert (
        out[0, 50, :20].max() == 0 and out[0, 50, 30:70].min() > 0.99 and out[0, 50, 80:].max() == 0
    )


def test_preprocess_real_head_ct_has_the_spec_shape():
    ds = pydicom.dcmread(sample_file("693_UNCR.dcm"))
    x = preprocess(ds, PreprocessSpec(size=224))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.mean() > 0.05


def test_spec_round_trips_through_a_dict():
    spec = PreprocessSpec(windows=(parse_window("brain"), parse_window("60/300")), size=96)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec


def test_area_resampling_averages_blocks_exactly():
    img = np.arange(16, dtype=np.float32).reshape(1, 4, 4) / 16
    out = resize(img, 2, "area")
    assert np.allclose(out[0], img[0].reshape(2, 2, 2, 2).mean(axis=(1, 3)))


def test_checkpoints_without_resample_mode_keep_antialiasing():
    legacy = {"windows": [["brain", 40, 80]], "size": 64}
    assert PreprocessSpec.from_dict(legacy).resample == "antialias"
    with pytest.raises(ValueError, match="resample"):
        PreprocessSpec(resample="nearest")


def test_window_stack_leaves_its_input_alone():
    hu = np.array([[-50.0, 40.0, 500.0]])
    window_stack(hu, windows_for_mode("stack"))
    assert hu.tolist() == [[-50.0, 40.0, 500.0]]


def test_enhanced_ct_rescale_and_geometry_come_from_the_functional_groups():
    # Enhanced CT keeps RescaleIntercept (-1024 here) in PixelValueTransformationSequence and
    # the slice position in PlanePositionSequence; read at the top level only, every HU value
    # was off by 1024 (air at 0 HU) and the slice had no z.
    ds = pydicom.dcmread(sample_file("eCT_Supplemental.dcm"))
    assert "RescaleIntercept" not in ds and str(ds.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.2.1"
    assert rescale(ds) == (1.0, -1024.0)
    assert not needs_rsna_12bit_fix(ds)
    hu = to_hu(ds)
    np.testing.assert_array_equal(hu, ds.pixel_array[0].astype(np.float32) - 1024.0)
    assert hu.min() == -1024.0  # air
    frame = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    assert geometry(ds).z == pytest.approx(float(frame.ImagePositionPatient[2]))
    # A classic CT image still reads them at the top level.
    ct = pydicom.dcmread(sample_file("CT_small.dcm"))
    assert rescale(ct) == (float(ct.RescaleSlope), float(ct.RescaleIntercept))


def _disc_image(size: int, radius_px: float, centre: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    hu[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius_px**2] = 40.0
    return hu


def test_hu_plane_resamples_to_millimetres_and_centres_the_head():
    from ichnode.imaging import PreprocessSpec, hu_plane

    spec = PreprocessSpec(size=256, pixel_mm=1.0)
    # A 90 mm-radius head, off centre, on two scanners: 512 px at 0.45 mm and 256 px at 0.9 mm.
    fine = hu_plane(_disc_image(512, 200, (300, 220)), (0.45, 0.45), spec)
    coarse = hu_plane(_disc_image(256, 100, (150, 110)), (0.9, 0.9), spec)
    for plane in (fine, coarse):
        assert plane.shape == (256, 256) and plane[0, 0] == -1000.0  # air around it
        inside = plane > -500
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        assert abs((rows[-1] - rows[0] + 1) - 180) <= 3  # 180 mm across at 1 mm per pixel
        assert abs((cols[-1] - cols[0] + 1) - 180) <= 3
        assert abs((rows[0] + rows[-1]) / 2 - 128) <= 2  # centred, wherever it lay
        assert abs((cols[0] + cols[-1]) / 2 - 128) <= 2


def test_hu_plane_without_pixel_spacing_assumes_the_default_field_of_view():
    from ichnode.imaging import DEFAULT_FOV_MM, PreprocessSpec, hu_plane

    spec = PreprocessSpec(size=64, pixel_mm=DEFAULT_FOV_MM / 64)
    plane = hu_plane(_disc_image(256, 50, (128, 128)), None, spec)
    assert abs(int((plane[32] > -500).sum()) - 25) <= 2  # 100 of 256 px -> 25 of 64
    assert plane[0, 0] == -1000.0


def test_preprocess_with_pixel_mm_is_the_windowed_hu_plane():
    import torch

    from ichnode.imaging import (
        PreprocessSpec,
        pixel_spacing,
        preprocess,
        preprocess_hu,
        window_planes,
    )

    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    spec = PreprocessSpec(size=96, pixel_mm=1.2)
    assert pixel_spacing(ds) == (0.661468, 0.661468)
    expected = window_planes(torch.from_numpy(preprocess_hu(ds, spec)), spec.windows).numpy()
    np.testing.assert_array_equal(preprocess(ds, spec), expected)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert PreprocessSpec.from_dict({"windows": [["brain", 40, 80]], "size": 8}).pixel_mm is None


def test_a_map_over_the_model_input_lands_on_the_same_anatomy_of_the_slice():
    from ichnode.imaging import PreprocessSpec, hu_plane, input_to_display

    spec = PreprocessSpec(size=64, pixel_mm=2.0)
    hu = _disc_image(200, 60, (120, 80))  # 0.9 mm pixels, a head off centre
    spacing = (0.9, 0.9)
    plane = hu_plane(hu, spacing, spec)
    marker = (plane > -500).astype(np.float32)  # "saliency" exactly on the head in the input
    back = input_to_display(marker, hu, spacing, spec)
    assert back.shape == (200, 200)  # the padded square of the 200 x 200 slice
    head = hu > -500
    assert back[head].mean() > 0.9 and back[~head].mean() < 0.05  # on the head, not the air
    legacy = PreprocessSpec(size=64)
    assert input_to_display(marker, hu, spacing, legacy) is not None
    np.testing.assert_array_equal(input_to_display(marker, hu, spacing, legacy), marker)


@pytest.mark.parametrize(("size", "spacing"), [(512, 0.45), (160, 1.4)])
def test_a_label_map_is_cut_to_the_hu_planes_view_and_stays_on_its_pixels(size, spacing):
    from ichnode.imaging import PreprocessSpec, hu_and_label_planes, hu_plane

    spec = PreprocessSpec(size=128, pixel_mm=1.0)  # shrinks the first image, enlarges the second
    hu = _disc_image(size, int(80 / spacing), (size // 2 + 10, size // 2 - 20))
    yy, xx = np.mgrid[:size, :size]
    # A 12 x 12 mm bleed (class 4) and a 1 mm speck (class 2) inside the head.
    block = (abs(yy - (size // 2 + 10)) < 6 / spacing) & (abs(xx - (size // 2 - 35)) < 6 / spacing)
    labels = np.zeros((size, size), np.uint8)
    labels[block] = 4
    hu[block] = 75.0
    labels[size // 2 + 10, size // 2 - 5] = 2
    plane, mask = hu_and_label_planes(hu, labels, (spacing, spacing), spec)
    np.testing.assert_array_equal(plane, hu_plane(hu, (spacing, spacing), spec))
    assert mask.shape == (128, 128) and mask.dtype == np.uint8
    # The speck keeps its class where its pixel is larger than a pixel of the view.
    assert set(np.unique(mask)) == ({0, 2, 4} if spacing > spec.pixel_mm else {0, 4})
    assert abs(int((mask == 4).sum()) - 144) <= 30  # 12 x 12 mm at 1 mm per pixel
    assert (plane[mask == 4] > 60).mean() > 0.95  # on the dense pixels of the bleed
    with pytest.raises(ValueError, match="does not match"):
        hu_and_label_planes(hu, labels[:-1], (spacing, spacing), spec)


def _head(size: int, tilt_deg: float, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """An elliptical skull (long axis ``tilt_deg`` from the vertical) around brain, with a
    45 HU lens against the inner table on one side only; its mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    a = np.radians(tilt_deg)
    u = (xx - centre[0]) * np.cos(a) + (yy - centre[1]) * np.sin(a)  # across the head
    v = -(xx - centre[0]) * np.sin(a) + (yy - centre[1]) * np.cos(a)  # front to back
    img = np.full((size, size), -1000.0)
    img[(u / 40) ** 2 + (v / 50) ** 2 <= 1] = 1000.0
    img[(u / 36) ** 2 + (v / 46) ** 2 <= 1] = 35.0
    lens = ((u - 31) / 4) ** 2 + (v / 12) ** 2 <= 1
    img[lens & ((u / 36) ** 2 + (v / 46) ** 2 <= 1)] = 80.0
    return img.astype(np.float32), lens


@pytest.mark.parametrize("tilt", [0.0, 12.0, -20.0])
def test_mirror_planes_cancel_the_symmetric_head_and_keep_a_one_sided_lesion(tilt):
    import torch

    from ichnode.imaging import mirror_planes

    img, lens = _head(128, tilt, (70.0, 60.0))
    mirrored = mirror_planes(torch.from_numpy(img)[None, None]).numpy()[0, 0]
    diff = np.abs(img - mirrored)
    brain = (np.abs(img - 35.0) < 1) & ~lens
    away = brain & (np.abs(np.roll(img, 2, 0) - 35) < 1) & (np.abs(np.roll(img, -2, 1) - 35) < 1)
    # Inside the brain, away from the lesion's mirror image and the edges, nothing is left;
    # the lesion stands out by its contrast over the brain on the other side.
    lens_mirror = np.abs(mirrored - 80.0) < 1
    assert np.median(diff[away & ~lens_mirror]) == 0.0
    assert np.median((img - mirrored)[lens & (img == 80.0)]) == pytest.approx(45.0, abs=1.0)
    # Without the tilt estimate, a reflection across the image's vertical would leave the
    # skull's edges far apart: with it, few pixels differ by more than bone would.
    assert (diff > 500).mean() < 0.03


def test_mirror_spec_doubles_the_channels_and_keeps_the_cache_of_its_plain_twin():
    import torch

    from ichnode.imaging import planes_to_input
    from training.cache import spec_key

    plain = PreprocessSpec(size=64, pixel_mm=0.9)
    spec = PreprocessSpec(size=64, pixel_mm=0.9, mirror=True)
    assert spec.channels == 2 * plain.channels
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert "mirror" not in plain.to_dict()  # older checkpoints and caches are unchanged
    assert spec_key(spec) == spec_key(plain)
    img, _ = _head(64, 0.0, (32.0, 32.0))
    x = planes_to_input(torch.from_numpy(img)[None], spec.windows, mirror=True)
    assert x.shape == (spec.channels, 64, 64)
    assert torch.equal(x[: plain.channels], planes_to_input(torch.from_numpy(img)[None],
                                                            plain.windows))  # fmt: skip
    assert x[plain.channels :].min() < 0 < x[plain.channels :].max()  # the lens and its image
    with pytest.raises(ValueError, match="mirror"):
        PreprocessSpec(size=64, pixel_mm=None, mirror=True)
