"""``ichnode train`` / ``ichnode evaluate`` end to end on tiny phantoms, resume, error paths."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import run_cli
from training_fixtures import TINY_TRAIN_ARGS
from typer.testing import CliRunner

from ichnode.cli import app
from ichnode.inference import score_study
from ichnode.model import demo_model_path, load_checkpoint
from ichnode.subtypes import SUBTYPES
from phantoms.synth import generate

#: Real training runs and `ichnode` subprocesses: each test takes several seconds.
pytestmark = pytest.mark.slow

runner = CliRunner()
TRAIN_ARGS = TINY_TRAIN_ARGS


@pytest.fixture
def phantoms(tiny_phantoms: Path) -> Path:
    return tiny_phantoms


@pytest.fixture
def trained(tiny_run: Path) -> Path:
    """A 1-epoch run, shared by the session (several tests read it, none modify it)."""
    return tiny_run


def test_train_writes_a_checkpoint_that_loads_with_its_spec_calibration_and_thresholds(
    trained: Path,
):
    ckpt = load_checkpoint(trained / "best.safetensors")
    assert ckpt.architecture == "ichnet2"
    assert ckpt.spec.size == 64 and ckpt.spec.pixel_mm == 3.6
    assert [w.name for w in ckpt.spec.windows] == ["brain", "subdural", "soft"]
    assert set(ckpt.thresholds) == set(SUBTYPES)
    assert ckpt.calibration.scale[SUBTYPES.index("any")] != 1.0  # fitted on validation
    s = ckpt.summary
    assert s["best_epoch"] == 1 and s["epochs"] == 1 and s["image_size"] == 64
    assert s["n_train"] + s["n_val"] + s["n_test"] == 160
    assert s["skipped_images"] == 0
    assert s["augmentation"]["enabled"] is True and s["windows"] == "stack"
    assert {"split_seed", "val_auc", "val_loss", "dataset", "ichnode_version"} <= set(s)
    assert s["augmentation"]["space"] == "hounsfield"


def test_train_stores_a_study_model_with_study_thresholds_that_scores_a_study(trained: Path):
    ckpt = load_checkpoint(trained / "best.safetensors")
    assert ckpt.study is not None and ckpt.study.architecture == "bigru"
    assert ckpt.study_thresholds is not None and set(ckpt.study_thresholds) == set(SUBTYPES)
    assert ckpt.decision_thresholds == ckpt.study_thresholds
    emb = np.random.default_rng(0).normal(size=(7, ckpt.study.embed_dim)).astype(np.float32)
    z = [5.0, 1.0, 3.0, None, 2.0, 4.0, 0.0]
    scores = score_study(ckpt, emb, z)
    assert scores.refined and scores.slices.shape == (7, 6) and scores.study.shape == (6,)
    assert ((scores.slices > 0) & (scores.slices < 1)).all()
    # The study model reads z order: the same slices given in another order score the same.
    perm = [6, 1, 4, 2, 5, 0, 3]
    again = score_study(ckpt, emb[perm], [z[i] for i in perm])
    np.testing.assert_allclose(again.study, scores.study, rtol=1e-5)
    np.testing.assert_allclose(again.slices, scores.slices[perm], rtol=1e-5)
    # ... and z matters: reversed heights give other refined slices.
    flipped = score_study(ckpt, emb, [None if v is None else -v for v in z])
    assert not np.allclose(flipped.slices, scores.slices)


def test_a_slice_only_run_scores_a_study_by_its_maximum(phantoms: Path, tmp_path: Path):
    run = tmp_path / "run"
    args = ["train", "--data", str(phantoms), "--out", str(run), "--epochs", "1", *TRAIN_ARGS]
    result = runner.invoke(app, [*args, "--study-model", "none", "--arch", "simplecnn"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    ckpt = load_checkpoint(run / "best.safetensors")
    assert ckpt.study is None and ckpt.study_thresholds is not None
    emb = np.random.default_rng(1).normal(size=(4, 128)).astype(np.float32)
    scores = score_study(ckpt, emb, [0.0, 1.0, 2.0, 3.0])
    assert not scores.refined
    np.testing.assert_allclose(scores.study, scores.slices.max(axis=0))


def test_the_checkpoint_has_the_permissions_of_the_other_run_files(trained: Path):
    mode = (trained / "best.safetensors").stat().st_mode & 0o777
    assert mode == (trained / "history.json").stat().st_mode & 0o777


def test_train_writes_split_history_and_resume_state(trained: Path):
    split = json.loads((trained / "split.json").read_text())
    assert split["seed"] == 0 and set(split["ids"]) == {"train", "val", "test"}
    history = json.loads((trained / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]
    state = torch.load(trained / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and "optimizer" in state and "rng" in state


def test_resume_continues_from_the_last_epoch(phantoms: Path, trained: Path, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "best.safetensors", "history.json"):
        (run / name).write_bytes((trained / name).read_bytes())
    args = ["train", "--data", str(phantoms), "--out", str(run), "--epochs", "2", *TRAIN_ARGS]
    result = runner.invoke(app, [*args, "--resume", "--cache", str(trained / "cache")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    history = json.loads((run / "history.json").read_text())
    first = json.loads((trained / "history.json").read_text())[0]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == first  # epoch 1 was not trained again
    assert load_checkpoint(run / "best.safetensors").summary["epochs"] == 2


def test_evaluate_on_the_test_split_writes_reports_and_figures(
    phantoms: Path, trained: Path, tmp_path: Path
):
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "evaluate", "--data", str(phantoms), "--model", str(trained / "best.safetensors"),
            "--split", str(trained / "split.json"), "--out", str(out), "--device", "cpu",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "weighted log loss" in result.output and "prevalence baseline" in result.output
    report = json.loads((out / "report.json").read_text())
    test_ids = json.loads((trained / "split.json").read_text())["ids"]["test"]
    assert report["n_images"] == len(test_ids)
    assert set(report["subtypes"]) == set(SUBTYPES)
    assert "confusion" in report["subtypes"]["any"]
    assert "Weighted multi-label log loss" in (out / "report.md").read_text()
    for png in [
        "roc.png", "pr.png", "study_roc.png", "reliability.png",
        *(f"confusion_{s}.png" for s in SUBTYPES),
    ]:  # fmt: skip
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    study = report["study"]
    assert study["n_studies"] >= 1 and study["refined_by_study_model"] is True
    assert study["n_positive"] + study["n_negative"] == study["n_studies"]
    assert set(study["auc"]) == set(SUBTYPES) and "false_alarms_per_100_normal" in str(study)
    assert "study level" in result.output and "Study level" in (out / "report.md").read_text()
    low = report["breakdowns"]["slice position"]["lowest 10% of slices"]
    assert 0 < low["slices"] < report["n_images"]
    visibility = report["breakdowns"]["bleed visibility"]  # phantoms: bleed maps beside them
    assert list(visibility) == ["d' < 10", "d' 10-20", "d' 20-40", "d' 40-80", "d' >= 80"]
    assert sum(b["studies"] for b in visibility.values()) <= study["n_positive"]
    studies = pd.read_csv(out / "studies.csv")
    assert len(studies) == study["n_studies"] and studies["study"].is_unique
    assert studies["slices"].sum() == report["n_images"]
    assert studies["label_any"].sum() == study["n_positive"]
    flagged = studies["flagged"] == 1
    point = study["operating_point"]
    if study["n_positive"]:
        hits = int((flagged & (studies["label_any"] == 1)).sum())
        assert hits / study["n_positive"] == pytest.approx(point["sensitivity"])
    if study["n_negative"]:
        quiet = int((~flagged & (studies["label_any"] == 0)).sum())
        assert quiet / study["n_negative"] == pytest.approx(point["specificity"])
    assert (studies.loc[~flagged, "named"].isna()).all()  # a study not flagged names nothing
    assert all(0.0 <= p <= 1.0 for n in SUBTYPES for p in studies[f"p_{n}"])


def test_study_metrics_count_flags_at_the_operating_point_and_say_n_a_without_positives():
    from training.evaluate import study_metrics

    y = np.zeros((5, 6))
    y[:2, :] = 1  # two bleeding studies, three normal
    p = np.full((5, 6), 0.1)
    p[0, :] = 0.9  # flagged, right
    p[2, :] = 0.8  # flagged, a false alarm
    m = study_metrics(y, p, dict.fromkeys(SUBTYPES, 0.5))
    op = m["operating_point"]
    assert op["sensitivity"] == 0.5 and op["specificity"] == 2 / 3 and op["ppv"] == 0.5
    assert op["false_alarms_per_100_normal"] == pytest.approx(100 / 3)
    # 95 % intervals: Wilson for the rates (1 of 2, 2 of 3), bootstrap over studies for the AUC.
    assert op["sensitivity_interval"][0] < 0.5 < op["sensitivity_interval"][1]
    assert op["specificity_interval"][0] < 2 / 3 < op["specificity_interval"][1]
    lo, hi = m["auc_any_interval"]
    assert 0.0 <= lo <= m["auc"]["any"] <= hi <= 1.0
    m = study_metrics(np.zeros((3, 6)), np.full((3, 6), 0.2), dict.fromkeys(SUBTYPES, 0.5))
    assert m["auc"]["any"] is None and m["operating_point"]["sensitivity"] is None
    assert m["auc_any_interval"] is None and m["operating_point"]["sensitivity_interval"] is None


def _ichnode(*args: str) -> subprocess.CompletedProcess:
    """An error path of the entry point, in process (no second torch import)."""
    return run_cli(*args)


def test_train_with_a_missing_data_folder_fails_with_one_line(tmp_path: Path):
    proc = _ichnode("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"error: data folder {tmp_path / 'nope'} does not exist"
    ]
    assert not (tmp_path / "run").exists()  # a failed start leaves no empty run folder


def test_evaluate_with_a_missing_data_folder_fails_with_one_line(tmp_path: Path):
    proc = _ichnode("evaluate", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_resume_without_a_previous_run_fails_with_one_line(phantoms: Path, tmp_path: Path):
    proc = _ichnode(
        "train", "--data", str(phantoms), "--out", str(tmp_path / "run"), "--resume",
        "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing to resume" in lines[0]


def test_unknown_window_fails_with_one_line(phantoms: Path, tmp_path: Path):
    proc = _ichnode(
        "train", "--data", str(phantoms), "--out", str(tmp_path / "run"), "--windows", "brian"
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "brian" in lines[0]
    assert not (tmp_path / "run").exists()


def test_unreadable_images_are_skipped_and_counted_in_the_summary(tmp_path: Path):
    data = tmp_path / "data"
    generate(data, studies=5, seed=3, size=64, progress=False)
    files = sorted((data / "stage_2_train").iterdir())
    broken = {f.stem for f in files[::25]}  # every 25th file: pixel data cut short
    for f in files[::25]:
        f.write_bytes(f.read_bytes()[:-1500])
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--no-balanced"]
    result = runner.invoke(
        app, [*args, "--image-size", "64", "--device", "cpu", "--study-epochs", "3"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    ids = json.loads((run / "split.json").read_text())["ids"]
    read_in_training = broken & (set(ids["train"]) | set(ids["val"]))  # test is never read
    assert read_in_training
    summary = load_checkpoint(run / "best.safetensors").summary
    assert summary["skipped_images"] == len(read_in_training)


def test_evaluate_defaults_to_the_bundled_demo_model(phantoms: Path, tmp_path: Path):
    result = runner.invoke(
        app, ["evaluate", "--data", str(phantoms), "--out", str(tmp_path), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model_id"] == load_checkpoint(demo_model_path()).model_id


def test_train_options_are_the_config_fields_with_their_defaults():
    import dataclasses

    from typer.main import get_command

    from training.config import NONE, TrainConfig

    params = {p.name: p for p in get_command(app).commands["train"].params}
    for f in dataclasses.fields(TrainConfig):
        assert f.name in params, f"--{f.name} is not an option of ichnode train"
        if f.default is dataclasses.MISSING:
            assert params[f.name].required
        elif f.metadata["nullable"]:
            assert params[f.name].default == (NONE if f.default is None else str(f.default))
        else:
            assert params[f.name].default == f.default
    assert set(params) <= {f.name for f in dataclasses.fields(TrainConfig)} | {"help"}


def test_a_nullable_option_takes_none_and_refuses_other_words(tmp_path: Path):
    result = _ichnode("train", "--data", str(tmp_path), "--out", str(tmp_path), "--pixel-mm", "x")
    assert result.returncode == 2 and "--pixel-mm" in result.stderr
    assert "'x' is not a float nor 'none'" in result.stderr


def test_a_trained_study_model_is_served_by_the_node(trained: Path, node_factory):
    """train → save → load → serve: the node runs the trained study model on a stable study
    sent over DICOM and stores its refined slice probabilities and its study result."""
    from dicom_client import send
    from helpers import wait_for
    from sqlalchemy import select

    from ichnode.db.models import Instance, Prediction, StudyResult
    from ichnode.study import decode_embedding
    from phantoms.synth import synth_study

    ckpt = load_checkpoint(trained / "best.safetensors")
    node = node_factory(model=trained / "best.safetensors")
    datasets = [s.dataset for s in synth_study(5, n_slices=8, size=64, subtypes=("subdural",))]
    assert send(node.settings.port, datasets) == [0x0000] * len(datasets)

    def result() -> StudyResult | None:
        with node.sessions() as session:
            return session.scalar(select(StudyResult))

    resulted = wait_for(result, timeout=60)
    assert resulted.model_id == ckpt.model_id and resulted.n_scored == len(datasets)
    with node.sessions() as session:
        rows = session.execute(
            select(Prediction, Instance.z).join(Instance, Instance.id == Prediction.instance_id)
        ).all()
        assert len(rows) == len(datasets)
        assert {p.study_version for p, _ in rows} == {1}  # refined by the study model
        emb = np.stack([decode_embedding(p.embedding) for p, _ in rows])
        expected = score_study(ckpt, emb, [z for _, z in rows])
        got = np.array([[p.probabilities[n] for n in SUBTYPES] for p, _ in rows])
        np.testing.assert_allclose(got, expected.slices, rtol=1e-4, atol=1e-6)
        study = [resulted.probabilities[n] for n in SUBTYPES]
        np.testing.assert_allclose(study, expected.study, rtol=1e-4, atol=1e-6)


def test_the_report_says_n_a_for_a_label_without_positives_and_flags_a_worse_than_baseline():
    from training.evaluate import Report
    from training.metrics import subtype_metrics

    y, p = np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4])
    none = subtype_metrics(y, p, 0.5, p >= 0.5)
    some = subtype_metrics(np.array([0, 1, 0, 1]), p, 0.5, p >= 0.5)
    report = Report(
        model_id="m", data="d", split=None, n_images=4, skipped_images=0,
        weighted_log_loss=0.3, baseline_log_loss=0.2, baseline_source="training",
        subtypes={name: (none if name == "epidural" else some) for name in SUBTYPES},
    )  # fmt: skip
    text = report.summary_text()
    assert "epidural          n/a: no positives in this set" in text
    assert "WORSE than always predicting the prevalence" in text
    assert "n/a: no positives" in report.markdown() and "**worse**" in report.markdown()


def test_faint_share_draws_from_the_faintest_bleeds_measured_on_the_bleed_maps(
    phantoms: Path, tmp_path: Path
):
    run = tmp_path / "run"
    args = ["train", "--data", str(phantoms), "--out", str(run), "--epochs", "1"]
    options = [*TRAIN_ARGS, "--study-model", "none", "--faint-share", "0.5"]
    result = runner.invoke(app, [*args, *options])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert load_checkpoint(run / "best.safetensors").summary["faint_share"] == 0.5
    (measured,) = (run / "cache").glob("visibility-*.csv")
    table = pd.read_csv(measured)
    slices = pd.read_csv(phantoms / "phantom_slices.csv")
    bleeding = set(slices.loc[slices["bleed_pixels"] > 0, "image_id"])
    assert len(table) > 0 and set(table["image_id"]) <= bleeding
    assert (table["dprime"] > 0).any()


@pytest.mark.parametrize("option", [("--faint-share", "0.5"), ("--blood-fade", "0.6")])
def test_bleed_map_options_without_bleed_maps_fail_with_one_line_before_out_is_made(
    phantoms: Path, tmp_path: Path, option: tuple[str, str]
):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(phantoms, data, ignore=shutil.ignore_patterns("phantom_masks"))
    run = tmp_path / "run"
    proc = _ichnode("train", "--data", str(data), "--out", str(run), *option, *TRAIN_ARGS)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bleed maps" in lines[0], proc.stderr
    assert not run.exists()  # refused before the run folder and its split were written


def test_blood_fade_trains_with_the_bleed_maps_and_is_recorded(phantoms: Path, tmp_path: Path):
    run = tmp_path / "run"
    args = ["train", "--data", str(phantoms), "--out", str(run), "--epochs", "1"]
    options = [*TRAIN_ARGS, "--study-model", "none", "--blood-fade", "0.6"]
    result = runner.invoke(app, [*args, *options])
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = load_checkpoint(run / "best.safetensors").summary
    assert summary["augmentation"]["blood_fade"] == 0.6
    # The bleed maps were read (and cached beside the HU planes) for it.
    assert list((run / "cache").glob("pre-*/*.mask.npy"))
