"""Grad-CAM on real models (random weights, and the demo checkpoint when it is shipped)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from report_fixtures import synth_ct_study

from ichnode.imaging import PreprocessSpec, preprocess, resize, to_hu
from ichnode.model import Checkpoint, build, demo_model_path, load_checkpoint, save_checkpoint
from ichnode.report import ReportError, grad_cam
from ichnode.report.saliency import head_mask, mask_to_head, target_layer

SIZE = 96
CHECKPOINTS = ["ichnet", "simplecnn"] + (["demo"] if demo_model_path().is_file() else [])


@pytest.fixture(params=CHECKPOINTS)
def ckpt(request, tmp_path) -> Checkpoint:
    if request.param == "demo":
        return load_checkpoint(demo_model_path())
    torch.manual_seed(0)
    fresh = Checkpoint(
        model=build(request.param), architecture=request.param, spec=PreprocessSpec(size=SIZE)
    )
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, fresh)
    return load_checkpoint(path)  # a real round trip, as the node loads it


def _input(ckpt: Checkpoint) -> np.ndarray:
    return preprocess(synth_ct_study(n_slices=1)[0], ckpt.spec)


def test_map_has_input_size_and_unit_range(ckpt):
    x = _input(ckpt)
    cam = grad_cam(ckpt, x, "subdural")
    assert cam.shape == x.shape[1:] and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    assert np.isfinite(cam).all()


def test_no_hooks_grads_or_train_mode_left_behind(ckpt):
    grad_cam(ckpt, _input(ckpt))
    layer = target_layer(ckpt.model)
    assert not layer._forward_hooks and not layer._backward_hooks
    assert all(p.grad is None for p in ckpt.model.parameters())
    assert not ckpt.model.training


def test_works_inside_inference_mode(ckpt):
    with torch.inference_mode():
        cam = grad_cam(ckpt, _input(ckpt))
    assert cam.shape == (ckpt.spec.size, ckpt.spec.size)


def test_unknown_subtype_is_refused(ckpt):
    with pytest.raises(ReportError, match="subtype"):
        grad_cam(ckpt, _input(ckpt), "chronic")


def test_wrong_input_shape_is_named(ckpt):
    with pytest.raises(ReportError, match="x must have shape"):
        grad_cam(ckpt, np.zeros((1, 8, 8), np.float32))


def test_concurrent_maps_on_one_checkpoint_equal_the_sequential_ones(ckpt):
    study = synth_ct_study(n_slices=4, size=64)
    inputs = [preprocess(ds, ckpt.spec) for ds in study]
    expected = [grad_cam(ckpt, x, "subdural") for x in inputs]
    got: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            got[i] = grad_cam(ckpt, inputs[i], "subdural")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i % 4,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for i, cam in got.items():
        np.testing.assert_allclose(cam, expected[i], atol=1e-6)


# --- the map confined to the head ---------------------------------------------------------


def _phantom_slice():
    """The middle slice of a phantom head CT with an intraparenchymal bleed (256 px)."""
    from phantoms.synth import synth_study

    slices = synth_study(2, n_slices=8, size=256, subtypes=("intraparenchymal",))
    return slices[len(slices) // 2].dataset


def test_head_mask_is_the_filled_head_and_not_the_air():
    hu = np.full((64, 64), -1000.0)
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    hu[r < 25] = 1000.0  # a skull ring ...
    hu[r < 20] = -1000.0  # ... around air: the hole is filled
    hu[0:3, 0:3] = 500.0  # a small bright speck outside (head rest) is not the head
    mask = head_mask(hu)
    assert mask[32, 32] and mask[32, 10]
    assert not mask[1, 1] and not mask[32, 62]
    assert not head_mask(np.full((8, 8), -1000.0)).any()


def test_grad_cam_drawn_on_a_phantom_slice_is_zero_outside_the_head(ckpt):
    ds = _phantom_slice()
    hu = to_hu(ds)
    side = 256
    cam = resize(grad_cam(ckpt, preprocess(ds, ckpt.spec), "any")[None], side)[0]
    masked = mask_to_head(cam, hu)
    outside = resize(head_mask(hu).astype(np.float32)[None], side)[0] == 0.0
    assert outside.mean() > 0.2  # the phantom has air around the head
    assert np.all(masked[outside] == 0.0)
    # Well inside the head the map is the Grad-CAM map itself.
    inside = resize(head_mask(hu).astype(np.float32)[None], side)[0] == 1.0
    np.testing.assert_array_equal(masked[inside], cam[inside])
    # And an all-ones map keeps the head: the mask is not empty on a real head.
    assert mask_to_head(np.ones((side, side), np.float32), hu)[side // 2, side // 2] == 1.0


def test_mask_needs_a_square_map():
    with pytest.raises(ReportError, match="square"):
        mask_to_head(np.ones((4, 5)), np.zeros((4, 5)))
