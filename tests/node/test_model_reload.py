"""Swap the served model without a restart: a checkpoint renamed over the configured path is
loaded and served from the next batch; a file that does not load leaves the old model serving.

A real node (real DICOM associations, real database, the real demo checkpoint and a second
real checkpoint with other weights).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from dicom_client import send
from helpers import wait_for
from sqlalchemy import select

from ichnode.db.models import Instance, Prediction, Study, StudyResult
from ichnode.model import load_checkpoint, save_checkpoint
from ichnode.node.reload import ModelWatcher
from phantoms.synth import synth_study

pytestmark = pytest.mark.slow


def _other_model(source: Path, out: Path) -> str:
    """A copy of ``source`` with one weight changed: another model id."""
    ckpt = load_checkpoint(source)
    with torch.no_grad():
        next(ckpt.model.parameters()).add_(0.01)
    save_checkpoint(out, ckpt)
    return load_checkpoint(out).model_id


def _result_of(node, study_uid: str) -> StudyResult | None:
    with node.sessions() as session:
        return session.scalar(
            select(StudyResult).join(Study).where(Study.study_instance_uid == study_uid)
        )


def test_a_checkpoint_renamed_over_the_model_is_served_without_a_restart(
    node_factory, model_path: Path, tmp_path: Path, monkeypatch, caplog
):
    monkeypatch.setattr("ichnode.node.reload.POLL_SECONDS", 0.2)
    served = tmp_path / "model.safetensors"
    shutil.copy(model_path, served)
    # Worker threads in this process: the swap is then one moment for the workers and the
    # monitor. (With the workers in their own process, each process sees the file at its own
    # poll, up to POLL_SECONDS apart, and the patched interval does not reach the child.)
    node = node_factory(model=served, inference_process=False)
    old_id = node.predictor.model_id

    first = [s.dataset for s in synth_study(3, n_slices=4, size=64)]
    assert send(node.settings.port, first) == [0] * len(first)
    before = wait_for(lambda: _result_of(node, str(first[0].StudyInstanceUID)), timeout=60)
    assert before.model_id == old_id

    new_id = _other_model(model_path, tmp_path / "incoming.safetensors")
    assert new_id != old_id
    with caplog.at_level(logging.INFO, logger="ichnode.node.reload"):
        os.replace(tmp_path / "incoming.safetensors", served)  # the operator's `mv`
        # One line says which model replaced which.
        wait_for(
            lambda: any(new_id in r.getMessage() and old_id in r.getMessage()
                        for r in caplog.records),
            timeout=30,
        )  # fmt: skip
    assert node.predictor.model_id == new_id

    second = [s.dataset for s in synth_study(4, n_slices=4, size=64)]
    assert send(node.settings.port, second) == [0] * len(second)
    after = wait_for(lambda: _result_of(node, str(second[0].StudyInstanceUID)), timeout=60)
    assert after.model_id == new_id
    with node.sessions() as session:
        models = set(session.scalars(select(Prediction.model_id)))
    assert models == {old_id, new_id}  # each study scored by the model served when it came
    assert node.reporter.checkpoint().model_id == new_id  # reports follow the swap
    assert _result_of(node, str(first[0].StudyInstanceUID)).model_id == old_id


def test_a_file_that_does_not_load_leaves_the_old_model_serving(
    model_path: Path, tmp_path: Path, caplog
):
    from ichnode.inference import Predictor

    served = tmp_path / "model.safetensors"
    shutil.copy(model_path, served)
    predictor = Predictor(served, "cpu")
    watcher = ModelWatcher(served, predictor)
    broken = tmp_path / "half.safetensors"
    broken.write_bytes(model_path.read_bytes()[:5000])  # a copy cut short
    os.replace(broken, served)
    with caplog.at_level(logging.ERROR, logger="ichnode.node.reload"):
        assert watcher.check() is False
        assert watcher.check() is False  # reported once, not at every look
    assert predictor.model_id == load_checkpoint(model_path).model_id
    [line] = [r.getMessage() for r in caplog.records]
    assert "cannot be loaded" in line and predictor.model_id in line and "\n" not in line


def test_a_recalibrated_checkpoint_is_swapped_in(model_path: Path, tmp_path: Path):
    # training.recalibrate keeps the weights and refits the operating point: the node must
    # serve the new thresholds, so the file is another model although its weights are not.
    from ichnode.inference import Predictor

    served = tmp_path / "model.safetensors"
    ckpt = load_checkpoint(model_path)  # float32 once loaded: saved as such
    save_checkpoint(served, ckpt)
    predictor = Predictor(served, "cpu")
    old_id, old_sha = predictor.model_id, predictor.checkpoint.sha256
    watcher = ModelWatcher(served, predictor)
    assert ckpt.study_thresholds is not None
    ckpt.study_thresholds = {k: min(v * 1.5, 0.99) for k, v in ckpt.study_thresholds.items()}
    save_checkpoint(tmp_path / "recalibrated.safetensors", ckpt)
    os.replace(tmp_path / "recalibrated.safetensors", served)
    assert watcher.check() is True
    assert predictor.checkpoint.sha256 == old_sha  # the same weights
    assert predictor.checkpoint.decision_thresholds == ckpt.decision_thresholds
    assert predictor.model_id != old_id


def _predictions(node, study_uid: str) -> list[tuple[str, int | None]]:
    """(model id, study version that refined it) of every prediction of the study's slices."""
    with node.sessions() as session:
        rows = session.execute(
            select(Prediction.model_id, Prediction.study_version)
            .join(Instance, Instance.id == Prediction.instance_id)
            .join(Study, Study.id == Instance.study_id)
            .where(Study.study_instance_uid == study_uid)
        ).all()
    return [(model_id, version) for model_id, version in rows]


