"""Training: data → patient split → balanced epochs → best checkpoint, calibrated, with resume.

Read top to bottom: :func:`run` prepares the data (:func:`prepare_data`), trains with
:func:`train_one_epoch`, validates with :func:`predict_logits`, keeps ``RUN/best.safetensors``
(lowest validation loss) and ``RUN/last.pt`` (resume state: plain tensors and dicts, loaded
with ``weights_only=True``), and finally fits calibration and thresholds on the validation split
(:func:`finalize`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, overload

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ichnode.device import resolve_device
from ichnode.errors import IchnodeError
from ichnode.imaging import (
    PreprocessSpec,
    parse_window,
    planes_to_input,
    windows_for_mode,
    with_mirror_differences,
)
from ichnode.model import Checkpoint, build, load_checkpoint, save_checkpoint
from ichnode.study import StudyHead
from ichnode.subtypes import SUBTYPES
from training import calibrate, distributed, metrics
from training import study as stage2
from training.augment import (
    NO_AUGMENT,
    NO_HU_AUGMENT,
    AugmentConfig,
    HUAugmentConfig,
    augment_batch,
    augment_hu,
    jitter_windows,
)
from training.cache import PreprocessCache
from training.config import AUTO, DEFAULT_ARCHITECTURE, TrainConfig
from training.dataset import (
    Layout,
    RSNADataset,
    bleed_dprime,
    find_layout,
    header_index,
    load_labels,
    split_by_patient,
    write_split,
)
from training.finetune import (
    MIXED_DIR,
    Mix,
    build_mixed,
    init_architecture,
    init_from,
    split_with_mix,
)
from training.sampling import BalancedSampler, SeededRandomSampler, build_sampler, faint_members

log = logging.getLogger(__name__)

BEST_NAME = "best.safetensors"
LAST_NAME = "last.pt"
HISTORY_NAME = "history.json"
SPLIT_NAME = "split.json"
THRESHOLD_RULE = (
    "any: highest threshold with sensitivity >= 0.95; other subtypes: max F1; "
    "calibrated probabilities; slice thresholds on calibration slices, study thresholds "
    "on calibration studies"
)


#: Augmented passes over the training split whose embeddings train the study model (beside
#: one clean pass): the slice network has memorised its training slices, and augmented
#: embeddings look more like those of slices it has never seen.
AUGMENTED_EMBEDDING_PASSES = 2


class TrainError(IchnodeError):
    """Training cannot start or continue (bad option, nothing to resume...)."""


def make_spec(
    windows: str,
    image_size: int,
    pixel_mm: float | None = None,
    context: int = 0,
    mirror: bool = False,
) -> PreprocessSpec:
    """``stack``, ``single`` or comma-separated window names / CENTER/WIDTH → a spec."""
    try:
        if windows in ("stack", "single"):
            wins = windows_for_mode(windows)
        else:
            wins = tuple(parse_window(part) for part in windows.split(",") if part.strip())
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    if not wins:
        raise TrainError("--windows names no window")
    try:
        return PreprocessSpec(
            windows=wins, size=image_size, pixel_mm=pixel_mm, context=context, mirror=mirror
        )
    except ValueError as exc:
        raise TrainError(str(exc)) from None


@overload
def model_input(
    x: torch.Tensor,
    spec: PreprocessSpec,
    augment: AugmentConfig | HUAugmentConfig | None,
    g: torch.Generator | None,
    masks: None = None,
) -> torch.Tensor: ...
@overload
def model_input(
    x: torch.Tensor,
    spec: PreprocessSpec,
    augment: AugmentConfig | HUAugmentConfig | None,
    g: torch.Generator | None,
    masks: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]: ...
def model_input(
    x: torch.Tensor,
    spec: PreprocessSpec,
    augment: AugmentConfig | HUAugmentConfig | None,
    g: torch.Generator | None,
    masks: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """A loader batch → the model's input, augmented when ``augment`` is given.

    For a ``pixel_mm`` spec the batch holds HU planes ``(N, P, S, S)`` (the slice, or with
    ``spec.context`` the slice and its neighbours): augmentation acts in HU on all planes of
    a sample alike (:func:`training.augment.augment_hu`) and the windows (jittered when
    training) come last, plane-major as :func:`ichnode.imaging.planes_to_input` serves them.
    For a legacy spec the batch is already windowed and only the legacy augmentation applies.
    With ``masks`` (one-hot bleed maps ``(N, K, S, S)``) the masks get the same pose and
    ``(input, masks)`` is returned.
    """
    if spec.pixel_mm is None:
        if isinstance(augment, AugmentConfig) and g is not None:
            x = augment_batch(x, augment, g)
        return x if masks is None else (x, masks)
    if not isinstance(augment, HUAugmentConfig) or not augment.enabled or g is None:
        x = planes_to_input(x, spec.windows, spec.mirror)
        return x if masks is None else (x, masks)
    if masks is None:
        hu = augment_hu(x, augment, g)
    else:
        hu, masks = augment_hu(x, augment, g, masks)
    jittered = jitter_windows(spec.windows, len(hu), augment, g)

    def windowed(hu: torch.Tensor) -> torch.Tensor:  # (N, P, S, S) → (N, P, C, S, S)
        chans = [
            ((hu - (c.to(hu)[:, None] - w.to(hu)[:, None] / 2.0)) / w.to(hu)[:, None]).clamp(0, 1)
            for c, w in jittered
        ]
        return torch.stack(chans, dim=2)

    # The mirror of the augmented image: its own midline, the same jittered windows.
    x = with_mirror_differences(hu, windowed) if spec.mirror else windowed(hu)
    x = x.flatten(1, 2)
    return x if masks is None else (x, masks)


# --------------------------------------------------------------------------- data


@dataclass
class Prepared:
    """Everything about the data a run needs."""

    layout: Layout
    table: pd.DataFrame  # labels, index = image id
    split: dict[str, list[str]]
    spec: PreprocessSpec
    cache: PreprocessCache
    skipped: set[str]  # image ids skipped so far (unreadable header or pixels)
    index: pd.DataFrame  # id, patient, study, z of the readable images


def prepare_data(cfg: TrainConfig, spec: PreprocessSpec, write: bool = True) -> Prepared:
    """Labels, header index (cached), patient split (RUN/split.json unless ``write`` is
    False) and the array cache."""
    layout = find_layout(cfg.data)
    table = load_labels(layout.csv)
    ids = list(table.index)
    if cfg.limit is not None and cfg.limit < len(ids):
        ids = sorted(random.Random(cfg.seed).sample(ids, cfg.limit))
    if not ids:
        raise TrainError(f"{layout.csv.name} lists no images")
    cache_dir = Path(cfg.cache) if cfg.cache else Path(cfg.out) / "cache"
    index = header_index(layout, ids, cache_dir)
    unreadable = index.loc[~index["readable"].astype(bool), "id"].tolist()
    for image_id in unreadable:
        log.warning("skipping unreadable image %s: header cannot be read", image_id)
    index = index[index["readable"].astype(bool)]
    if len(index) == 0:
        raise TrainError("no readable images in the data folder")
    split = split_with_mix(index, cfg.seed) if cfg.mix else split_by_patient(index, cfg.seed)
    if not split["train"] or not split["val"]:
        raise TrainError(f"too few patients ({index['patient'].nunique()}) to split 80/10/10")
    if write:
        write_split(Path(cfg.out) / SPLIT_NAME, split, index, cfg.seed)
    return Prepared(
        layout=layout,
        table=table,
        split=split,
        spec=spec,
        cache=PreprocessCache(cache_dir, spec),
        skipped=set(unreadable),
        index=index,
    )


def prepare_external(folder: Path, spec: PreprocessSpec, cache_dir: Path) -> Prepared:
    """Every readable image of another RSNA-layout folder (calibration or evaluation data)."""
    layout = find_layout(folder)
    table = load_labels(layout.csv)
    index = header_index(layout, list(table.index), cache_dir)
    readable = index["readable"].astype(bool)
    index = index[readable]
    if len(index) == 0:
        raise TrainError(f"no readable images in {folder}")
    ids = index["id"].tolist()
    return Prepared(
        layout=layout,
        table=table,
        split={"train": [], "val": ids, "test": []},
        spec=spec,
        cache=PreprocessCache(cache_dir, spec),
        skipped=set(),
        index=index,
    )


def collate(
    batch: list[tuple[torch.Tensor, torch.Tensor, int, bool, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], torch.Tensor | None]:
    """Stack the readable items; return the positions of unreadable ones separately, and the
    bleed maps ``(N, S, S)`` when the dataset serves them (else None)."""
    good = [b for b in batch if b[3]]
    bad = [b[2] for b in batch if not b[3]]
    with_masks = bool(batch) and batch[0][4].numel() > 0
    if not good:
        x0, y0 = batch[0][0], batch[0][1]
        empty = x0.new_zeros((0, *x0.shape)), y0.new_zeros((0, *y0.shape)), torch.zeros(0)
        return *empty, bad, (torch.zeros((0, *batch[0][4].shape)) if with_masks else None)
    x = torch.stack([b[0] for b in good])
    y = torch.stack([b[1] for b in good])
    pos = torch.tensor([b[2] for b in good], dtype=torch.long)
    masks = torch.stack([b[4] for b in good]) if with_masks else None
    return x, y, pos, bad, masks


def make_loader(
    ds: RSNADataset, batch_size: int, workers: int, sampler: torch.utils.data.Sampler | None
) -> DataLoader:
    """A loader over ``ds`` (sequential when ``sampler`` is None)."""
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
    )


# --------------------------------------------------------------------------- train / validate


class Loss(nn.Module):
    """BCEWithLogitsLoss, optionally weighted per column by the competition weights."""

    def __init__(self, weighted: bool) -> None:
        super().__init__()
        w = metrics.metric_weights() if weighted else np.ones(len(SUBTYPES))
        self.register_buffer("w", torch.tensor(w / w.sum(), dtype=torch.float32))
        self.bce = nn.BCEWithLogitsLoss(reduction="none")

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.bce(logits, y) * self.w).sum(dim=1).mean()


class SegmentationLoss(nn.Module):
    """BCEWithLogitsLoss of a segmentation head's maps against the bleed maps.

    The head gives one map per label at a coarse grid (``(N, 6, h, w)``); a cell's target for
    a subtype is 1 when the subtype covers at least :data:`CELL_COVER` of some input pixel in
    it (after the pose augmentation), and ``any`` when some subtype is. Small bleeds are thus
    whole positive cells, and every pixel of a normal slice is a negative: the network learns
    where blood is and what the dense things that are not blood (falx, tentorium, venous
    sinuses, calcifications) look like.
    """

    CELL_COVER = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, maps: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        cells = F.adaptive_max_pool2d(onehot.to(maps.dtype), maps.shape[-2:])
        target = (cells >= self.CELL_COVER).to(maps.dtype)
        target = torch.cat([target, target.amax(dim=1, keepdim=True)], dim=1)
        return self.bce(maps, target)


def onehot_masks(masks: torch.Tensor) -> torch.Tensor:
    """Bleed maps ``(N, S, S)`` (0, or 1 + a subtype's index) → ``(N, 5, S, S)`` float one-hot
    over the hemorrhage subtypes."""
    n_sub = len(SUBTYPES) - 1
    return F.one_hot(masks.long().clamp(0, n_sub), n_sub + 1)[..., 1:].permute(0, 3, 1, 2).float()


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: Loss,
    device: torch.device,
    augmentation: AugmentConfig | HUAugmentConfig,
    g: torch.Generator,
    skipped: set[str],
    desc: str = "train",
    progress: bool = True,
    scaler: torch.amp.GradScaler | None = None,
    spec: PreprocessSpec | None = None,
    seg_weight: float = 0.0,
) -> tuple[float, int]:
    """One pass over the loader; returns (mean loss, images seen).

    With an enabled ``scaler`` (``--amp``, CUDA only) the forward pass runs in float16 autocast
    and the loss is scaled for the backward pass. With ``seg_weight`` > 0, a loader that
    serves bleed maps and a model with a segmentation head (``segments``), the
    :class:`SegmentationLoss` of the head's maps is added with that weight.
    """
    amp = scaler is not None and scaler.is_enabled()
    model.train()
    segments = seg_weight > 0 and getattr(_unwrap(model), "segments", False)
    seg_loss = SegmentationLoss().to(device) if segments else None
    fades = isinstance(augmentation, HUAugmentConfig) and augmentation.blood_fade > 0
    total, seen = 0.0, 0
    data = cast(RSNADataset, loader.dataset)
    ids = data.ids
    bar = tqdm(loader, desc=desc, leave=False, disable=None if progress else True)
    for x, y, _, bad, masks in bar:
        skipped.update(ids[i] for i in bad)
        if len(x) == 0:
            continue
        x = x.to(device, non_blocking=True)
        onehot: torch.Tensor | None = None
        if masks is not None and (seg_loss is not None or fades):
            x, posed = model_input(
                x, spec or data.spec, augmentation, g, onehot_masks(masks.to(device))
            )
            onehot = posed if seg_loss is not None else None
        else:
            x = model_input(x, spec or data.spec, augmentation, g)
        y = y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            if onehot is None or seg_loss is None:
                loss = loss_fn(model(x).float(), y)
            else:
                logits, maps = model(x, segment=True)
                loss = loss_fn(logits.float(), y) + seg_weight * seg_loss(maps.float(), onehot)
        if amp and scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += float(loss.detach()) * len(x)
        seen += len(x)
        bar.set_postfix(loss=f"{total / max(seen, 1):.4f}")
    return total / max(seen, 1), seen


def trained_on_masks(cfg: TrainConfig, data: Prepared, model: nn.Module) -> bool:
    """Whether the run adds the per-pixel loss: a weight, bleed maps, a segmentation head."""
    return bool(
        cfg.seg_weight > 0
        and data.layout.masks is not None
        and data.spec.pixel_mm is not None
        and getattr(_unwrap(model), "segments", False)
    )


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model)."""
    return getattr(model, "module", model)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    skipped: set[str],
    desc: str = "predict",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, labels and dataset positions of every readable item (no augmentation)."""
    model.eval()
    data = cast(RSNADataset, loader.dataset)
    spec, ids = data.spec, data.ids
    logits, labels, positions = [], [], []
    for x, y, pos, bad, _ in tqdm(
        loader, desc=desc, leave=False, disable=None if progress else True
    ):
        skipped.update(ids[i] for i in bad)
        if len(x) == 0:
            continue
        logits.append(model(model_input(x.to(device), spec, None, None)).float().cpu().numpy())
        labels.append(y.numpy())
        positions.append(pos.numpy())
    if not logits:
        n = len(SUBTYPES)
        return np.zeros((0, n)), np.zeros((0, n)), np.zeros(0, dtype=int)
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(positions)


def _val_loss(loss_fn: Loss, logits: np.ndarray, y: np.ndarray, device: torch.device) -> float:
    with torch.no_grad():
        z = torch.as_tensor(logits, dtype=torch.float32, device=device)
        return float(loss_fn(z, torch.as_tensor(y, dtype=torch.float32, device=device)))


def _calibrated_val_loss(
    loss_fn: Loss, logits: np.ndarray, y: np.ndarray, device: torch.device
) -> float:
    """Validation loss after Platt scaling fitted on the same validation logits.

    Balanced sampling shifts raw probabilities far above the natural prevalence, and by
    different amounts from epoch to epoch, so the raw loss mostly measures that shift (it tends
    to pick the first epoch). The shipped checkpoint is calibrated on validation anyway, so the
    epoch is chosen by the loss of what will be shipped (12 fitted numbers: little optimism,
    the same for every epoch).
    """
    probs = calibrate.fit_platt(logits, y).apply_numpy(logits)
    z = np.log(np.clip(probs, 1e-7, 1 - 1e-7)) - np.log(np.clip(1 - probs, 1e-7, 1))
    return _val_loss(loss_fn, z, y, device)


# --------------------------------------------------------------------------- resume state


def _fingerprint(cfg: TrainConfig, spec: PreprocessSpec) -> dict:
    return {
        "architecture": cfg.architecture,
        "spec": json.dumps(spec.to_dict(), sort_keys=True),
        "normal_share": -1.0 if cfg.normal_share is None else cfg.normal_share,
        "faint_share": -1.0 if cfg.faint_share is None else cfg.faint_share,
        "blood_fade": cfg.blood_fade,
        "epoch_samples": -1 if cfg.epoch_samples is None else cfg.epoch_samples,
        "seed": cfg.seed,
        "data": str(Path(cfg.data).resolve()),
        "limit": -1 if cfg.limit is None else cfg.limit,
    }


def save_resume_state(path: Path, state: dict) -> None:
    """Write the resume state atomically (plain tensors, numbers, strings, lists, dicts)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_resume_state(path: Path) -> dict[str, Any]:
    """Load RUN/last.pt without unpickling code."""
    if not path.is_file():
        raise TrainError(f"--resume: {path} does not exist (nothing to resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the same: not our state file
        raise TrainError(f"--resume: {path.name} is not a resume state ({exc})") from None


# --------------------------------------------------------------------------- the run


def _version() -> str:
    import ichnode

    return str(getattr(ichnode, "__version__", "0.0.0"))


def _check_bleed_options(cfg: TrainConfig, layout: Layout, spec: PreprocessSpec) -> None:
    """--blood-fade and --faint-share read the phantom bleed maps: refuse a folder without
    them before OUT is made (the mixed folder of --mix is checked again once built)."""
    if cfg.blood_fade > 0 and (layout.masks is None or spec.pixel_mm is None):
        raise TrainError(
            "--blood-fade needs bleed maps (phantom folders: phantom_masks/) and a --pixel-mm "
            "geometry"
        )
    if cfg.faint_share is not None and layout.masks is None:
        raise TrainError(
            f"--faint-share: {layout.root} has no bleed maps (phantom_masks/): how visible a "
            "bleed is is known for phantom folders only"
        )


def run(cfg: TrainConfig, augmentation: AugmentConfig | HUAugmentConfig | None = None) -> Path:
    """Train per ``cfg``; returns the path of the best (calibrated) checkpoint.

    ``augmentation`` overrides the default strengths (``--no-augment`` disables them).
    Progress bars show when stderr is a terminal.
    """
    if cfg.architecture == AUTO:  # fine-tuning keeps the checkpoint's architecture
        init = None if cfg.init is None else init_architecture(Path(cfg.init))
        cfg = dataclasses.replace(cfg, architecture=init or DEFAULT_ARCHITECTURE)
    out = Path(cfg.out)
    spec = make_spec(cfg.windows, cfg.image_size, cfg.pixel_mm, cfg.context, cfg.mirror)

    if cfg.study_model is not None:
        from ichnode.study import STUDY_ARCHITECTURES

        if cfg.study_model not in STUDY_ARCHITECTURES:
            known = ", ".join(sorted(STUDY_ARCHITECTURES))
            raise TrainError(f"--study-model {cfg.study_model!r}: expected one of {known}, none")
    if cfg.normal_share is not None and not 0.0 < cfg.normal_share < 1.0:
        raise TrainError(f"--normal-share must be between 0 and 1, not {cfg.normal_share}")
    if cfg.epochs == 0 and cfg.init is None:
        raise TrainError("--epochs 0 keeps the slice network of --init: give --init CHECKPOINT")
    if cfg.amp and resolve_device(cfg.device).type != "cuda":  # before anything is read
        raise TrainError(f"--amp (mixed precision) needs a CUDA device; not {cfg.device}")
    layout = find_layout(cfg.data)  # a missing or malformed data folder fails before OUT is made
    _check_bleed_options(cfg, layout, spec)
    mix = Mix.parse(cfg.mix) if cfg.mix else None
    own_data = Path(cfg.data)
    if mix is not None:  # the site's data and the mixed-in slices, read as one folder
        find_layout(mix.folder)
        cfg = dataclasses.replace(cfg, data=out / MIXED_DIR)
    info, device = distributed.init(cfg.device)
    if cfg.amp and device.type != "cuda":
        raise TrainError(f"--amp (mixed precision) needs a CUDA device; this run is on {device}")
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp)
    if not info.is_main:  # one voice: rank 0 reports
        logging.getLogger().setLevel(logging.WARNING)
    torch.manual_seed(cfg.seed)
    try:
        model = build(cfg.architecture, in_channels=spec.channels).to(device)
    except IchnodeError as exc:
        raise TrainError(str(exc)) from None
    if cfg.init is not None:
        init_from(model, Path(cfg.init), cfg.architecture, spec, resize=cfg.init_resize)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # Cosine decay of the learning rate over the run: the late epochs settle instead of
    # swinging (seen on phantoms: validation AUC of rare subtypes jumped between epochs).
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    loss_fn = Loss(cfg.weighted_loss).to(device)
    if spec.pixel_mm is None:
        augmentation = (augmentation or AugmentConfig()) if cfg.augment else NO_AUGMENT
    else:
        augmentation = (
            (augmentation or HUAugmentConfig(blood_fade=cfg.blood_fade))
            if cfg.augment
            else NO_HU_AUGMENT
        )

    state: dict[str, Any] = {
        "epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "history": [], "skipped": []
    }  # fmt: skip
    if cfg.resume:
        state = load_resume_state(out / LAST_NAME)
        if state.get("fingerprint") != _fingerprint(cfg, spec):
            raise TrainError("--resume: the run in OUT was started with other data or options")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        log.info("resuming after epoch %d", state["epoch"])

    # Rank 0 builds the header index and writes split.json first; the others then read the
    # cached index and compute the same (seeded) split without writing it.
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)  # only once the options and data are checked
        if mix is not None:
            build_mixed(own_data, mix, out, cfg.seed)
        data = prepare_data(cfg, spec)
    distributed.barrier(info)
    if not info.is_main:
        data = prepare_data(cfg, spec, write=False)
    data.skipped.update(state["skipped"])
    train_ds = RSNADataset.from_table(
        data.layout, data.table, data.split["train"], spec, data.cache, data.index,
        masks=cfg.seg_weight > 0 or cfg.blood_fade > 0,
    )  # fmt: skip
    val_ds = RSNADataset.from_table(
        data.layout, data.table, data.split["val"], spec, data.cache, data.index
    )
    _check_bleed_options(cfg, data.layout, spec)
    faint = None
    if cfg.faint_share is not None:
        faint = faint_members(bleed_dprime(data.layout, train_ds.ids, data.cache.dir.parent))
        log.info("faint bleeds: %d slices get %g of each subtype's draws", len(faint),
                 cfg.faint_share)  # fmt: skip
    sampler: BalancedSampler | SeededRandomSampler | distributed.ShardedSampler = build_sampler(
        train_ds.labels, cfg.balanced, cfg.seed, cfg.normal_share, cfg.epoch_samples,
        faint=faint, faint_share=cfg.faint_share,
    )  # fmt: skip
    if info.enabled:
        sampler = distributed.ShardedSampler(sampler, info.rank, info.world_size)
    trained = torch.nn.parallel.DistributedDataParallel(model) if info.enabled else model
    train_loader = make_loader(train_ds, cfg.batch_size, cfg.workers, sampler)
    val_loader = make_loader(val_ds, cfg.batch_size, cfg.workers, None)
    if info.enabled and info.is_main:
        log.info("distributed: %d processes (%s)", info.world_size, device)
    segmented = trained_on_masks(cfg, data, model)
    log.info(
        "training %s on %d slices (val %d, test %d), %s, %d px, device %s%s",
        cfg.architecture,
        len(train_ds),
        len(val_ds),
        len(data.split["test"]),
        "balanced" if cfg.balanced else "natural sampling",
        spec.size,
        device,
        f", bleed maps (weight {cfg.seg_weight:g})" if segmented else "",
    )

    if cfg.epochs == 0 and info.is_main:  # the --init slice network as it is: epoch 0
        val_loss, val_loss_raw, aucs = _validate(model, val_loader, loss_fn, device, data.skipped)
        state["history"] = [{
            "epoch": 0, "train_loss": None, "val_loss": val_loss, "val_loss_raw": val_loss_raw,
            "val_auc": {k: metrics.finite_or_none(v) for k, v in aucs.items()},
        }]  # fmt: skip
        state["best_val_loss"], state["best_epoch"] = val_loss, 0
        save_checkpoint(
            out / BEST_NAME, Checkpoint(model=model, architecture=cfg.architecture, spec=spec)
        )
        (out / HISTORY_NAME).write_text(json.dumps(state["history"], indent=1))
        log.info("--epochs 0: the slice network of --init, val_loss=%.4f", val_loss)

    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        sampler.set_epoch(epoch)
        g = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        t0 = time.perf_counter()
        train_loss, seen = train_one_epoch(
            trained, train_loader, optimizer, loss_fn, device, augmentation, g, data.skipped,
            desc=f"epoch {epoch}/{cfg.epochs}", scaler=scaler, seg_weight=cfg.seg_weight,
        )  # fmt: skip
        train_s = time.perf_counter() - t0
        scheduler.step()
        if not info.is_main:  # rank 0 validates, saves and reports
            distributed.barrier(info)
            continue
        val_loss, val_loss_raw, aucs = _validate(model, val_loader, loss_fn, device, data.skipped)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_loss_raw": val_loss_raw,
            "val_auc": {k: metrics.finite_or_none(v) for k, v in aucs.items()},
            "train_images_per_s": seen / max(train_s, 1e-9),
            "seconds": time.perf_counter() - t0,
        }
        state["history"].append(row)
        auc_text = " ".join(f"{k[:6]}={v:.3f}" for k, v in aucs.items() if math.isfinite(v))
        log.info(
            "epoch %d/%d train_loss=%.4f val_loss=%.4f (raw %.4f) val_auc %s (%.0f img/s, %.0fs)",
            epoch, cfg.epochs, train_loss, val_loss, val_loss_raw, auc_text or "n/a",
            row["train_images_per_s"], row["seconds"],
        )  # fmt: skip
        if val_loss < state["best_val_loss"]:
            state["best_val_loss"], state["best_epoch"] = val_loss, epoch
            ckpt = Checkpoint(model=model, architecture=cfg.architecture, spec=spec)
            save_checkpoint(out / BEST_NAME, ckpt)
        state.update(
            epoch=epoch,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            rng=torch.get_rng_state(),
            fingerprint=_fingerprint(cfg, spec),
            skipped=sorted(data.skipped),
        )
        save_resume_state(out / LAST_NAME, state)
        (out / HISTORY_NAME).write_text(json.dumps(state["history"], indent=1))
        distributed.barrier(info)

    try:
        if info.is_main:
            return finalize(cfg, data, val_ds, state, augmentation, device)
        return out / BEST_NAME
    finally:
        distributed.barrier(info)
        distributed.shutdown(info)


