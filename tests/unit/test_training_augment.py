"""Training-only augmentation."""

from __future__ import annotations

import torch

from training.augment import NO_AUGMENT, AugmentConfig, augment_batch


def _batch() -> torch.Tensor:
    x = torch.zeros(4, 3, 32, 32)
    x[:, :, 8:24, 4:14] = 0.6  # an off-centre block: flips and rotations move it
    return x


def test_disabled_augmentation_returns_the_batch_unchanged():
    x = _batch()
    assert augment_batch(x, NO_AUGMENT, torch.Generator().manual_seed(0)) is x


def test_augmentation_changes_images_keeps_shape_and_range_and_is_seeded():
    x = _batch()
    a = augment_batch(x, AugmentConfig(hflip=1.0), torch.Generator().manual_seed(0))
    b = augment_batch(x, AugmentConfig(hflip=1.0), torch.Generator().manual_seed(0))
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.allclose(a, x, atol=0.05)
    # hflip=1: the block moves to the right half.
    assert float(a[..., 16:].sum()) > float(a[..., :16].sum())


def test_augmentation_settings_are_a_plain_dict_for_the_checkpoint_summary():
    d = AugmentConfig().to_dict()
    assert d["enabled"] is True and {"hflip", "rotate_deg", "scale", "contrast"} <= set(d)


