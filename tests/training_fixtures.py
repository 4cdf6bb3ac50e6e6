"""One tiny phantom set and the tiny trained runs made from it, once per test run, shared by
the training tests (``ichnode train`` / ``evaluate``, fine-tuning, 2.5-D input): a real
1-epoch training run costs tens of seconds on 2 CPU cores, so each is made once (by one
pytest-xdist worker, see :func:`helpers.built_once`) and only read afterwards (no test
modifies them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import built_once

#: The options of the shared run: 64-pixel slices, a few batches, the study model for 3 epochs.
TINY_TRAIN_ARGS = [
    *("--image-size", "64", "--pixel-mm", "3.6", "--batch-size", "16", "--device", "cpu"),
    *("--limit", "160", "--study-epochs", "3"),
]
#: The options of the shared 2.5-D run (``--context 1``): the study model for 2 epochs.
TINY_CONTEXT_TRAIN_ARGS = [
    *("--context", "1"),
    *("--image-size", "64", "--pixel-mm", "3.6", "--batch-size", "16", "--device", "cpu"),
    *("--limit", "160", "--study-epochs", "2"),
]


def _train(data: Path, run: Path, options: list[str]) -> None:
    from typer.testing import CliRunner

    from ichnode.cli import app

    args = ["train", "--data", str(data), "--out", str(run), "--epochs", "1"]
    result = CliRunner().invoke(app, [*args, *options])
    assert result.exit_code == 0, result.output + repr(result.exception)


@pytest.fixture(scope="session")
def tiny_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 phantom studies of 64-pixel slices (the validation and test splits hold bleeds)."""
    from phantoms.synth import generate

    return built_once(
        tmp_path_factory,
        "phantoms",
        lambda out: generate(out, studies=12, seed=14, size=64, progress=False),
    )


@pytest.fixture(scope="session")
def tiny_run(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a 1-epoch ``ichnode train`` run on :func:`tiny_phantoms` (with its study
    model); its checkpoint is ``best.safetensors``."""
    return built_once(
        tmp_path_factory, "run", lambda run: _train(tiny_phantoms, run, TINY_TRAIN_ARGS)
    )


@pytest.fixture(scope="session")
def tiny_context_run(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a 1-epoch ``--context 1`` (2.5-D) run on :func:`tiny_phantoms`; its
    checkpoint is ``best.safetensors``."""
    return built_once(
        tmp_path_factory,
        "context-run",
        lambda run: _train(tiny_phantoms, run, TINY_CONTEXT_TRAIN_ARGS),
    )
