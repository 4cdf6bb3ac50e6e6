"""The model learns from its readers, end to end (issue 16's "done when"):

phantom studies arrive over DICOM at a real node → a radiologist reviews each through the
HTTP API → ``ichnode export-reviewed`` writes them in the RSNA layout → ``ichnode train
--init`` fine-tunes the demo model on the export for one epoch → ``ichnode evaluate
--compare`` puts the old and the new model side by side on the held-out reviewed studies →
the new checkpoint is renamed over the served one → the next study is scored by it.

Real parts throughout: pynetdicom associations over loopback, the node's threads and SQLite
file, uvicorn and httpx, real training on a tiny set. The demo model flags some normal
phantoms; the reviews follow whatever it said, so the test depends on no flag value.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from dicom_client import send
from helpers import wait_for
from typer.testing import CliRunner
from web_fixtures import serve

from ichnode.cli import app
from ichnode.model import load_checkpoint
from phantoms.synth import synth_study
from training.dataset import find_layout, load_labels

pytestmark = pytest.mark.slow

#: (seed, subtypes) of the studies sent: bleeds and normal heads, one patient each.
STUDIES = (
    (31, ("intraparenchymal",)),
    (32, ()),
    (33, ("subdural",)),
    (34, ()),
    (35, ("epidural",)),
)
N_SLICES, SIZE = 6, 96
runner = CliRunner()


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _send(node, seed: int, subtypes: tuple[str, ...]):
    slices = synth_study(seed, n_slices=N_SLICES, size=SIZE, subtypes=subtypes)
    datasets = [s.dataset for s in slices]
    assert send(node.settings.port, datasets) == [0] * len(datasets)
    return slices


def _resulted(client: httpx.Client, uid: str) -> dict:
    def done() -> dict | None:
        response = client.get(f"/api/studies/{uid}")
        body = response.json() if response.status_code == 200 else None
        return body if body and body["status"] == "resulted" else None

    return wait_for(done, timeout=120, interval=0.2)


def _review(client: httpx.Client, uid: str, slices) -> None:
    """What a radiologist who knows the phantom's truth says about the node's result."""
    flagged = _resulted(client, uid)["flagged"]
    present = sorted({name for s in slices for name, on in s.labels.items() if on} - {"any"})
    body: dict = {"reviewer": "Dr Test"}
    if present:
        body |= {
            "verdict": "confirmed" if flagged else "missed",
            "subtypes": present,
            "slices": [str(s.dataset.SOPInstanceUID) for s in slices if s.labels["any"]],
        }
    else:
        body["verdict"] = "rejected" if flagged else "confirmed"
    response = client.post(f"/api/studies/{uid}/reviews", json=body)
    assert response.status_code == 201, response.text


def test_reviews_become_a_fine_tuned_model_that_is_served_without_a_restart(
    node_factory, model_path: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.setattr("ichnode.node.reload.POLL_SECONDS", 0.2)
    served = tmp_path / "model.safetensors"
    shutil.copy(model_path, served)
    node = node_factory(model=served)
    old_id = node.predictor.model_id
    http = serve(node)
    try:
        with httpx.Client(base_url=http.url, timeout=30) as client:
            for seed, subtypes in STUDIES:  # received over DICOM, resulted, reviewed
                slices = _send(node, seed, subtypes)
                _review(client, str(slices[0].dataset.StudyInstanceUID), slices)
            stats = subprocess.run(  # the CLI as a process, as an administrator runs it
                [sys.executable, "-m", "ichnode", "review", "stats", "--db-url",
                 node.settings.db_url, "--overall", "--json"],
                capture_output=True, text=True, timeout=120, check=True,
            ).stdout  # fmt: skip
            [row] = json.loads(stats)
            assert row["reviewed"] == len(STUDIES) and row["model_id"] == old_id

            export = tmp_path / "export"
            _invoke("export-reviewed", "--out", str(export), "--db-url", node.settings.db_url,
                    "--store", str(node.settings.store))  # fmt: skip
            labels = load_labels(find_layout(export).csv)
            assert len(labels) == len(STUDIES) * N_SLICES
            assert labels["any"].sum() > 0

            run = tmp_path / "run"
            _invoke("train", "--data", str(export), "--out", str(run), "--init", str(model_path),
                    "--epochs", "1", "--study-model", "none", "--batch-size", "8",
                    "--device", "cpu", "--no-augment")  # fmt: skip
            new_id = load_checkpoint(run / "best.safetensors").model_id
            assert new_id != old_id

            compared = _invoke("evaluate", "--data", str(export), "--model", str(model_path),
                               "--compare", str(run / "best.safetensors"), "--split",
                               str(run / "split.json"), "--out", str(tmp_path / "compare"),
                               "--device", "cpu")  # fmt: skip
            assert old_id in compared and new_id in compared

            incoming = tmp_path / "incoming.safetensors"
            shutil.copy(run / "best.safetensors", incoming)
            os.replace(incoming, served)  # the operator's `mv`
            wait_for(lambda: client.get("/api/info").json()["model_id"] == new_id, timeout=30)
            slices = _send(node, 36, ())
            after = _resulted(client, str(slices[0].dataset.StudyInstanceUID))
            assert after["model_id"] == new_id
    finally:
        http.stop()
