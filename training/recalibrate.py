"""Fit a trained checkpoint's calibration and thresholds again, on other calibration studies.

    python -m training.recalibrate --model M.safetensors --calibration-data cal \
        --out M2.safetensors [--half]

What the end of ``ichnode train`` does (:func:`training.calibrate.fit_operating_point`), for a
checkpoint that is already trained: its slice network, and its study model when it has one,
score every study of ``--calibration-data``; the three calibrations and the slice and study
thresholds are fitted on those scores and replace the checkpoint's. The weights are kept (their
sha256 too); the model id, which names the operating point as well, changes. ``--half`` stores
the weights in float16, as the demo model's are. The operating point is picked on studies, so
more calibration studies give a threshold nearer to the sensitivity it is meant to have.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from tempfile import TemporaryDirectory

from ichnode.device import resolve_device
from ichnode.model import Checkpoint, load_checkpoint, save_checkpoint
from training import calibrate
from training import study as stage2
from training.dataset import RSNADataset
from training.loop import make_loader, prepare_external


def recalibrate(ckpt: Checkpoint, calibration_data: Path, cache: Path) -> Checkpoint:
    """A copy of ``ckpt`` whose calibrations and thresholds are fitted on the studies of
    ``calibration_data`` (an RSNA-layout folder)."""
    calib = prepare_external(calibration_data, ckpt.spec, cache)
    ds = RSNADataset.from_table(
        calib.layout, calib.table, calib.split["val"], ckpt.spec, calib.cache, calib.index
    )
    device = next(ckpt.model.parameters()).device
    ids, emb, logits, y = stage2.embed_dataset(
        ckpt.model, make_loader(ds, 32, 0, None), ckpt.spec, device, set(), desc="embed"
    )
    studies = stage2.group_studies(calib.index, ids, emb, logits, y)
    refined, study_logits = None, None
    if ckpt.study is not None:
        refined, study_logits = stage2.study_logits(ckpt.study.model, studies, device)
    fitted = calibrate.fit_operating_point(studies.logits, studies.y, refined, study_logits)
    out = copy.copy(ckpt)
    out.identity = ""  # another operating point: named again when saved
    out.calibration, out.thresholds = fitted.calibration, fitted.thresholds
    out.study_thresholds = fitted.study_thresholds
    if ckpt.study is not None:
        out.study = copy.copy(ckpt.study)
        out.study.slice_calibration = fitted.slice_calibration
        out.study.study_calibration = fitted.study_calibration
    out.summary = dict(ckpt.summary) | {
        "calibration_data": calibration_data.resolve().name,
        "calibration_weighted_log_loss": fitted.weighted_log_loss,
        "calibration_study_auc": fitted.study_auc,
        "n_calibration_studies": fitted.n_studies,
        "recalibrated_from": ckpt.summary.get("calibration_data"),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to recalibrate")
    parser.add_argument("--calibration-data", type=Path, required=True, help="RSNA-layout folder")
    parser.add_argument("--out", type=Path, required=True, help="the new checkpoint")
    parser.add_argument("--half", action="store_true", help="store the weights in float16")
    args = parser.parse_args()
    ckpt = load_checkpoint(args.model, device=resolve_device("cpu"))
    with TemporaryDirectory() as cache:
        new = recalibrate(ckpt, args.calibration_data, Path(cache))
    if args.half:
        new.model = copy.deepcopy(new.model).half()
        if new.study is not None:
            new.study.model = copy.deepcopy(new.study.model).half()
    save_checkpoint(args.out, new)
    auc = new.summary["calibration_study_auc"].get("any")
    print(f"{args.out}: model {new.model_id}, {new.summary['n_calibration_studies']} studies")
    print(f"study AUC(any) {auc}, study threshold of any {new.decision_thresholds['any']:.4f}")


if __name__ == "__main__":
    main()