def _hu_batch() -> torch.Tensor:
    """Two HU planes: air around a disc of brain (30 HU) inside a bone ring (1000 HU)."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    r = ((yy - 32) ** 2 + (xx - 32) ** 2).sqrt()
    plane = torch.full((64, 64), -1000.0)
    plane[r < 24] = 1000.0
    plane[r < 20] = 30.0
    return plane.expand(2, 1, 64, 64).clone()


def test_hu_augmentation_is_seeded_keeps_air_outside_and_alters_soft_tissue():
    from training.augment import NO_HU_AUGMENT, HUAugmentConfig, augment_hu

    x = _hu_batch()
    assert augment_hu(x, NO_HU_AUGMENT, torch.Generator().manual_seed(0)) is x
    cfg = HUAugmentConfig()
    a = augment_hu(x, cfg, torch.Generator().manual_seed(3))
    b = augment_hu(x, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape
    assert torch.allclose(a[:, :, :2, :2], torch.tensor(-1000.0), atol=1e-3)  # corners: air
    brain = a[:, :, 28:36, 28:36]
    assert not torch.allclose(brain, torch.tensor(30.0), atol=0.5)  # densities, noise moved
    assert brain.mean().abs() < 200  # still soft tissue, not bone or air


def test_model_input_windows_hu_planes_like_serving_unless_augmenting():
    from ichnode.imaging import PreprocessSpec, window_planes
    from training.augment import HUAugmentConfig
    from training.loop import model_input

    spec = PreprocessSpec(size=64, pixel_mm=3.6)
    x = _hu_batch()
    plain = model_input(x, spec, None, None)
    assert plain.shape == (2, 3, 64, 64)
    assert torch.equal(plain, window_planes(x[:, 0], spec.windows))  # serving's windows
    aug = model_input(x, spec, HUAugmentConfig(), torch.Generator().manual_seed(1))
    assert aug.shape == plain.shape and float(aug.min()) >= 0 and float(aug.max()) <= 1
    assert not torch.equal(aug, plain)


def test_bleed_masks_get_the_same_pose_as_the_hu_planes():
    from training.augment import NO_HU_AUGMENT, HUAugmentConfig, augment_hu

    x = _hu_batch().repeat(4, 1, 1, 1)
    x[:, :, 22:30, 17:25] = 70.0  # an off-centre bleed: flips and rotations move it
    masks = torch.zeros(8, 5, 64, 64)
    masks[:, 3, 22:30, 17:25] = 1.0
    same = augment_hu(x, NO_HU_AUGMENT, torch.Generator().manual_seed(0), masks)
    assert same[0] is x and same[1] is masks
    # Pose only (no density, noise or kernel change), so the bleed's pixels stay at 70 HU.
    cfg = HUAugmentConfig(
        hflip=0.5, rotate_deg=30.0, scale=0.2, soft_offset_hu=0.0, soft_stretch=0.0,
        noise_hu=0.0, blur_sigma=0.0, sharpen=0.0,
    )  # fmt: skip
    hu, moved = augment_hu(x, cfg, torch.Generator().manual_seed(5), masks)
    assert moved.shape == masks.shape and float(moved[:, [0, 1, 2, 4]].abs().max()) == 0.0
    assert torch.equal(augment_hu(x, cfg, torch.Generator().manual_seed(5)), hu)  # same draws
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    brain = ((yy - 32) ** 2 + (xx - 32) ** 2).sqrt() < 18  # clear of the bone ring's edges
    moved_any = False
    for k in range(8):
        bleed = moved[k, 3] > 0.5
        moved_any |= not torch.equal(bleed, masks[k, 3] > 0.5)
        dense = ((hu[k, 0] - 70.0).abs() < 20.0) & brain
        inter = int((bleed & dense).sum())
        assert inter > 0.8 * int((bleed & brain).sum()) and inter > 0.8 * int(dense.sum())
    assert moved_any


def test_fade_blood_brings_the_bleed_towards_the_tissue_around_it_and_spares_bone():
    from training.augment import fade_blood

    hu = torch.full((2, 1, 32, 32), 30.0)
    hu[:, :, :, :4] = 1500.0  # bone along one side
    bleed = torch.zeros(2, 1, 32, 32)
    bleed[:, :, 12:20, 4:12] = 1.0  # a bleed against the bone
    hu[bleed.bool()] = 70.0
    out = fade_blood(hu, bleed, torch.tensor([0.25, 1.0]))
    # Contrast 40 HU over the ring's 30 HU: a quarter of it in the first sample, all of it in
    # the second; bone and the tissue away from the bleed keep their values.
    assert abs(float(out[0, 0, 15, 8]) - 40.0) < 1.0
    assert torch.equal(out[1], hu[1])
    assert torch.equal(out[:, :, :, :4], hu[:, :, :, :4])
    assert torch.equal(out[:, :, :, 20:], hu[:, :, :, 20:])


def test_blood_fade_fades_the_bleed_of_about_half_the_samples_given_bleed_maps():
    from training.augment import HUAugmentConfig, augment_hu

    n = 64
    hu = torch.full((n, 1, 32, 32), 30.0)
    masks = torch.zeros(n, 5, 32, 32)
    masks[:, 4, 10:20, 10:20] = 1.0
    hu[:, :, 10:20, 10:20] = 70.0
    still = dict(noise_hu=0.0, blur_sigma=0.0, sharpen=0.0, soft_offset_hu=0.0, soft_stretch=0.0)
    still |= dict(hflip=0.0, rotate_deg=0.0, scale=0.0, aspect=0.0, elastic=0.0)
    faded = HUAugmentConfig(blood_fade=0.9, **still)
    out, _ = augment_hu(hu, faded, torch.Generator().manual_seed(0), masks)
    contrast = out[:, 0, 13:17, 13:17].mean(dim=(1, 2)) - 30.0
    changed = contrast < 40.0 - 1e-3
    assert 0.3 < changed.float().mean() < 0.7
    assert float(contrast.min()) > 40.0 * 0.1 - 1.0  # at most x (1 - 0.9)
    assert torch.allclose(contrast[~changed], torch.full_like(contrast[~changed], 40.0), atol=1e-3)
    # Without bleed maps the option does nothing (the RSNA download has none).
    plain = HUAugmentConfig(blood_fade=0.0, **still)
    without = augment_hu(hu, faded, torch.Generator().manual_seed(0))
    assert torch.equal(without, augment_hu(hu, plain, torch.Generator().manual_seed(0)))
