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
