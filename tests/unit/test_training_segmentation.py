"""Per-pixel supervision from the phantoms' bleed maps: the loss's targets, the segmentation
head of ``ichseg``, and ``ichnode train`` using the maps where a folder has them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ichnode.cli import app
from ichnode.model import build, embed, head, load_checkpoint
from ichnode.subtypes import SUBTYPES
from phantoms.synth import MASK_DIR, generate
from training.loop import SegmentationLoss, onehot_masks

runner = CliRunner()


def test_onehot_masks_has_one_channel_per_hemorrhage_subtype():
    masks = torch.zeros(2, 8, 8, dtype=torch.uint8)
    masks[0, 1, 1] = SUBTYPES.index("subdural") + 1
    masks[1, 2:4, 2:4] = SUBTYPES.index("epidural") + 1
    onehot = onehot_masks(masks)
    assert onehot.shape == (2, 5, 8, 8)
    assert onehot[0, SUBTYPES.index("subdural"), 1, 1] == 1 and onehot[0].sum() == 1
    assert onehot[1, SUBTYPES.index("epidural")].sum() == 4 and onehot[1].sum() == 4


def test_segmentation_targets_mark_the_cells_a_bleed_covers_and_any():
    onehot = torch.zeros(1, 5, 32, 32)
    onehot[0, 4, 0:2, 0:2] = 1.0  # a subdural speck in the first 8 x 8 cell
    onehot[0, 0, 20, 20] = 0.4  # an epidural fraction under half a pixel: no target
    loss = SegmentationLoss()
    target = torch.zeros(1, 6, 4, 4)
    target[0, 4, 0, 0] = target[0, 5, 0, 0] = 1.0
    confident = (target * 2 - 1) * 20.0  # logits that agree with the targets
    assert float(loss(confident, onehot)) < 1e-6
    assert float(loss(-confident, onehot)) > 10.0
    wrong = confident.clone()
    wrong[0, 0, 2, 2] = 20.0  # claims the faint epidural cell
    assert float(loss(wrong, onehot)) > 0.1


def test_ichseg_gives_slice_logits_maps_and_the_embedding_contract():
    model = build("ichseg").eval()
    assert getattr(model, "segments", False)
    x = torch.rand(2, 3, 128, 128)
    logits, maps = model(x, segment=True)
    assert logits.shape == (2, 6) and maps.shape == (2, 6, 16, 16)
    torch.testing.assert_close(model(x), logits)
    torch.testing.assert_close(head(model)(embed(model, x)), logits)


@pytest.mark.slow
def test_train_adds_the_map_loss_only_where_the_folder_has_bleed_maps(tmp_path: Path):
    data = tmp_path / "data"
    generate(data, studies=12, seed=14, size=64, progress=False)
    args = [
        *("--arch", "ichseg", "--epochs", "1", "--image-size", "64", "--pixel-mm", "3.6"),
        *("--batch-size", "16", "--device", "cpu", "--limit", "120", "--study-model", "none"),
    ]
    with_maps = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "a"),
                                    *args])  # fmt: skip
    assert with_maps.exit_code == 0, with_maps.output + repr(with_maps.exception)
    ckpt = load_checkpoint(tmp_path / "a" / "best.safetensors")
    assert ckpt.architecture == "ichseg" and ckpt.summary["seg_weight"] == 1.0
    shutil.rmtree(data / MASK_DIR)  # the RSNA download's layout: no maps
    without = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "b"),
                                  *args])  # fmt: skip
    assert without.exit_code == 0, without.output + repr(without.exception)
    assert load_checkpoint(tmp_path / "b" / "best.safetensors").summary["seg_weight"] == 0.0
