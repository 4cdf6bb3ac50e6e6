"""Fine-tuning: start from a served checkpoint (``--init``), mix in a phantom set (``--mix``).

``--init`` loads the slice network's weights of a checkpoint into the run's model, and only
when it is the same architecture with the same preprocessing spec: weights learnt on other
inputs would be served with the wrong eval preset. The study model (second stage) is trained
anew on the run's embeddings, as in any run.

``--mix DIR:FRACTION`` adds slices of another RSNA-layout folder (a phantom set) to the
training split only, so that FRACTION of the training slices come from it: the site's reviewed
studies stay the only validation and test data. The two folders are joined in
``RUN/mixed/`` (the CSV rewritten, the images linked, the mixed ones' ids prefixed with
:data:`MIX_PREFIX`), which the rest of the run reads as one folder.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from ichnode.errors import IchnodeError
from ichnode.imaging import PreprocessSpec
from ichnode.model import load_checkpoint
from ichnode.subtypes import SUBTYPES
from training.dataset import (
    CSV_NAME,
    IMAGE_DIR_NAME,
    MASK_DIR_NAME,
    Layout,
    find_layout,
    load_labels,
    split_by_patient,
)

log = logging.getLogger(__name__)

#: Prefix of the ids of the mixed-in slices in ``RUN/mixed/``.
MIX_PREFIX = "MIX_"
MIXED_DIR = "mixed"


class FineTuneError(IchnodeError):
    """A checkpoint or mix that this run cannot start from."""


@dataclass(frozen=True)
class Mix:
    """``--mix DIR:FRACTION``."""

    folder: Path
    fraction: float

    @classmethod
    def parse(cls, text: str) -> Mix:
        """``DIR:FRACTION`` with 0 < FRACTION < 1 (the last colon splits)."""
        folder, sep, share = text.rpartition(":")
        try:
            fraction = float(share) if sep and folder else -1.0
        except ValueError:
            fraction = -1.0
        if not 0.0 < fraction < 1.0:
            raise FineTuneError(f"--mix {text!r}: expected DIR:FRACTION, 0 < FRACTION < 1")
        return cls(Path(folder), fraction)


def init_architecture(checkpoint: Path) -> str:
    """The slice architecture of ``checkpoint`` (what ``--arch auto`` trains with ``--init``)."""
    try:
        return load_checkpoint(checkpoint, "cpu").architecture
    except (IchnodeError, OSError) as exc:
        raise FineTuneError(f"--init {checkpoint}: {str(exc).splitlines()[0]}") from None


def init_from(
    model: nn.Module,
    checkpoint: Path,
    architecture: str,
    spec: PreprocessSpec,
    resize: bool = False,
) -> str:
    """Load ``checkpoint``'s slice weights into ``model``; its model id. Refused (one line)
    unless it has this run's architecture and preprocessing spec; with ``resize`` the input
    size and pixel spacing may differ (every registered network pools its map to a fixed size
    before its head, so its weights fit any input size; it then sees every structure larger or
    smaller than it learnt it, and the fine-tuning is what adapts it)."""
    try:
        ckpt = load_checkpoint(checkpoint, "cpu")
    except (IchnodeError, OSError) as exc:
        raise FineTuneError(f"--init {checkpoint}: {str(exc).splitlines()[0]}") from None
    widen = (ckpt.architecture, architecture) == ("ichnet2", "ichnet2max")
    trunk = (ckpt.architecture, architecture) == ("ichnet2", "ichseg")
    if ckpt.architecture != architecture and not (widen or trunk):
        raise FineTuneError(
            f"--init: {ckpt.model_id} is a {ckpt.architecture}, this run trains {architecture} "
            "(give the same --arch)"
        )
    geometry: tuple[str, ...] = ("size", "pixel_mm") if resize else ()
    mirrored = spec.mirror and not ckpt.spec.mirror  # the difference channels start at zero
    if mirrored:
        geometry += ("mirror",)
    if _without(ckpt.spec, geometry) != _without(spec, geometry):
        raise FineTuneError(
            f"--init: {ckpt.model_id} was trained on {_spec_text(ckpt.spec)}, this run on "
            f"{_spec_text(spec)} (give the same --image-size, --pixel-mm, --windows, --context"
            f"{'' if resize else ', or --init-resize for another size'})"
        )
    state = ckpt.model.state_dict()
    if widen:  # the maxima's weights start at zero: the same function as the checkpoint
        weight = state["classifier.2.weight"]
        state["classifier.2.weight"] = torch.cat([weight, torch.zeros_like(weight)], dim=1)
    if mirrored:
        _widen_input(state, ckpt.spec, spec)
    if trunk:
        _load_trunk(model, state)
    else:
        model.load_state_dict(state)
    log.info(
        "fine-tuning from %s%s%s%s",
        ckpt.model_id,
        " (head widened to the maxima)" if widen else "",
        " (its trunk; the pyramid and both heads start anew)" if trunk else "",
        " (mirror channels added, their weights at zero)" if mirrored else "",
    )
    return ckpt.model_id


def _load_trunk(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """An ichnet2's layers into an ichseg's trunk (the same stem and stages, laid out as a
    pyramid's: ``features.0`` is the stem's first layer, ``features.1`` its second, then two
    layers a stage); the pyramid's top-down path and both heads keep their initial weights."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "features":
            continue  # ichnet2's head: ichseg's pools another map
        i = int(parts[1])
        where = f"stem.{i}" if i < 2 else f"stages.{(i - 2) // 2}.{(i - 2) % 2}"
        renamed[".".join(["features.0", where, *parts[2:]])] = value
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    if unexpected or any(k.startswith(("features.0.stem", "features.0.stages")) for k in missing):
        raise FineTuneError("--init: this ichnet2's layers do not fit the ichseg trunk")


