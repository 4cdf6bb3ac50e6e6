"""``ichnode train --calibration-data`` and :mod:`training.recalibrate`: the same operating
point fitted at the end of a run or afterwards on a trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from training_fixtures import TINY_TRAIN_ARGS
from typer.testing import CliRunner

from ichnode.cli import app
from ichnode.model import load_checkpoint, save_checkpoint
from phantoms.synth import generate
from training.recalibrate import recalibrate

#: Real training runs on tiny phantoms: tens of seconds.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def calibration_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six phantom studies of another seed, used only to calibrate."""
    out = tmp_path_factory.mktemp("calibration") / "cal"
    generate(out, studies=6, seed=41, size=64, progress=False)
    return out


def _assert_same_operating_point(a, b) -> None:
    for name in a.thresholds:
        assert a.thresholds[name] == pytest.approx(b.thresholds[name], abs=1e-4)
        assert a.study_thresholds[name] == pytest.approx(b.study_thresholds[name], abs=1e-4)
    np.testing.assert_allclose(a.calibration.scale, b.calibration.scale, rtol=1e-3, atol=1e-4)
    for part in ("slice_calibration", "study_calibration"):
        np.testing.assert_allclose(
            getattr(a.study, part).bias, getattr(b.study, part).bias, rtol=1e-3, atol=1e-4
        )


def test_recalibrating_on_the_runs_calibration_data_gives_its_operating_point(
    tiny_phantoms: Path, calibration_phantoms: Path, tmp_path: Path
):
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_phantoms), "--out", str(run), "--epochs", "1"]
    calib = ["--calibration-data", str(calibration_phantoms)]
    result = CliRunner().invoke(app, [*args, *TINY_TRAIN_ARGS, *calib])
    assert result.exit_code == 0, result.output + repr(result.exception)
    trained = load_checkpoint(run / "best.safetensors")
    assert trained.summary["calibration_data"] == "cal"
    assert trained.summary["n_calibration_studies"] == 6

    again = recalibrate(trained, calibration_phantoms, tmp_path / "cache")
    _assert_same_operating_point(trained, again)
    assert again.summary["calibration_weighted_log_loss"] == pytest.approx(
        trained.summary["calibration_weighted_log_loss"], rel=1e-4
    )


def test_recalibrating_on_other_studies_keeps_the_weights_and_moves_the_operating_point(
    tiny_run: Path, calibration_phantoms: Path, tmp_path: Path
):
    ckpt = load_checkpoint(tiny_run / "best.safetensors")  # calibrated on its validation split
    new = recalibrate(ckpt, calibration_phantoms, tmp_path / "cache")
    save_checkpoint(tmp_path / "recalibrated.safetensors", new)
    loaded = load_checkpoint(tmp_path / "recalibrated.safetensors")
    assert loaded.sha256 == ckpt.sha256  # the same weights ...
    assert loaded.model_id != ckpt.model_id  # ... at another operating point: another model
    assert loaded.summary["calibration_data"] == "cal"
    assert loaded.summary["recalibrated_from"] == ckpt.summary["calibration_data"]
    assert loaded.summary["n_calibration_studies"] == 6
    assert loaded.study_thresholds != ckpt.study_thresholds
    assert loaded.study.study_calibration.bias != ckpt.study.study_calibration.bias
