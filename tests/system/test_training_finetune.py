"""Fine-tuning: ``ichnode train --init`` starts from a checkpoint (and refuses one of another
architecture or preprocessing), ``--mix`` adds a phantom set to the training split only, and
``ichnode evaluate --compare`` puts two checkpoints side by side on the same studies. Real
training runs on tiny phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ichnode.cli import app
from ichnode.model import demo_model_path, load_checkpoint
from phantoms.synth import generate
from training.compare import DIFFERENCE
from training.finetune import MIX_PREFIX, FineTuneError, Mix

pytestmark = pytest.mark.slow

runner = CliRunner()
TINY = [
    *("--image-size", "64", "--pixel-mm", "3.6", "--batch-size", "16", "--device", "cpu"),
    *("--limit", "120", "--study-model", "none", "--epochs", "1"),
]


def _train(*args: str) -> Path:
    result = runner.invoke(app, ["train", *args, *TINY])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return Path(args[args.index("--out") + 1]) / "best.safetensors"


@pytest.fixture(scope="module")
def sets(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A "site" set (the session's tiny phantoms) and a phantom set to mix in."""
    mix = tmp_path_factory.mktemp("mix")
    generate(mix, studies=4, seed=22, size=64, progress=False)
    return tiny_phantoms, mix


@pytest.fixture
def base(tiny_run: Path) -> Path:
    """The session's tiny trained checkpoint (read, never modified)."""
    return tiny_run / "best.safetensors"


def _weights(path: Path) -> list[torch.Tensor]:
    return [p.detach().clone() for p in load_checkpoint(path).model.parameters()]


def test_init_starts_from_the_checkpoints_weights(sets, base, tmp_path):
    # With a zero learning rate nothing moves: the run's weights are the checkpoint's.
    tuned = _train("--data", str(sets[0]), "--out", str(tmp_path / "run"), "--init", str(base),
                   "--lr", "0")  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(_weights(tuned), _weights(base), strict=True))
    scratch = _train("--data", str(sets[0]), "--out", str(tmp_path / "scratch"), "--lr", "0",
                     "--seed", "5")  # fmt: skip
    assert not all(
        torch.equal(a, b) for a, b in zip(_weights(scratch), _weights(base), strict=True)
    )


def test_init_trains_the_checkpoints_architecture_unless_arch_names_another(sets, tmp_path):
    """--arch auto (the default): fine-tuning a simplecnn checkpoint trains a simplecnn from
    its weights; naming another architecture it cannot start is refused in one line."""
    seed = _train("--data", str(sets[0]), "--out", str(tmp_path / "seed"), "--arch", "simplecnn")
    tuned = _train("--data", str(sets[0]), "--out", str(tmp_path / "run"), "--init", str(seed),
                   "--lr", "0")  # fmt: skip
    assert load_checkpoint(tuned).architecture == "simplecnn"
    assert all(torch.equal(a, b) for a, b in zip(_weights(tuned), _weights(seed), strict=True))
    refused = runner.invoke(app, ["train", "--data", str(sets[0]), "--out",
                                  str(tmp_path / "refused"), "--init", str(seed), "--arch",
                                  "ichnet2", *TINY])  # fmt: skip
    assert isinstance(refused.exception, FineTuneError)
    assert "simplecnn" in str(refused.exception) and "\n" not in str(refused.exception)
    assert not (tmp_path / "refused").exists()


