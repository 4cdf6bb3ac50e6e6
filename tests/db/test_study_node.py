"""The node runs the study model when a study is stable: refined slice probabilities are stored
as the slice results of that version, and the study's result and flag come from the study model.

Real databases (SQLite and PostgreSQL through ``session_factory``), a real checkpoint with a
study model (small and untrained, saved and loaded through the checkpoint format), real
embeddings of synthetic CT slices written by the real queue completion.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from db_fixtures import add_instances
from helpers import study as ct_study
from sqlalchemy import select

from ichnode.db.models import Instance, Prediction, StudyResult, StudyStatus
from ichnode.db.queue import Completion, claim, complete_many
from ichnode.imaging import PreprocessSpec, preprocess
from ichnode.inference import embed_and_score, score_study
from ichnode.model import Calibration, Checkpoint, build, load_checkpoint, save_checkpoint
from ichnode.node.monitor import Monitor, ResultPolicy
from ichnode.study import StudyHead, build_study, decode_embedding, encode_embedding
from ichnode.subtypes import ANY, SUBTYPES
from ichnode.triage import decide


@pytest.fixture(scope="module")
def study_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    import torch

    torch.manual_seed(0)
    spec = PreprocessSpec(size=64, pixel_mm=3.6)
    model = build("ichnet2", in_channels=spec.channels)
    dim = model.classifier[-1].in_features
    head = StudyHead(
        model=build_study("bigru", dim, hidden=16),
        architecture="bigru",
        embed_dim=dim,
        hidden=16,
        slice_calibration=Calibration(),
        study_calibration=Calibration(),
    )
    ckpt = Checkpoint(
        model=model.eval(),
        architecture="ichnet2",
        spec=spec,
        study=head,
        study_thresholds=dict.fromkeys(SUBTYPES, 0.5),
    )
    path = tmp_path_factory.mktemp("ckpt") / "study.safetensors"
    save_checkpoint(path, ckpt)
    return load_checkpoint(path)


def _score_into_queue(session_factory, ckpt: Checkpoint, n: int) -> list[int]:
    """Add a study of ``n`` instances and complete them with real embeddings and scores."""
    slices = ct_study(n=n, size=64)
    with session_factory.begin() as session:
        ids = add_instances(session, n)
    batch = np.stack([preprocess(ds, ckpt.spec) for ds in slices])
    emb, probs = embed_and_score(ckpt, batch)
    with session_factory.begin() as session:
        claimed = {i.id: i.claim_token for i in claim(session, "w", n, 300.0)}
        items = [
            Completion(i, claimed[i], ckpt.model_id, list(map(float, p)), encode_embedding(e))
            for i, p, e in zip(ids, probs, emb, strict=True)
        ]
        assert complete_many(session, items) == set(ids)
    return ids


def _monitor(session_factory, ckpt: Checkpoint) -> Monitor:
    policy = ResultPolicy(ckpt.decision_thresholds, ckpt.model_id, partial(score_study, ckpt))
    return Monitor(session_factory, policy, stable_seconds=0.0)


def test_a_stable_study_stores_the_study_models_refined_slice_probabilities(
    session_factory, study_checkpoint: Checkpoint
):
    ids = _score_into_queue(session_factory, study_checkpoint, 5)
    with session_factory() as session:
        rows = {p.instance_id: p for p in session.scalars(select(Prediction))}
        before = {i: rows[i].probabilities for i in ids}
        embeddings = np.stack([decode_embedding(rows[i].embedding) for i in ids])
    [result_id] = _monitor(session_factory, study_checkpoint).run_once()
    expected = score_study(study_checkpoint, embeddings, [float(k) for k in range(5)])
    assert expected.refined
    with session_factory() as session:
        result = session.get(StudyResult, result_id)
        rows = {p.instance_id: p for p in session.scalars(select(Prediction))}
        for k, i in enumerate(ids):
            assert rows[i].study_version == result.version == 1
            got = [rows[i].probabilities[n] for n in SUBTYPES]
            np.testing.assert_allclose(got, expected.slices[k], rtol=1e-4, atol=1e-6)
        assert any(
            not np.allclose([before[i][n] for n in SUBTYPES], expected.slices[k])
            for k, i in enumerate(ids)
        )  # the refinement changed something: these are not the slice network's values
        study_p = [result.probabilities[n] for n in SUBTYPES]
        np.testing.assert_allclose(study_p, expected.study, rtol=1e-4, atol=1e-6)
        decision = decide(result.probabilities, study_checkpoint.decision_thresholds)
        assert result.flagged == decision.flagged
        assert result.flagged_subtype_list == list(decision.labels)
        key = int(np.argmax(expected.slices[:, SUBTYPES.index(ANY)]))
        assert result.key_instance_id == ids[key]


def test_a_reopened_study_is_refined_again_over_all_its_slices(
    session_factory, study_checkpoint: Checkpoint
):
    ids = _score_into_queue(session_factory, study_checkpoint, 3)
    monitor = _monitor(session_factory, study_checkpoint)
    assert len(monitor.run_once()) == 1
    with session_factory.begin() as session:
        study = session.get(Instance, ids[0]).study
        study.status = StudyStatus.RECEIVING  # as a late slice's arrival reopens it
    [second] = monitor.run_once()
    with session_factory() as session:
        assert session.get(StudyResult, second).version == 2
        versions = {
            p.study_version for p in session.scalars(select(Prediction)) if p.instance_id in ids
        }
        assert versions == {2}
