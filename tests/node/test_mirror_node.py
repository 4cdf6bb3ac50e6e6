"""A checkpoint with left-right difference channels (``PreprocessSpec.mirror``) served by the
node: a study sent over DICOM is scored from the channels training builds. Real association
over loopback, real SQLite, a real (small, untrained) checkpoint saved and loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dicom_client import send
from helpers import wait_for
from sqlalchemy import select

from ichnode.db.models import Instance, InstanceStatus, Prediction
from ichnode.imaging import PreprocessSpec, preprocess, preprocess_hu
from ichnode.inference import embed_and_score
from ichnode.model import Checkpoint, build, load_checkpoint, save_checkpoint
from ichnode.study import decode_embedding
from phantoms.synth import synth_study
from training.loop import model_input

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def test_the_node_scores_a_mirror_checkpoint_as_training_builds_its_input(node_factory, tmp_path):
    torch.manual_seed(0)
    spec = PreprocessSpec(size=64, pixel_mm=3.6, mirror=True)
    path = tmp_path / "mirror.safetensors"
    model = build("ichnet2", in_channels=spec.channels).eval()
    save_checkpoint(path, Checkpoint(model=model, architecture="ichnet2", spec=spec))
    ckpt = load_checkpoint(path)
    node = node_factory(model=path)
    datasets = [s.dataset for s in synth_study(5, n_slices=4, size=64, subtypes=("subdural",))]
    assert send(node.settings.port, datasets) == [0x0000] * len(datasets)

    def scored() -> dict[str, np.ndarray] | None:
        with node.sessions() as session:
            rows = session.execute(
                select(Instance, Prediction).join(Prediction, Prediction.instance_id == Instance.id)
            ).all()
            done = all(i.status == InstanceStatus.DONE for i, _ in rows)
            if len(rows) < len(datasets) or not done:
                return None
            return {i.sop_instance_uid: decode_embedding(p.embedding) for i, p in rows}

    stored = wait_for(scored, timeout=60)
    ds = datasets[1]
    served = preprocess(ds, spec)
    assert served.shape == (spec.channels, 64, 64)
    trained = model_input(torch.from_numpy(preprocess_hu(ds, spec))[None, None], spec, None, None)
    np.testing.assert_allclose(served, trained[0].numpy(), atol=1e-6)  # one preprocessing
    emb, _ = embed_and_score(ckpt, served[None])
    np.testing.assert_allclose(stored[str(ds.SOPInstanceUID)], emb[0], rtol=1e-4, atol=1e-5)
    plain = PreprocessSpec(size=64, pixel_mm=3.6)
    assert not np.allclose(served[plain.channels :], 0.0)  # the difference channels say something