def test_epochs_0_keeps_the_init_slice_network_and_fits_the_study_model(sets, base, tmp_path):
    """--epochs 0: the second stage alone, on the frozen slice network of --init."""
    out = tmp_path / "run"
    args = ["train", "--data", str(sets[0]), "--out", str(out), "--init", str(base)]
    options = [*TINY[: TINY.index("--study-model")], "--limit", "120", "--epochs", "0"]
    result = runner.invoke(app, [*args, *options, "--study-model", "bigru", "--study-epochs", "2"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    ckpt = load_checkpoint(out / "best.safetensors")
    weights = [p.detach() for p in ckpt.model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(weights, _weights(base), strict=True))
    assert ckpt.study is not None and ckpt.study_thresholds is not None
    assert ckpt.summary["epochs"] == 0 and ckpt.summary["best_epoch"] == 0
    assert ckpt.summary["study_model"] == "bigru"
    assert [row["epoch"] for row in json.loads((out / "history.json").read_text())] == [0]


def test_epochs_0_without_init_is_refused_in_one_line_before_out_is_made(sets, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--data", str(sets[0]), "--out", str(out), *TINY, "--epochs", "0"]
    )
    message = str(result.exception)
    assert result.exit_code != 0 and "\n" not in message
    assert "--epochs 0" in message and "--init" in message, message
    assert not out.exists()


def test_init_refuses_a_checkpoint_of_another_preprocessing_in_one_line(sets, tmp_path):
    from ichnode.cli import main

    argv = ["ichnode", "train", "--data", str(sets[0]), "--out", str(tmp_path / "run"),
            "--init", str(demo_model_path()), *TINY]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as stop:
        mp.setattr("sys.argv", argv)
        main()
    assert stop.value.code == 2
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_the_refusal_names_both_specs(sets, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(sets[0]), "--out", str(tmp_path),
                                 "--init", str(demo_model_path()), *TINY])  # fmt: skip
    message = str(result.exception)
    assert isinstance(result.exception, FineTuneError)
    assert "256 px" in message and "64 px" in message and "\n" not in message


def test_init_resize_starts_a_run_at_another_size_from_the_checkpoints_weights(
    sets, base, tmp_path
):
    """--init-resize: the tiny 64 px / 3.6 mm checkpoint starts a 96 px / 2.4 mm run (the same
    field of view at 1.5 times the resolution); without it the run is refused."""
    resized = [*("--image-size", "96", "--pixel-mm", "2.4")]
    args = ["train", "--data", str(sets[0]), "--init", str(base), "--lr", "0", *TINY, *resized]
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "refused")])
    assert isinstance(refused.exception, FineTuneError)
    assert "--init-resize" in str(refused.exception)
    assert not (tmp_path / "refused").exists()
    done = runner.invoke(app, [*args, "--out", str(tmp_path / "run"), "--init-resize"])
    assert done.exit_code == 0, done.output + repr(done.exception)
    tuned = tmp_path / "run" / "best.safetensors"
    assert all(torch.equal(a, b) for a, b in zip(_weights(tuned), _weights(base), strict=True))
    spec = load_checkpoint(tuned).spec
    assert (spec.size, spec.pixel_mm) == (96, 2.4)


def test_init_from_a_plain_checkpoint_starts_a_mirror_run_with_the_same_function(
    sets, base, tmp_path
):
    """--mirror: the plain tiny checkpoint starts a run with the left-right difference channels,
    their first-layer weights at zero, so with a zero learning rate the run's network scores a
    slice, preprocessed for serving, exactly as the checkpoint did; ``predict`` serves it."""
    from ichnode.imaging import preprocess, read
    from ichnode.model import build
    from ichnode.predict import predict_folder

    tuned = _train("--data", str(sets[0]), "--out", str(tmp_path / "run"), "--init", str(base),
                   "--lr", "0", "--mirror")  # fmt: skip
    old, new = load_checkpoint(base), load_checkpoint(tuned)
    assert new.spec.mirror and new.spec.channels == 2 * old.spec.channels
    first = next(n for n, p in new.model.named_parameters() if p.ndim == 4)
    weight = dict(new.model.named_parameters())[first]
    assert torch.equal(weight[:, old.spec.channels :], torch.zeros_like(weight[:, 3:]))
    assert torch.equal(weight[:, : old.spec.channels], next(p for p in old.model.parameters()
                                                            if p.ndim == 4))  # fmt: skip
    # Served, the plain windows come first: the run's network narrowed to them (its batch
    # statistics moved while training at lr 0) scores the plain input as it scores the wide one.
    narrow = build("ichnet2", in_channels=old.spec.channels).eval()
    state = {k: v.float() for k, v in new.model.state_dict().items()}
    state[first] = state[first][:, : old.spec.channels]
    narrow.load_state_dict(state)
    ds = read(next((sets[0] / "stage_2_train").glob("*.dcm")))
    with torch.no_grad():
        a = narrow(torch.from_numpy(preprocess(ds, old.spec))[None])
        b = new.model.float().eval()(torch.from_numpy(preprocess(ds, new.spec))[None])
    assert torch.allclose(a, b, atol=1e-5)
    scores = predict_folder(sets[0], tuned, "cpu")
    assert len(scores.studies) == 12 and not scores.errors
    assert all(r.prediction is not None for st in scores.studies for r in st.slices)


