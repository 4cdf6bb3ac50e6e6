"""`ichnode predict` and the CLI's error paths, in process and as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from helpers import run_cli, sample_file, study, write_all
from PIL import Image

from ichnode.inference import SlicePrediction
from ichnode.predict import PredictRow, render_table
from ichnode.subtypes import SUBTYPES

ICHNODE = [sys.executable, "-m", "ichnode"]


def _process(*args: str) -> subprocess.CompletedProcess[str]:
    """``ichnode ARGS`` as a real process: the main paths."""
    return subprocess.run([*ICHNODE, *args], capture_output=True, text=True, timeout=120)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """``ichnode ARGS`` in this process (:func:`helpers.run_cli`): error paths and options."""
    return run_cli(*args)


def test_predict_json_contract_on_real_head_ct(tmp_path):
    files = [str(sample_file("693_UNCR.dcm")), str(sample_file("693_J2KR.dcm"))]
    done = _process("predict", "--json", *files)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["file"] for r in rows] == files
    for row in rows:
        assert set(row) == {"file", "sop_instance_uid", "probabilities", "predicted", "top_subtype"}
        assert list(row["probabilities"]) == list(SUBTYPES)
        assert all(0 <= p <= 1 for p in row["probabilities"].values())
        assert row["top_subtype"] in SUBTYPES and row["top_subtype"] != "any"
        assert set(row["predicted"]) <= set(SUBTYPES)
    # Lossless JPEG 2000 and uncompressed are the same pixels: the same probabilities.
    assert rows[0]["probabilities"] == pytest.approx(rows[1]["probabilities"], abs=1e-6)
    assert rows[0]["sop_instance_uid"] == pydicom.dcmread(files[0]).SOPInstanceUID


def test_predict_bad_files_are_one_line_errors_and_the_others_still_predicted(tmp_path):
    (tmp_path / "notes.txt").write_text("not dicom")
    nopix = study(1, size=32)[0]
    del nopix.PixelData
    (nopix_path,) = write_all([nopix], tmp_path / "nopix")
    mr = sample_file("MR_small.dcm")
    good = sample_file("CT_small.dcm")
    done = _run(
        "predict", "--json", str(tmp_path / "notes.txt"), str(nopix_path), str(mr), str(good)
    )
    assert done.returncode == 1
    rows = json.loads(done.stdout)
    errors = [r["error"] for r in rows[:3]]
    assert errors[0] == "not a DICOM file"
    assert "no pixel data" in errors[1]
    assert "not a CT image" in errors[2]
    assert all("\n" not in e for e in errors)
    assert "probabilities" in rows[3]
    assert "Traceback" not in done.stderr


def test_predict_table_and_png(tmp_path):
    out = tmp_path / "slice.png"
    done = _process("predict", str(sample_file("693_UNCR.dcm")), "--png", str(out))
    assert done.returncode == 0, done.stderr
    assert "any" in done.stdout and "693_UNCR" in done.stdout
    img = Image.open(out)
    assert img.size == (512, 512) and img.getextrema()[0][1] > 0


def test_missing_model_is_a_one_line_error_without_traceback(tmp_path):
    done = _run(
        "predict", str(sample_file("CT_small.dcm")), "--model", str(tmp_path / "no.safetensors")
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "does not exist" in lines[0]


def test_unknown_device_is_a_one_line_error(tmp_path):
    done = _run("predict", str(sample_file("CT_small.dcm")), "--device", "cuda:7")
    assert done.returncode != 0
    assert done.stderr.strip().startswith("error:") and len(done.stderr.strip().splitlines()) == 1


def test_bad_config_is_a_one_line_error_naming_the_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("port = 99999\n")
    done = _run("results", "--config", str(cfg))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        line
        for line in done.stderr.strip().splitlines()
        if line.startswith("error: invalid setting port")
    ]


def test_debug_flag_shows_the_traceback(tmp_path):
    done = _run(
        "--debug", "predict", str(sample_file("CT_small.dcm")), "--model", str(tmp_path / "x")
    )
    assert "Traceback" in done.stderr and done.returncode != 0


def test_every_command_has_help():
    for args in (
        ["--help"],
        ["serve", "--help"],
        ["worker", "--help"],
        ["results", "--help"],
        ["db", "upgrade", "--help"],
        ["synth", "--help"],
        ["train", "--help"],
        ["evaluate", "--help"],
        ["predict", "--help"],
    ):
        done = _run(*args)
        assert done.returncode == 0 and "Usage" in done.stdout, args


def test_usage_error_exits_non_zero_without_traceback():
    done = _run("results", "--format", "xml")
    assert done.returncode != 0 and "Traceback" not in done.stderr


def test_db_upgrade_then_results_on_an_empty_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    up = _run("db", "upgrade", "--db-url", url)
    assert up.returncode == 0 and "is at" in up.stdout
    res = _run("results", "--db-url", url, "--format", "json")
    assert res.returncode == 0 and json.loads(res.stdout) == []


def test_commands_that_read_a_node_s_database_do_not_create_a_new_one(tmp_path):
    # A mistyped path must not become a new empty database that answers "no studies".
    url = f"sqlite:///{tmp_path / 'typo' / 'ichnode.db'}"
    for args in (
        ["results"],
        ["audit"],
        ["resend", "--study", "1.2.3", "--store", str(tmp_path)],
        ["worker", "--exit-when-empty"],
    ):
        done = _run(*args, "--db-url", url)
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0, args
        assert lines == [
            f"error: no database at {tmp_path / 'typo' / 'ichnode.db'}: "
            "'ichnode serve' or 'ichnode db upgrade' creates it (check db_url)"
        ], args
    assert not (tmp_path / "typo").exists()


def test_an_unreachable_database_is_a_one_line_error():
    done = _run("db", "upgrade", "--db-url", "postgresql+psycopg://nobody@127.0.0.1:1/x")
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1
    assert lines[0].startswith("error: database error: connection failed") and "port 1" in lines[0]


def test_mixed_precision_without_cuda_is_a_clear_error(tmp_path):
    done = _run("predict", str(sample_file("CT_small.dcm")), "--device", "cpu", "--amp")
    assert done.returncode != 0  # predict has no --amp: a usage error, not a traceback
    assert "Traceback" not in done.stderr
    from ichnode.errors import DeviceError
    from ichnode.inference import Predictor

    with pytest.raises(DeviceError, match="needs a CUDA device"):
        Predictor(device="cpu", amp=True)
    train = _run(
        "train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--device", "cpu", "--amp"
    )
    assert train.returncode != 0 and "Traceback" not in train.stderr
    assert train.stderr.strip().startswith("error:") and "CUDA" in train.stderr


def test_a_non_dicom_file_is_one_unwrapped_line_naming_the_path_once(tmp_path):
    folder = tmp_path / ("a-long-folder-name-that-a-terminal-would-wrap-" * 3)
    folder.mkdir()
    notes = folder / "notes.txt"
    notes.write_text("not dicom")
    done = subprocess.run(
        [*ICHNODE, "predict", str(notes), str(sample_file("CT_small.dcm"))],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "40"},
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"error: {notes}: not a DICOM file"]
    assert "force" not in done.stderr + done.stdout


def test_a_missing_file_is_one_line_naming_it_once(tmp_path):
    missing = tmp_path / "missing.dcm"
    done = _run("predict", str(missing))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"error: {missing}: cannot read: No such file or directory"]


def _table(capsys, predicted: list[str]) -> str:
    probabilities = {name: 0.1 for name in SUBTYPES} | {"subdural": 0.9, "any": 0.95}
    row = PredictRow(file=Path("slice.dcm"), prediction=SlicePrediction(probabilities, predicted))
    render_table([row])
    line = next(x for x in capsys.readouterr().out.splitlines() if "slice.dcm" in x)
    return line.replace("│", " ").split()[-1]


def test_top_subtype_is_shown_only_when_something_is_predicted(capsys):
    assert _table(capsys, []) == "-"
    assert _table(capsys, ["subdural", "any"]) == "subdural"


@pytest.mark.parametrize("target", ["missing/slice.png", "missing"])
def test_png_into_a_missing_folder_is_an_error_naming_png(tmp_path, target):
    files = [str(sample_file("CT_small.dcm"))]
    if not target.endswith(".png"):  # a folder: one PNG per file
        files.append(str(sample_file("693_UNCR.dcm")))
    done = _run("predict", *files, "--png", str(tmp_path / target))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "'--png'" in lines[0] and "does not exist" in lines[0]
    assert not (tmp_path / "missing").exists()  # nothing created
    assert done.stdout == ""


def test_png_into_an_existing_folder_writes_one_per_file(tmp_path):
    files = [str(sample_file("CT_small.dcm")), str(sample_file("693_UNCR.dcm"))]
    done = _run("predict", *files, "--png", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["693_UNCR.png", "CT_small.png"]


def test_predict_a_synth_folder_scores_its_study_and_skips_the_files_beside_it(tmp_path):
    # An `ichnode synth` folder holds two CSVs and a bleed map per slice beside the images:
    # not DICOM, so skipped and counted, not reported as one error each.
    from phantoms.synth import generate

    generate(tmp_path / "demo", studies=1, size=64, seed=3, progress=False)
    n_slices = len(list((tmp_path / "demo" / "stage_2_train").iterdir()))
    done = _run("predict", "--json", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["errors"] == []
    assert answer["not_dicom"] == n_slices + 2
    [only] = answer["studies"]
    assert len(only["slices"]) == n_slices
    table = _run("predict", str(tmp_path / "demo"))
    assert table.returncode == 0, table.stderr
    assert f"skipped {n_slices + 2} files that are not DICOM" in table.stdout
    assert "error" not in table.stdout