def _widen_input(state: dict[str, torch.Tensor], old: PreprocessSpec, new: PreprocessSpec) -> None:
    """The first convolution's weights for ``new``'s channels: each plane's windows keep their
    weights, its mirror-difference channels get zeros, so the network computes what it did."""
    key = next(k for k, v in state.items() if v.ndim == 4)
    weight = state[key]
    if weight.shape[1] != old.channels:
        raise FineTuneError(f"--init: the first convolution takes {weight.shape[1]} channels")
    planes = weight.view(weight.shape[0], old.planes, len(old.windows), *weight.shape[2:])
    wide = torch.cat([planes, torch.zeros_like(planes)], dim=2)
    state[key] = wide.flatten(1, 2).contiguous()


def _without(spec: PreprocessSpec, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in spec.to_dict().items() if k not in keys}


def _spec_text(spec: PreprocessSpec) -> str:
    d = spec.to_dict()
    windows = ",".join(f"{w[0]}" for w in d.get("windows", []))
    text = f"{d.get('size')} px, {d.get('pixel_mm') or 'whole matrix'} mm/px, windows {windows}"
    return text + (f", context {d['context']}" if d.get("context") else "")


def build_mixed(data: Path, mix: Mix, out: Path, seed: int) -> Path:
    """``RUN/mixed/``: ``data`` and a seeded sample of ``mix.folder`` as one RSNA folder."""
    own, other = find_layout(data), find_layout(mix.folder)
    own_labels, other_labels = load_labels(own.csv), load_labels(other.csv)
    wanted = round(len(own_labels) * mix.fraction / (1.0 - mix.fraction))
    pool = list(other_labels.index)
    chosen = sorted(random.Random(seed).sample(pool, min(wanted, len(pool))))
    target = Path(out) / MIXED_DIR
    images = target / IMAGE_DIR_NAME
    images.mkdir(parents=True, exist_ok=True)
    lines = ["ID,Label"]
    for layout, table, ids, prefix in (
        (own, own_labels, list(own_labels.index), ""),
        (other, other_labels, chosen, MIX_PREFIX),
    ):
        for image_id in ids:
            link = images / f"{prefix}{image_id}.dcm"
            if not link.exists():
                os.symlink(layout.image_path(image_id).resolve(), link)
            row = table.loc[image_id]
            lines.extend(f"{prefix}{image_id}_{name},{int(row[name])}" for name in SUBTYPES)
    (target / CSV_NAME).write_text("\n".join(lines) + "\n", encoding="ascii")
    if own.masks is not None and other.masks is not None:
        _mix_phantom_tables(own, list(own_labels.index), other, chosen, target)
    else:
        log.info("mix: bleed maps only where both folders have them: none joined")
    log.info("mix: %d slices of %s with %d of %s", len(own_labels), data, len(chosen), mix.folder)
    return target


def _mix_phantom_tables(
    own: Layout, own_ids: list[str], other: Layout, chosen: list[str], target: Path
) -> None:
    """The bleed maps and per-slice table of two phantom folders, joined under the mixed ids
    (the segmentation loss, ``--faint-share`` and ``--blood-fade`` read them)."""
    from phantoms.synth import SLICES_CSV

    masks = target / MASK_DIR_NAME
    masks.mkdir(exist_ok=True)
    tables = []
    for layout, ids, prefix in ((own, own_ids, ""), (other, chosen, MIX_PREFIX)):
        for image_id in ids:
            source, link = layout.mask_path(image_id), masks / f"{prefix}{image_id}.png"
            if source is not None and source.is_file() and not link.exists():
                os.symlink(source.resolve(), link)
        table_path = layout.root / SLICES_CSV
        if table_path.is_file():
            table = pd.read_csv(table_path, dtype={"image_id": str, "study": str})
            table = table[table["image_id"].isin(set(ids))]
            tables.append(table.assign(image_id=prefix + table["image_id"],
                                       study=prefix + table["study"]))  # fmt: skip
    if len(tables) == 2:
        pd.concat(tables).to_csv(target / SLICES_CSV, index=False)


def split_with_mix(index: pd.DataFrame, seed: int) -> dict[str, list[str]]:
    """The patient split of the site's own slices, with every mixed-in slice added to train
    (validation and test stay the site's own)."""
    mixed = index["id"].str.startswith(MIX_PREFIX)
    split = split_by_patient(index[~mixed], seed)
    return split | {"train": sorted(split["train"] + index.loc[mixed, "id"].tolist())}