def test_mix_adds_the_phantom_set_to_the_training_split_only(sets, tmp_path):
    site, mix = sets
    _train("--data", str(site), "--out", str(tmp_path / "run"), "--mix", f"{mix}:0.25")
    split = json.loads((tmp_path / "run" / "split.json").read_text())["ids"]
    mixed = [i for i in split["train"] if i.startswith(MIX_PREFIX)]
    own = [i for i in split["train"] if not i.startswith(MIX_PREFIX)]
    assert mixed and own
    assert not any(i.startswith(MIX_PREFIX) for i in split["val"] + split["test"])
    assert split["val"] and split["test"]


def test_a_mix_of_two_phantom_sets_keeps_their_bleed_maps(sets, tmp_path):
    """The joined folder has every slice's bleed map and the per-slice table under the mixed
    ids, so an ichseg run on it trains its segmentation head (before, the maps were left out
    and the run silently trained without the per-pixel loss)."""
    from phantoms.synth import SLICES_CSV

    site, mix = sets
    best = _train("--data", str(site), "--out", str(tmp_path / "run"), "--mix", f"{mix}:0.25",
                  "--arch", "ichseg")  # fmt: skip
    assert load_checkpoint(best).summary["seg_weight"] == 1.0
    mixed = tmp_path / "run" / "mixed"
    images = {p.stem for p in (mixed / "stage_2_train").iterdir()}
    assert any(i.startswith(MIX_PREFIX) for i in images)
    assert {p.stem for p in (mixed / "phantom_masks").iterdir()} == images
    table = pd.read_csv(mixed / SLICES_CSV, dtype={"image_id": str})
    assert set(table["image_id"]) == images


@pytest.mark.parametrize("text", ["phantoms", "phantoms:1.5", "phantoms:0", ":0.5", "x:half"])
def test_a_mix_without_a_fraction_between_0_and_1_is_refused(text):
    with pytest.raises(FineTuneError, match="DIR:FRACTION"):
        Mix.parse(text)


def test_evaluate_compare_puts_both_models_side_by_side_on_the_same_studies(sets, base, tmp_path):
    tuned = _train("--data", str(sets[0]), "--out", str(tmp_path / "run"), "--init", str(base))
    out = tmp_path / "compare"
    result = runner.invoke(app, ["evaluate", "--data", str(sets[0]), "--model", str(base),
                                 "--compare", str(tuned), "--split",
                                 str(tmp_path / "run" / "split.json"), "--out", str(out),
                                 "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    old_id, new_id = load_checkpoint(base).model_id, load_checkpoint(tuned).model_id
    assert old_id in result.output and new_id in result.output
    rows = {r["figure"]: r for r in json.loads((out / "compare.json").read_text())}
    assert rows["studies"]["old"] == rows["studies"]["new"] > 0
    assert rows["slices"]["old"] == rows["slices"]["new"]
    # The paired difference of the study AUC(any) is the one between the two reports' AUCs
    # (n/a, no row, when the split's studies are all of one class).
    aucs = rows["study AUC (any)"]
    if aucs["old"] is None:
        assert DIFFERENCE not in rows
    else:
        diff = float(rows[DIFFERENCE]["new"].split()[0])
        assert diff == pytest.approx(aucs["new"] - aucs["old"], abs=2e-3)  # 6-decimal CSVs
    assert (out / "old" / "report.json").is_file() and (out / "new" / "report.json").is_file()