def _validate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: Loss,
    device: torch.device,
    skipped: set[str],
) -> tuple[float, float, dict[str, float]]:
    """Calibrated and raw validation loss, and AUC per label, of ``model`` on ``loader``."""
    logits, y, _ = predict_logits(model, loader, device, skipped, desc="validate")
    aucs = metrics.aucs(y, 1.0 / (1.0 + np.exp(-logits)))
    return (
        _calibrated_val_loss(loss_fn, logits, y, device),
        _val_loss(loss_fn, logits, y, device),
        aucs,
    )


def finalize(
    cfg: TrainConfig,
    data: Prepared,
    val_ds: RSNADataset,
    state: dict,
    augmentation: AugmentConfig | HUAugmentConfig,
    device: torch.device,
) -> Path:
    """Reload the best weights; train the study model (second stage); fit calibration, slice
    and study thresholds on the calibration data (``--calibration-data``, else the validation
    split); write the summary into the checkpoint."""
    path = Path(cfg.out) / BEST_NAME
    if not path.is_file():
        raise TrainError(f"no checkpoint was saved in {cfg.out} (did every epoch fail?)")
    best = load_checkpoint(path, device=device)
    spec = best.spec
    cache_dir = Path(cfg.cache) if cfg.cache else Path(cfg.out) / "cache"

    def embedded(ds: RSNADataset, desc: str, augment=None, seed: int = 0) -> stage2.StudySet:
        g = torch.Generator().manual_seed(seed) if augment is not None else None
        loader = make_loader(ds, cfg.batch_size, cfg.workers, None)
        ids, emb, logits, y = stage2.embed_dataset(
            best.model, loader, spec, device, data.skipped, augment, g, desc=desc
        )
        return stage2.group_studies(index, ids, emb, logits, y)

    index = data.index
    val_set = embedded(val_ds, "embed val")
    calib_source = "validation split"
    if cfg.calibration_data is not None:
        calib = prepare_external(Path(cfg.calibration_data), spec, cache_dir)
        index = pd.concat([data.index, calib.index], ignore_index=True)
        calib_ds = RSNADataset.from_table(
            calib.layout, calib.table, calib.split["val"], spec, calib.cache, calib.index
        )
        calib_set = embedded(calib_ds, "embed calibration")
        calib_source = Path(cfg.calibration_data).resolve().name
    else:
        calib_set = val_set
    study_head: StudyHead | None = None
    refined, study_logits = None, None
    if cfg.study_model is not None:
        train_ds = RSNADataset.from_table(
            data.layout, data.table, data.split["train"], spec, data.cache, data.index
        )
        passes = [embedded(train_ds, "embed train")] + [
            embedded(train_ds, f"embed train (augmented {k})", augmentation, cfg.seed + k)
            for k in range(1, AUGMENTED_EMBEDDING_PASSES + 1)
        ]
        train_set = stage2.StudySet(
            *(sum(parts, []) for parts in zip(*(vars(p).values() for p in passes), strict=True))
        )
        clean = passes[0]
        model_s, history = stage2.train_study_model(
            train_set, val_set, cfg.study_model, cfg.study_epochs, cfg.seed, device
        )
        refined, study_logits = stage2.study_logits(model_s, calib_set, device)
    fitted = calibrate.fit_operating_point(calib_set.logits, calib_set.y, refined, study_logits)
    if cfg.study_model is not None:
        study_head = StudyHead(
            model=model_s,
            architecture=cfg.study_model,
            embed_dim=int(train_set.emb[0].shape[1]),
            hidden=model_s.gru.hidden_size,
            slice_calibration=fitted.slice_calibration,
            study_calibration=fitted.study_calibration,
            summary={
                "architecture": cfg.study_model,
                "epochs": cfg.study_epochs,
                "best_epoch": min(history, key=lambda r: r["val_loss"])["epoch"],
                "history": history,
                "n_train_studies": len(clean),
                "n_val_studies": len(val_set),
            },
        )

    train_labels = data.table.loc[data.split["train"], list(SUBTYPES)].to_numpy()
    best_row = next(r for r in state["history"] if r["epoch"] == state["best_epoch"])
    summary = {
        "architecture": cfg.architecture,
        "epochs": cfg.epochs,
        "best_epoch": state["best_epoch"],
        "val_loss": state["best_val_loss"],
        "val_auc": best_row["val_auc"],
        "calibration_data": calib_source,
        "calibration_weighted_log_loss": fitted.weighted_log_loss,
        "calibration_study_auc": fitted.study_auc,
        "n_calibration_studies": fitted.n_studies,
        "split_seed": cfg.seed,
        "n_train": len(data.split["train"]),
        "n_val": len(data.split["val"]),
        "n_test": len(data.split["test"]),
        "skipped_images": len(data.skipped),
        "train_prevalence": metrics.prevalence(train_labels).tolist(),
        "augmentation": augmentation.to_dict(),
        "windows": cfg.windows,
        "image_size": cfg.image_size,
        "pixel_mm": cfg.pixel_mm,
        "balanced": cfg.balanced,
        "normal_share": cfg.normal_share,
        "faint_share": cfg.faint_share,
        "epoch_samples": cfg.epoch_samples,
        "weighted_loss": cfg.weighted_loss,
        "seg_weight": cfg.seg_weight if trained_on_masks(cfg, data, best.model) else 0.0,
        "lr": cfg.lr,
        "lr_schedule": "cosine to 0 over the epochs",
        "amp": cfg.amp,
        "batch_size": cfg.batch_size,
        "dataset": Path(cfg.data).resolve().name,
        "study_model": cfg.study_model,
        "threshold_rule": THRESHOLD_RULE,
        "ichnode_version": _version(),
    }
    ckpt = Checkpoint(
        model=best.model,
        architecture=cfg.architecture,
        spec=spec,
        thresholds=fitted.thresholds,
        calibration=fitted.calibration,
        summary=summary,
        study=study_head,
        study_thresholds=fitted.study_thresholds,
    )
    sha = save_checkpoint(path, ckpt)
    if data.skipped:
        log.warning("skipped %d unreadable images", len(data.skipped))
    log.info(
        "best epoch %d (val_loss %.4f); on %s: weighted log loss %.4f, study AUC(any) %s; %s (%s)",
        state["best_epoch"],
        state["best_val_loss"],
        calib_source,
        summary["calibration_weighted_log_loss"],
        summary["calibration_study_auc"].get("any"),
        path,
        sha[:12],
    )
    return path
