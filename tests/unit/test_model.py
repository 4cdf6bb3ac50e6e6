"""ichnode.model: architectures, checkpoint round trip, refusal of bad checkpoints."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ichnode.errors import CheckpointError
from ichnode.imaging import PreprocessSpec, windows_for_mode
from ichnode.model import (
    ARCHITECTURES,
    METADATA_KEY,
    Calibration,
    Checkpoint,
    SimpleCNN,
    build,
    demo_model_path,
    embed,
    head,
    load_checkpoint,
    predict_proba,
    save_checkpoint,
)
from ichnode.subtypes import SUBTYPES
from training.finetune import init_from


def _ckpt(arch: str = "ichnet", size: int = 64) -> Checkpoint:
    torch.manual_seed(0)
    return Checkpoint(
        model=build(arch),
        architecture=arch,
        spec=PreprocessSpec(windows=windows_for_mode("single"), size=size),
        thresholds={n: 0.3 for n in SUBTYPES},
        calibration=Calibration(scale=[0.5] * 6, bias=[-1.0] * 6),
        summary={"epochs": 1},
    )


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_gives_six_logits(arch):
    assert build(arch)(torch.zeros(2, 3, 96, 96)).shape == (2, 6)


def test_simplecnn_is_the_seed_network():
    convs = [m for m in SimpleCNN().modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in SimpleCNN().modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 16, (3, 3)),
        (16, 32, (3, 3)),
    ]
    assert len(linears) == 2 and linears[-1].out_features == 6


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path, arch):
    ckpt = _ckpt(arch)
    sha = save_checkpoint(tmp_path / "m.safetensors", ckpt)
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.sha256 == sha and loaded.model_id == ckpt.model_id
    assert loaded.model_id.startswith(f"{arch}-") and len(loaded.model_id) == len(arch) + 13
    assert loaded.spec == ckpt.spec and loaded.thresholds == ckpt.thresholds
    assert loaded.calibration == ckpt.calibration and loaded.summary == {"epochs": 1}
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    assert np.allclose(predict_proba(loaded, x), predict_proba(ckpt, x), atol=1e-6)
    assert (tmp_path / "m.safetensors").stat().st_size < 10 * 1024 * 1024


def test_the_model_id_names_the_operating_point_as_well_as_the_weights(tmp_path):
    # A recalibrated checkpoint (training.recalibrate: same weights, other thresholds and
    # calibration) is another model; the training summary is not part of the identity.
    ckpt = _ckpt()
    save_checkpoint(tmp_path / "a.safetensors", ckpt)
    first = load_checkpoint(tmp_path / "a.safetensors")
    moved = load_checkpoint(tmp_path / "a.safetensors")
    moved.thresholds = {**moved.thresholds, "any": moved.thresholds["any"] + 0.01}
    save_checkpoint(tmp_path / "b.safetensors", moved)
    recal = load_checkpoint(tmp_path / "b.safetensors")
    assert recal.sha256 == first.sha256 and recal.model_id != first.model_id
    rescaled = load_checkpoint(tmp_path / "a.safetensors")
    rescaled.calibration = Calibration(scale=[0.9] * 6, bias=[0.0] * 6)
    save_checkpoint(tmp_path / "c.safetensors", rescaled)
    assert rescaled.model_id not in (first.model_id, recal.model_id)
    assert load_checkpoint(tmp_path / "c.safetensors").model_id == rescaled.model_id
    noted = load_checkpoint(tmp_path / "a.safetensors")
    noted.summary = {"note": "another summary"}
    save_checkpoint(tmp_path / "d.safetensors", noted)
    assert load_checkpoint(tmp_path / "d.safetensors").model_id == first.model_id


def test_calibration_is_applied_to_logits():
    ckpt = _ckpt()
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        logits = ckpt.model.eval()(x)
    expected = torch.sigmoid(logits * 0.5 - 1.0).numpy()
    assert np.allclose(predict_proba(ckpt, x.numpy()), expected, atol=1e-6)


def test_pickled_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": Exploit()}))
    with pytest.raises(CheckpointError, match="pickled checkpoints are refused"):
        load_checkpoint(path)
    assert not marker.exists()


def _rewrite_meta(tmp_path, **changes):
    ckpt = _ckpt()
    save_checkpoint(tmp_path / "ok.safetensors", ckpt)
    meta = ckpt.metadata() | changes
    state = {k: v.contiguous() for k, v in ckpt.model.state_dict().items()}
    save_file(state, str(tmp_path / "bad.safetensors"), metadata={METADATA_KEY: json.dumps(meta)})
    return tmp_path / "bad.safetensors"


def test_unknown_architecture_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet999'"):
        load_checkpoint(_rewrite_meta(tmp_path, architecture="resnet999"))


def test_mismatched_labels_are_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="predicts labels"):
        load_checkpoint(_rewrite_meta(tmp_path, labels=list(reversed(SUBTYPES))))


def test_weights_of_another_architecture_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="weights do not fit simplecnn"):
        load_checkpoint(_rewrite_meta(tmp_path, architecture="simplecnn"))


def test_tampered_weights_fail_the_hash(tmp_path):
    ckpt = _ckpt()
    save_checkpoint(tmp_path / "ok.safetensors", ckpt)
    meta = ckpt.metadata() | {"sha256": "0" * 64}
    state = {k: v.contiguous() for k, v in ckpt.model.state_dict().items()}
    save_file(state, str(tmp_path / "t.safetensors"), metadata={METADATA_KEY: json.dumps(meta)})
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path / "t.safetensors")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_demo_model_ships_and_loads():
    ckpt = load_checkpoint(demo_model_path())
    assert ckpt.labels == SUBTYPES and ckpt.summary
    assert demo_model_path().stat().st_size < 10 * 1024 * 1024


def test_ichnet2max_started_from_an_ichnet2_checkpoint_computes_the_same_logits(tmp_path):
    # The head is widened with zero weights for the maxima: training starts from the
    # checkpoint's function, and the trunk is the checkpoint's own.
    spec = PreprocessSpec(size=64, pixel_mm=3.6)
    base = build("ichnet2", in_channels=spec.channels).eval()
    save_checkpoint(tmp_path / "base.safetensors", Checkpoint(base, "ichnet2", spec))
    widened = build("ichnet2max", in_channels=spec.channels).eval()
    init_from(widened, tmp_path / "base.safetensors", "ichnet2max", spec)
    x = torch.randn(3, spec.channels, 64, 64)
    with torch.no_grad():
        assert torch.allclose(widened(x), base(x), atol=1e-6)
        assert torch.equal(head(widened).weight[:, 256:], torch.zeros(6, 256))
        assert embed(widened, x).shape == (3, 512)


def test_a_mirror_run_started_from_a_plain_checkpoint_computes_the_same_logits(tmp_path):
    # The mirror-difference channels get zero first-layer weights: the function is the
    # checkpoint's until training moves them.
    from training.loop import model_input

    plain = PreprocessSpec(size=64, pixel_mm=3.6)
    spec = PreprocessSpec(size=64, pixel_mm=3.6, mirror=True)
    base = build("ichnet2", in_channels=plain.channels).eval()
    save_checkpoint(tmp_path / "base.safetensors", Checkpoint(base, "ichnet2", plain))
    mirrored = build("ichnet2", in_channels=spec.channels).eval()
    init_from(mirrored, tmp_path / "base.safetensors", "ichnet2", spec)
    hu = torch.randn(3, 1, 64, 64) * 40 + 30
    with torch.no_grad():
        out = mirrored(model_input(hu, spec, None, None))
        assert torch.allclose(out, base(model_input(hu, plain, None, None)), atol=1e-6)


def test_ichseg_started_from_an_ichnet2_checkpoint_has_its_trunk(tmp_path):
    # The stem and stages are the checkpoint's (the deepest stage computes the same map); the
    # pyramid's top-down path and both heads are new.
    spec = PreprocessSpec(size=64, pixel_mm=3.6)
    base = build("ichnet2", in_channels=spec.channels).eval()
    save_checkpoint(tmp_path / "base.safetensors", Checkpoint(base, "ichnet2", spec))
    seg = build("ichseg", in_channels=spec.channels).eval()
    fresh = {k: v.clone() for k, v in seg.state_dict().items()}
    init_from(seg, tmp_path / "base.safetensors", "ichseg", spec)
    pyramid = seg.features[0]
    x = torch.randn(2, spec.channels, 64, 64)
    with torch.no_grad():
        f = pyramid.stem(x)
        for stage in pyramid.stages:
            f = stage(f)
        assert torch.allclose(f, base.features(x), atol=1e-6)
    assert torch.equal(seg.state_dict()["seg_head.weight"], fresh["seg_head.weight"])
