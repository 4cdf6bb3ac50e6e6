"""One tiny phantom set and one tiny trained run per test session, shared by the training
tests (``ichnode train`` / ``evaluate``, fine-tuning): a real 1-epoch training run costs tens of
seconds on 2 CPU cores, so it is made once and only read afterwards (no test modifies it)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: The options of the shared run: 64-pixel slices, a few batches, the study model for 3 epochs.
TINY_TRAIN_ARGS = [
    *("--image-size", "64", "--pixel-mm", "3.6", "--batch-size", "16", "--device", "cpu"),
    *("--limit", "160", "--study-epochs", "3"),
]


@pytest.fixture(scope="session")
def tiny_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 phantom studies of 64-pixel slices (the validation and test splits hold bleeds)."""
    from phantoms.synth import generate

    out = tmp_path_factory.mktemp("phantoms")
    generate(out, studies=12, seed=14, size=64, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a 1-epoch ``ichnode train`` run on :func:`tiny_phantoms` (with its study
    model); its checkpoint is ``best.safetensors``."""
    from typer.testing import CliRunner

    from ichnode.cli import app

    run = tmp_path_factory.mktemp("run")
    args = ["train", "--data", str(tiny_phantoms), "--out", str(run), "--epochs", "1"]
    result = CliRunner().invoke(app, [*args, *TINY_TRAIN_ARGS])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return run
