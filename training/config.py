"""The options of ``ichnode train``: one dataclass, from which the command's options are made.

Each field carries its flag and help text; :func:`cli_parameters` turns the fields into typer
parameters, so a new option is written once, here (torchvision's references spell theirs
twice: the argparse parser and the code that reads it). This module imports no torch, so
``ichnode --help`` stays fast.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

#: Written for "no value" in options that accept one (``--pixel-mm none``).
NONE = "none"
#: ``--arch auto``: the architecture of the ``--init`` checkpoint, else the default below.
AUTO = "auto"
DEFAULT_ARCHITECTURE = "ichnet2"


def option(flag: str, help: str, *, minimum: float | None = None, nullable: bool = False) -> dict:
    """A field's metadata: its command-line flag, help, lower bound and whether ``none`` is
    accepted (such options are read as text and converted by :func:`from_cli`)."""
    return {"flag": flag, "help": help, "min": minimum, "nullable": nullable}


@dataclass
class TrainConfig:
    """Options of ``ichnode train`` (the same names and defaults)."""

    data: Path = field(metadata=option("--data", "RSNA-layout folder (CSV + stage_2_train/)."))
    out: Path = field(metadata=option("--out", "Run folder: checkpoints, split, log."))
    architecture: str = field(
        default=AUTO,
        metadata=option(
            "--arch",
            "Registered slice architecture; 'auto': the --init checkpoint's, else "
            f"{DEFAULT_ARCHITECTURE}.",
        ),
    )
    epochs: int = field(
        default=5,
        metadata=option(
            "--epochs",
            "Epochs (0 with --init: keep that slice network, fit only the study model and the "
            "calibration).",
            minimum=0,
        ),
    )
    batch_size: int = field(default=32, metadata=option("--batch-size", "Batch.", minimum=1))
    lr: float = field(default=1e-3, metadata=option("--lr", "Adam learning rate."))
    image_size: int = field(
        default=256, metadata=option("--image-size", "Input rows and columns.", minimum=32)
    )
    pixel_mm: float | None = field(
        default=0.9,
        metadata=option(
            "--pixel-mm",
            "Millimetres per input pixel (resampled from PixelSpacing, centred on the head), "
            "or 'none' for the legacy whole-matrix resize.",
            nullable=True,
        ),
    )
    context: int = field(
        default=0,
        metadata=option(
            "--context",
            "2.5-D input: neighbouring slices on each side (by z within the study) as extra "
            "input planes; 0 for one slice.",
            minimum=0,
        ),
    )
    mirror: bool = field(
        default=False,
        metadata=option(
            "--mirror",
            "Left-right difference channels: each window also as the slice minus its mirror "
            "image across the head's midline (a unilateral bleed against symmetric anatomy).",
        ),
    )
    windows: str = field(
        default="stack",
        metadata=option("--windows", "'stack', 'single', or names/CENTER/WIDTH, comma-separated."),
    )
    device: str = field(default="auto", metadata=option("--device", "auto, cpu, cuda[:N], mps."))
    workers: int = field(
        default=0, metadata=option("--workers", "Data loader processes.", minimum=0)
    )
    seed: int = field(default=0, metadata=option("--seed", "Split, sampling and init seed."))
    balanced: bool = field(
        default=True, metadata=option("--balanced/--no-balanced", "Balanced sampling per subtype.")
    )
    weighted_loss: bool = field(
        default=False,
        metadata=option("--weighted-loss", "Weight the loss by the competition weights."),
    )
    seg_weight: float = field(
        default=1.0,
        metadata=option(
            "--seg-weight",
            "Weight of the per-pixel loss on the bleed maps of phantom folders "
            "(phantom_masks/), for architectures with a segmentation head; 0 turns it off.",
            minimum=0,
        ),
    )
    augment: bool = field(
        default=True,
        metadata=option(
            "--augment/--no-augment", "Augment (in HU: densities, noise, kernel, pose)."
        ),
    )
    cache: Path | None = field(
        default=None, metadata=option("--cache", "Preprocessed-array cache (default OUT/cache).")
    )
    resume: bool = field(default=False, metadata=option("--resume", "Continue from OUT/last.pt."))
    limit: int | None = field(
        default=None,
        metadata=option("--limit", "Use at most this many slices (quick runs).", minimum=1),
    )
    amp: bool = field(
        default=False, metadata=option("--amp", "Mixed precision (float16 autocast); CUDA only.")
    )
    normal_share: float | None = field(
        default=0.4,
        metadata=option(
            "--normal-share",
            "Share of balanced draws for normal slices, or 'none' (one group in six, the "
            "seed's recipe).",
            nullable=True,
        ),
    )
    faint_share: float | None = field(
        default=None,
        metadata=option(
            "--faint-share",
            "Share of each subtype's balanced draws taken from its faintest third of slices "
            "(by d' from the bleed maps: phantom folders only), or 'none'.",
            nullable=True,
        ),
    )
    blood_fade: float = field(
        default=0.0,
        metadata=option(
            "--blood-fade",
            "Augmentation with the bleed maps (phantom folders only): in half the samples the "
            "blood's contrast over the tissue around it x uniform in [1 - x, 1]; 0 turns it off.",
            minimum=0,
        ),
    )
    epoch_samples: int | None = field(
        default=None,
        metadata=option("--epoch-samples", "Balanced draws per epoch (default: all).", minimum=1),
    )
    study_model: str | None = field(
        default="bigru",
        metadata=option(
            "--study-model",
            "Study architecture (second stage), or 'none' for a slice-only checkpoint.",
            nullable=True,
        ),
    )
    study_epochs: int = field(
        default=40, metadata=option("--study-epochs", "Study-model epochs.", minimum=1)
    )
    init: Path | None = field(
        default=None,
        metadata=option(
            "--init",
            "Fine-tune: start from this checkpoint's slice weights (its architecture unless "
            "--arch names another, the same preprocessing options, refused otherwise; a "
            "checkpoint without --mirror may start a --mirror run, the new channels' first "
            "weights at zero; an ichnet2 may start an ichnet2max run, or an ichseg run from its "
            "trunk).",
        ),
    )
    init_resize: bool = field(
        default=False,
        metadata=option(
            "--init-resize",
            "With --init: accept a checkpoint trained at another --image-size and --pixel-mm "
            "(fine-tuning at a higher resolution; the windows and --context must still match).",
        ),
    )
    mix: str | None = field(
        default=None,
        metadata=option(
            "--mix",
            "DIR:FRACTION: add slices of another RSNA-layout folder (a phantom set) to the "
            "training split, FRACTION of it (0 < FRACTION < 1).",
        ),
    )
    calibration_data: Path | None = field(
        default=None,
        metadata=option(
            "--calibration-data",
            "RSNA-layout folder to calibrate and choose thresholds on (default: the "
            "validation split).",
        ),
    )


def _base_type(tp: Any) -> type:
    """``float | None`` → float (fields are declared with real types, not strings)."""
    args = [a for a in getattr(tp, "__args__", ()) if a is not type(None)]
    return args[0] if args else tp


def cli_parameters() -> list[inspect.Parameter]:
    """Typer parameters (``Annotated[type, typer.Option(...)]``) for every field."""
    import typing

    import typer

    hints = typing.get_type_hints(TrainConfig)
    params = []
    for f in fields(TrainConfig):
        meta = f.metadata
        kind = str if meta["nullable"] else hints[f.name]
        kwargs: dict[str, Any] = {"help": meta["help"]}
        if meta["min"] is not None:
            kwargs["min"] = meta["min"]
        default: Any = f.default
        if f.default is MISSING:
            default = ...
        elif meta["nullable"]:
            default = NONE if f.default is None else str(f.default)
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[kind, typer.Option(*meta["flag"].split(","), **kwargs)],
            )
        )
    return params


def from_cli(values: dict[str, Any], bad_parameter: Callable[[str, str], Exception]) -> TrainConfig:
    """A :class:`TrainConfig` from the parsed options; ``none`` and numbers of nullable
    options are converted here (``bad_parameter(message, flag)`` makes the usage error)."""
    import typing

    hints = typing.get_type_hints(TrainConfig)
    out = dict(values)
    for f in fields(TrainConfig):
        if not f.metadata["nullable"]:
            continue
        text = str(out[f.name]).strip()
        if text.lower() == NONE:
            out[f.name] = None
            continue
        kind = _base_type(hints[f.name])
        try:
            out[f.name] = kind(text)
        except ValueError:
            message = f"{text!r} is not a {kind.__name__} nor 'none'"
            raise bad_parameter(message, f.metadata["flag"]) from None
    return TrainConfig(**out)