@pytest.mark.parametrize("inference_process", [False, True], ids=["threads", "process"])
def test_slices_scored_before_a_swap_are_scored_again_by_the_new_model_before_the_result(
    node_factory, model_path: Path, tmp_path: Path, monkeypatch, inference_process: bool
):
    # One result is one model's: a study whose slices were scored by the old model and that
    # becomes stable after the swap is scored again by the new one, then resulted and refined
    # by it (not the maximum of the old model's slice probabilities under the new model's id).
    # With the inference process (serve's default) the child sees the swapped file at its own
    # poll, up to 2 s from the monitor's.
    monkeypatch.setattr("ichnode.node.reload.POLL_SECONDS", 0.2)
    served = tmp_path / "model.safetensors"
    shutil.copy(model_path, served)
    # Stable only well after the swap: in CI on a loaded host scoring 4 slices and seeing the
    # swap took over 10 s, and the study was resulted by the old model first.
    node = node_factory(model=served, inference_process=inference_process, stable_seconds=30)
    old_id = node.predictor.model_id

    slices = [s.dataset for s in synth_study(5, n_slices=4, size=64)]
    uid = str(slices[0].StudyInstanceUID)
    assert send(node.settings.port, slices) == [0] * len(slices)
    wait_for(lambda: [m for m, _ in _predictions(node, uid)] == [old_id] * 4, timeout=30)

    new_id = _other_model(model_path, tmp_path / "incoming.safetensors")
    os.replace(tmp_path / "incoming.safetensors", served)
    wait_for(lambda: node.predictor.model_id == new_id, timeout=30)
    assert _result_of(node, uid) is None  # still quiet: not stable yet

    result = wait_for(lambda: _result_of(node, uid), timeout=90)
    assert result.model_id == new_id
    rows = _predictions(node, uid)
    assert sorted(m for m, _ in rows) == sorted([old_id] * 4 + [new_id] * 4)
    assert {m for m, v in rows if v == result.version} == {new_id}  # refined: the new model's
