"""2.5-D input (``PreprocessSpec.context``): a slice with its neighbours by z as input planes.

The same definition of a neighbour in training, ``predict`` and the node; a real training run
with ``--context 1`` whose checkpoint the node serves over DICOM (real associations, real
database, real store); and a slice scored before its neighbour arrived is scored again before
the study is resulted.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from dicom_client import send
from helpers import wait_for
from sqlalchemy import select
from typer.testing import CliRunner
from web_fixtures import serve

from ichnode.cli import app
from ichnode.db import context
from ichnode.db.models import Instance, InstanceStatus, Prediction, StudyResult
from ichnode.imaging import (
    PreprocessSpec,
    context_positions,
    preprocess,
    preprocess_hu,
    preprocess_planes,
    read,
)
from ichnode.inference import embed_and_score
from ichnode.model import load_checkpoint
from ichnode.predict import predict_folder
from ichnode.report.saliency import SaliencyModel
from ichnode.study import decode_embedding
from ichnode.subtypes import ANY, SUBTYPES
from ichnode.web.render import render_png
from phantoms.synth import synth_study
from training.dataset import RSNADataset, context_ids, find_layout, header_index, load_labels
from training.loop import model_input

SPEC = PreprocessSpec(size=64, pixel_mm=3.6, context=1)


@pytest.fixture(scope="module")
def slices():
    return [s.dataset for s in synth_study(3, n_slices=6, size=64, subtypes=("subdural",))]


def test_neighbours_are_the_adjacent_slices_and_none_past_the_ends():
    assert context_positions(0, 5, 1) == [None, 1]
    assert context_positions(2, 5, 2) == [0, 1, 3, 4]
    assert context_positions(4, 5, 1) == [3, None]
    assert context_positions(0, 1, 1) == [None, None]


def test_the_spec_records_context_and_a_2d_spec_is_unchanged():
    assert PreprocessSpec.from_dict(SPEC.to_dict()) == SPEC
    assert SPEC.planes == 3 and SPEC.channels == 9
    flat = PreprocessSpec(size=64, pixel_mm=3.6)
    assert "context" not in flat.to_dict()  # 2-D checkpoints keep their metadata and model id
    with pytest.raises(ValueError, match="pixel_mm"):
        PreprocessSpec(size=64, context=1)
    with pytest.raises(ValueError, match="context"):
        PreprocessSpec(size=64, pixel_mm=3.6, context=9)


def test_a_2_5d_input_is_the_windows_of_each_plane_lowest_z_first(slices):
    below, centre, above = slices[1], slices[2], slices[3]
    x = preprocess_planes(centre, [below, above], SPEC)
    assert x.shape == (9, 64, 64)
    flat = PreprocessSpec(size=64, pixel_mm=3.6)
    np.testing.assert_allclose(x[0:3], preprocess(below, flat), atol=1e-6)
    np.testing.assert_allclose(x[3:6], preprocess(centre, flat), atol=1e-6)
    np.testing.assert_allclose(x[6:9], preprocess(above, flat), atol=1e-6)
    # A missing neighbour (the end of a series) is the slice itself.
    edge = preprocess_planes(centre, [None, above], SPEC)
    np.testing.assert_allclose(edge[0:3], edge[3:6])
    np.testing.assert_allclose(preprocess(centre, SPEC), np.tile(x[3:6], (3, 1, 1)), atol=1e-6)


@pytest.fixture
def phantoms(tiny_phantoms: Path) -> Path:
    """12 phantom studies of 64-pixel slices, made once per test run (training_fixtures)."""
    return tiny_phantoms


def test_training_reads_each_slice_with_its_neighbours_in_z_order(phantoms: Path, tmp_path: Path):
    layout = find_layout(phantoms)
    table = load_labels(layout.csv)
    ids = list(table.index)
    index = header_index(layout, ids, tmp_path, progress=False)
    around = context_ids(index, 1)
    study = index[index["study"] == index["study"].iloc[0]].sort_values("z")
    ordered = study["id"].tolist()
    assert around[ordered[0]] == [None, ordered[1]]
    assert around[ordered[3]] == [ordered[2], ordered[4]]
    ds = RSNADataset.from_table(layout, table, [ordered[3]], SPEC, index=index)
    x, _, _, ok, _ = ds[0]
    assert ok and tuple(x.shape) == (3, 64, 64)  # HU planes: below, the slice, above
    for plane, image_id in zip(x, ordered[2:5], strict=True):
        expected = preprocess_hu(read(layout.image_path(image_id)), SPEC)
        np.testing.assert_allclose(plane.numpy(), expected, atol=1e-4)
    # The loop's windowing of those planes is what serving computes from the three files.
    served = preprocess_planes(
        read(layout.image_path(ordered[3])),
        [read(layout.image_path(ordered[2])), read(layout.image_path(ordered[4]))],
        SPEC,
    )
    np.testing.assert_allclose(model_input(x[None], SPEC, None, None)[0].numpy(), served, atol=1e-4)


runner = CliRunner()


@pytest.fixture
def trained(tiny_context_run: Path) -> Path:
    """The checkpoint of a 1-epoch ``--context 1`` run on the tiny phantoms (made once per
    test run: training_fixtures)."""
    return tiny_context_run / "best.safetensors"


@pytest.mark.slow
def test_a_context_run_stores_its_spec_and_evaluates(trained: Path, phantoms: Path, tmp_path):
    ckpt = load_checkpoint(trained)
    assert ckpt.spec.context == 1 and ckpt.spec.channels == 9
    first = next(m for m in ckpt.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 9
    result = runner.invoke(
        app,
        ["evaluate", "--data", str(phantoms), "--model", str(trained), "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (tmp_path / "report.json").is_file() and (tmp_path / "study_roc.png").is_file()


@pytest.mark.slow
def test_the_node_scores_late_neighbours_again_and_matches_predict(
    trained: Path, node_factory, tmp_path: Path
):
    """Half a study arrives and is scored; the rest arrives; before the study is resulted the
    slice that was scored without its upper neighbour is scored again with it. Every stored
    embedding is the one ``predict`` computes from the files, and so is the result."""
    ckpt = load_checkpoint(trained)
    node = node_factory(model=trained, stable_seconds=3.0)
    datasets = [s.dataset for s in synth_study(7, n_slices=8, size=64, subtypes=("subdural",))]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    first, rest = datasets[:4], datasets[4:]
    assert send(node.settings.port, first) == [0x0000] * len(first)

    def all_done(n: int) -> bool:
        with node.sessions() as session:
            statuses = session.scalars(select(Instance.status)).all()
        return len(statuses) == n and all(s == InstanceStatus.DONE for s in statuses)

    wait_for(lambda: all_done(4), timeout=60)
    with node.sessions() as session:
        early = {
            i.sop_instance_uid: p.context
            for i, p in session.execute(
                select(Instance, Prediction).join(Prediction, Prediction.instance_id == Instance.id)
            ).all()
        }
    top = str(first[-1].SOPInstanceUID)
    _, centre, above = early[top].split(",")
    assert above == centre  # scored with itself standing in for the missing upper slice
    assert send(node.settings.port, rest) == [0x0000] * len(rest)

    def result() -> StudyResult | None:
        with node.sessions() as session:
            return session.scalar(select(StudyResult))

    resulted = wait_for(result, timeout=60)
    assert resulted.n_scored == len(datasets)
    with node.sessions() as session:
        rows = session.execute(
            select(Instance, Prediction).join(Prediction, Prediction.instance_id == Instance.id)
        ).all()
        by_uid = {i.sop_instance_uid: (i, p) for i, p in rows}
        now = context.planes(session, [i.id for i, _ in rows], 1)
        for i, p in rows:
            assert p.context == now[i.id].encoded  # no slice of the result saw other neighbours
        top_instance, top_prediction = by_uid[top]
        below = by_uid[str(first[-2].SOPInstanceUID)][0]
        above = by_uid[str(rest[0].SOPInstanceUID)][0]
        assert top_prediction.context == f"{below.id},{top_instance.id},{above.id}"
        stored = {uid: decode_embedding(p.embedding) for uid, (_, p) in by_uid.items()}
    # What the worker fed the model is what predict builds from the same files.
    paths = []
    for ds in datasets:
        path = tmp_path / "study" / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    k = datasets.index(rest[0])
    x = preprocess_planes(datasets[k], [datasets[k - 1], datasets[k + 1]], ckpt.spec)
    emb, _ = embed_and_score(ckpt, x[None])
    np.testing.assert_allclose(stored[str(rest[0].SOPInstanceUID)], emb[0], rtol=1e-4, atol=1e-5)
    scores = predict_folder(tmp_path / "study", trained, "cpu")
    [study], errors = scores.studies, scores.errors
    assert not errors
    got = [resulted.probabilities[n] for n in SUBTYPES]
    np.testing.assert_allclose(got, [study.probabilities[n] for n in SUBTYPES], atol=1e-4)
    # The web page's saliency map of a slice is computed on the slice with its neighbours.
    handle = serve(node)
    try:
        with httpx.Client(base_url=handle.url, timeout=30) as client:
            url = f"/api/instances/{rest[0].SOPInstanceUID}/image.png"
            png = client.get(url, params={"overlay": "saliency"})
        assert png.status_code == 200
        stored_path = str(node.store.path(above.path))
        neighbours = [str(node.store.path(by_uid[str(d.SOPInstanceUID)][0].path))
                      for d in (datasets[k - 1], datasets[k + 1])]  # fmt: skip
        expected = render_png(stored_path, "brain", None, SaliencyModel(node.predictor), ANY,
                              True, neighbours)  # fmt: skip
        assert png.content == expected
    finally:
        handle.stop()
    # The summary image's saliency reads the same stored neighbours of its key slice.
    from ichnode.imaging import read_neighbours

    with node.sessions() as session:  # what ichnode.db.reports.inputs reads for a key slice
        paths = context.planes(session, [above.id], 1)[above.id].neighbour_paths
    read_back = read_neighbours([node.store.path(p) for p in paths])
    expected_uids = [str(d.SOPInstanceUID) for d in (datasets[k - 1], datasets[k + 1])]
    assert [str(d.SOPInstanceUID) for d in read_back] == expected_uids
