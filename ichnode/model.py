"""Model architectures behind one registry, and the checkpoint format.

A checkpoint is one ``.safetensors`` file: the weights as tensors, and in its metadata header a
JSON document (key ``ichnode``) with the architecture, the preprocessing spec, the label order,
per-subtype calibration and thresholds, and the training summary. Loading never unpickles: a
file that is not safetensors is refused. The sha256 of the weights checks the file; the model's
identity (:attr:`Checkpoint.model_id`) digests the weights and the operating point together.

A checkpoint may also carry a study model (:mod:`ichnode.study`): its weights are prefixed
``study.``, its spec and calibration live under the metadata key ``study``, and the study-level
thresholds under ``study_thresholds``. A slice-only checkpoint stays valid (its study thresholds
are its slice thresholds, applied to the maximum over the slices).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ichnode.errors import CheckpointError
from ichnode.imaging import PreprocessSpec
from ichnode.study import StudyHead, build_study
from ichnode.subtypes import SUBTYPES

FORMAT_VERSION = 1
METADATA_KEY = "ichnode"
#: Permissions of a written checkpoint (before the umask), like any other file of a run.
CHECKPOINT_MODE = 0o666
#: Prefix of the study model's tensors in a checkpoint.
STUDY_PREFIX = "study."

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}

#: The default architecture for ``ichnode train`` and the shipped demo model.
DEFAULT_ARCHITECTURE = "ichnet"


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make an architecture constructible by name."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        ARCHITECTURES[name] = cls
        return cls

    return wrap


def build(name: str, in_channels: int = 3, num_classes: int = len(SUBTYPES)) -> nn.Module:
    """A fresh model of a registered architecture."""
    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise CheckpointError(f"unknown architecture {name!r}; known: {known}") from None
    return factory(in_channels=in_channels, num_classes=num_classes)


@register("simplecnn")
class SimpleCNN(nn.Module):
    """The seed network: conv 3→16 (3×3), conv 16→32, two fully connected layers to 6 logits.

    Each conv is followed by ReLU and 2×2 max pooling; an adaptive average pool to 8×8 before
    the fully connected layers keeps the checkpoint small for any input size.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 6, hidden: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d((8, 8))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 8 * 8, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def _conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    """Conv (odd kernels padded to keep the size, even ones as patches) + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(
            cin, cout, kernel, stride=stride, padding=kernel // 2 if kernel % 2 else 0, bias=False
        ),  # fmt: skip
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _stages(chans: list[int]) -> list[nn.Module]:
    """One stage per channel step: a strided conv-BN-ReLU, then one at stride 1."""
    layers: list[nn.Module] = []
    for cin, cout in zip(chans[:-1], chans[1:], strict=True):
        layers += [_conv_bn(cin, cout, stride=2), _conv_bn(cout, cout)]
    return layers


class _PooledNet(nn.Module):
    """``features`` → global average pooling → dropout + linear head (``classifier``)."""

    def _build(self, layers: list[nn.Module], width: int, num_classes: int) -> None:
        self.features = nn.Sequential(*layers)
        self.pool: nn.Module = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(width, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@register("ichnet")
class ICHNet(_PooledNet):
    """A small deeper CNN with batch norm and global pooling (~1 M parameters).

    A stride-2 stem, four stages of two conv-BN-ReLU layers (the first of each stage strided),
    global average pooling and a dropout + linear head. ``features`` ends in the last conv
    block, which Grad-CAM uses for saliency.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 6, width: int = 24) -> None:
        super().__init__()
        chans = [width, width * 2, width * 4, width * 8, width * 12]
        self._build([_conv_bn(in_channels, chans[0], stride=2), *_stages(chans)], chans[-1],
                    num_classes)  # fmt: skip


@register("ichnet2")
class ICHNet2(_PooledNet):
    """The default slice network for 256 px inputs at ~0.9 mm per pixel (~1.2 M parameters).

    A learned 4 x 4 patch stem (stride 4) keeps what a thin bleed looks like at full
    resolution in its channels, where averaging the input down would blur a 2-3 pixel rim
    away, and costs about what a 128 px network does; then four stages of two conv-BN-ReLU
    layers (the first of stages 2-4 strided), global average pooling and a dropout + linear
    head. ``features`` ends in the last conv block (Grad-CAM uses it).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 6, width: int = 32) -> None:
        super().__init__()
        chans = [width, width * 2, width * 4, width * 8]
        stem = [_conv_bn(in_channels, chans[0], stride=4, kernel=4), _conv_bn(chans[0], chans[0])]
        self._build([*stem, *_stages(chans)], chans[-1], num_classes)


class AvgMaxPool(nn.Module):
    """Global average and maximum of each channel, concatenated: the maximum keeps a bleed
    that covers a few cells of the map, which the average alone dilutes away."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


@register("ichnet2max")
class ICHNet2Max(ICHNet2):
    """ichnet2 whose head sees the average **and the maximum** of each channel over the map
    (:class:`AvgMaxPool`, ~1.2 M parameters): a faint bleed that lights a few cells of the
    8 x 8 map is kept by the maximum where the average dilutes it. ``ichnode train --arch
    ichnet2max --init`` accepts an ichnet2 checkpoint: the trunk is copied and the head is
    widened with zero weights for the maxima, so training starts from that model's function.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 6, width: int = 32) -> None:
        super().__init__(in_channels, num_classes, width)
        self.pool = AvgMaxPool()
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * width * 8, num_classes)
        )


class _Pyramid(nn.Module):
    """ichnet2's trunk (4 x 4 patch stem, three strided stages) and a top-down path that
    brings the deeper stages back to stride 8 (a feature pyramid): the map keeps both what a
    few millimetres of blood look like and the context that tells it from the falx, the
    tentorium or a venous sinus."""

    def __init__(self, in_channels: int, width: int, out: int) -> None:
        super().__init__()
        c = [width, width * 2, width * 4, width * 8]
        self.stem = nn.Sequential(_conv_bn(in_channels, c[0], stride=4, kernel=4),
                                  _conv_bn(c[0], c[0]))  # fmt: skip
        self.stages = nn.ModuleList(
            nn.Sequential(*_stages([cin, cout])) for cin, cout in zip(c[:-1], c[1:], strict=True)
        )
        self.lateral = nn.ModuleList(nn.Conv2d(ch, out, 1) for ch in c[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = []
        f = self.stem(x)
        for stage in self.stages:
            f = stage(f)
            maps.append(f)
        p = self.lateral[-1](maps[-1])
        for lateral, m in zip(self.lateral[-2::-1], maps[-2::-1], strict=True):
            p = lateral(m) + F.interpolate(p, size=m.shape[-2:], mode="nearest")
        return p


@register("ichseg")
class ICHSeg(nn.Module):
    """The slice network with a segmentation head (~1.3 M parameters), for 256 px at 0.9 mm.

    ``features`` (the :class:`_Pyramid` and a fusing conv block, which Grad-CAM uses) gives
    a stride-8 map; ``pool`` (average and maximum) and ``classifier`` give the six slice
    logits. ``seg_head`` gives one logit map per label over the same map: trained on the
    bleed maps of phantoms (``ichnode train``'s per-pixel loss), it teaches the trunk where
    blood is; serving uses only the slice logits (and the embedding, :func:`embed`).
    """

    #: Tells the training loop this architecture has a segmentation head.
    segments = True

    def __init__(
        self, in_channels: int = 3, num_classes: int = 6, width: int = 32, fpn: int = 64
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(_Pyramid(in_channels, width, fpn), _conv_bn(fpn, fpn))
        self.pool = AvgMaxPool()
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * fpn, num_classes))
        self.seg_head = nn.Conv2d(fpn, num_classes, 1)

    def forward(
        self, x: torch.Tensor, segment: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Slice logits ``(N, 6)``; with ``segment``, also the logit maps ``(N, 6, h, w)``."""
        f = self.features(x)
        logits = self.classifier(self.pool(f))
        return (logits, self.seg_head(f)) if segment else logits


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The slice embedding: the input of the classifier's last linear layer.

    Every registered architecture ends in ``features`` → ``pool`` → ``classifier`` (a
    Sequential whose last layer is linear), so ``head(model)(embed(model, x)) == model(x)``.
    """
    classifier = cast(nn.Sequential, model.classifier)
    pool = cast(nn.Module, model.pool)
    return classifier[:-1](pool(cast(nn.Module, model.features)(x)))


def head(model: nn.Module) -> nn.Module:
    """The last linear layer: slice logits from :func:`embed`'s embeddings."""
    return cast(nn.Sequential, model.classifier)[-1]


@dataclass
class Calibration:
    """Per-subtype Platt scaling of logits: ``p = sigmoid(scale * logit + bias)``.

    Fitted on the validation split at its natural prevalence, it also undoes the prior shift
    that balanced sampling puts into the raw outputs.
    """

    scale: list[float] = field(default_factory=lambda: [1.0] * len(SUBTYPES))
    bias: list[float] = field(default_factory=lambda: [0.0] * len(SUBTYPES))

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities for ``(..., 6)`` logits, on their device and dtype: the
        one place the formula is written."""
        scale = torch.tensor(self.scale, dtype=logits.dtype, device=logits.device)
        bias = torch.tensor(self.bias, dtype=logits.dtype, device=logits.device)
        return torch.sigmoid(logits * scale + bias)

    def apply_numpy(self, logits: np.ndarray) -> np.ndarray:
        """:meth:`apply` for a numpy array (computed in float64)."""
        return self.apply(torch.from_numpy(np.asarray(logits, dtype=np.float64))).numpy()

    def to_dict(self) -> dict[str, list[float]]:
        return {"scale": list(self.scale), "bias": list(self.bias)}


@dataclass
class Checkpoint:
    """A loaded model with everything needed to serve it faithfully."""

    model: nn.Module
    architecture: str
    spec: PreprocessSpec
    labels: tuple[str, ...] = SUBTYPES
    thresholds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SUBTYPES, 0.5))
    calibration: Calibration = field(default_factory=Calibration)
    summary: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    #: The study model, or None (study probability = max over slices).
    study: StudyHead | None = None
    #: Thresholds on the study-level probabilities; None: the slice thresholds.
    study_thresholds: dict[str, float] | None = None
    #: :func:`identity_sha256` of the weights and the operating point, set on save and load.
    identity: str = ""

    @property
    def decision_thresholds(self) -> dict[str, float]:
        """The thresholds the study flag is decided with (:func:`ichnode.triage.decide`)."""
        return dict(self.study_thresholds or self.thresholds)

    @property
    def model_id(self) -> str:
        """Short identity used in DB rows, logs and reports: ``<architecture>-<12 hex>``.

        The digest covers the weights and everything that turns their logits into a flag
        (preprocessing, calibration, slice and study thresholds, the study model's spec), so a
        recalibrated checkpoint -- the same weights at another operating point -- is another
        model: the node swaps it in and its results are told apart. Like ``sha256`` it is
        fixed when the checkpoint is saved or loaded."""
        digest = self.identity or identity_sha256(self.sha256, self.metadata())
        return f"{self.architecture}-{digest[:12]}"

    def metadata(self) -> dict[str, Any]:
        return (
            {
                "format": FORMAT_VERSION,
                "architecture": self.architecture,
                "preprocessing": self.spec.to_dict(),
                "labels": list(self.labels),
                "thresholds": self.thresholds,
                "calibration": self.calibration.to_dict(),
                "summary": self.summary,
            }
            | ({"study": self.study.metadata()} if self.study is not None else {})
            | ({"study_thresholds": self.study_thresholds} if self.study_thresholds else {})
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor of the checkpoint: the slice network's, and the study model's
        prefixed with :data:`STUDY_PREFIX`."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        if self.study is not None:
            for k, v in self.study.model.state_dict().items():
                state[STUDY_PREFIX + k] = v.detach().cpu().contiguous()
        return state


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the weights (names, shapes, dtypes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(
            t.numpy().tobytes()
            if t.dtype != torch.bfloat16
            else t.view(torch.int16).numpy().tobytes()
        )
    return digest.hexdigest()


def identity_sha256(weights_sha256: str, metadata: dict[str, Any]) -> str:
    """sha256 over the weights' sha256 and the serving metadata (all but the summary)."""
    serving = {k: v for k, v in metadata.items() if k not in ("summary", "sha256")}
    digest = hashlib.sha256(weights_sha256.encode())
    digest.update(json.dumps(serving, sort_keys=True).encode())
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> str:
    """Write ``ckpt`` as safetensors + JSON metadata; returns (and sets) the weights' sha256."""
    state = ckpt.state_dict()
    ckpt.sha256 = weights_sha256(state)
    meta = ckpt.metadata() | {"sha256": ckpt.sha256}
    ckpt.identity = identity_sha256(ckpt.sha256, meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    os.chmod(tmp, CHECKPOINT_MODE & ~_umask())  # safetensors writes 0600; a model is shared
    tmp.replace(path)
    return ckpt.sha256


def _finite(values: list[Any], what: str) -> list[float]:
    out = [float(v) for v in values]
    if len(out) != len(SUBTYPES) or not all(math.isfinite(v) for v in out):
        raise CheckpointError(f"checkpoint {what} must be {len(SUBTYPES)} finite numbers")
    return out


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint without executing code; clear errors for anything unexpected."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw_meta = (f.metadata() or {}).get(METADATA_KEY)
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path.name} is not an ichnode checkpoint (safetensors expected; pickled "
            f"checkpoints are refused because loading them can run code): {exc}"
        ) from None
    if raw_meta is None:
        raise CheckpointError(f"{path.name} has no ichnode metadata")
    try:
        meta = json.loads(raw_meta)
        labels = tuple(meta["labels"])
        if labels != SUBTYPES:
            raise CheckpointError(
                f"{path.name} predicts labels {list(labels)}, but this ichnode expects "
                f"{list(SUBTYPES)}"
            )
        spec = PreprocessSpec.from_dict(meta["preprocessing"])
        architecture = str(meta["architecture"])
        thresholds = {name: float(meta["thresholds"][name]) for name in SUBTYPES}
        calibration = Calibration(
            scale=_finite(meta["calibration"]["scale"], "calibration scale"),
            bias=_finite(meta["calibration"]["bias"], "calibration bias"),
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path.name} has malformed ichnode metadata: {exc!r}") from None
    sha = weights_sha256(state)
    if meta.get("sha256") and meta["sha256"] != sha:
        raise CheckpointError(f"{path.name}: weights do not match their recorded sha256")
    slice_state = {k: v for k, v in state.items() if not k.startswith(STUDY_PREFIX)}
    study_state = {
        k[len(STUDY_PREFIX) :]: v for k, v in state.items() if k.startswith(STUDY_PREFIX)
    }
    model = build(architecture, in_channels=spec.channels)
    _load_weights(model, slice_state, path, architecture)
    model.eval().to(device)
    study, study_thresholds = _load_study(meta, study_state, path, device)
    return Checkpoint(
        model=model,
        architecture=architecture,
        spec=spec,
        labels=labels,
        thresholds=thresholds,
        calibration=calibration,
        summary=dict(meta.get("summary", {})),
        sha256=sha,
        study=study,
        study_thresholds=study_thresholds,
        identity=identity_sha256(sha, meta),
    )


def _load_weights(
    model: nn.Module, state: dict[str, torch.Tensor], path: Path, architecture: str
) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path.name}: weights do not fit {architecture}: {first}") from None


def _calibration(data: dict[str, Any], what: str) -> Calibration:
    return Calibration(
        scale=_finite(data["scale"], f"{what} scale"), bias=_finite(data["bias"], f"{what} bias")
    )


def _load_study(
    meta: dict[str, Any],
    state: dict[str, torch.Tensor],
    path: Path,
    device: str | torch.device,
) -> tuple[StudyHead | None, dict[str, float] | None]:
    """The study model and study thresholds of a checkpoint's metadata (None, None if absent)."""
    try:
        raw_thr = meta.get("study_thresholds")
        study_thresholds = (
            {name: float(raw_thr[name]) for name in SUBTYPES} if raw_thr is not None else None
        )
        info = meta.get("study")
        if info is None:
            if state:
                raise CheckpointError(f"{path.name} has study weights but no study metadata")
            return None, study_thresholds
        architecture = str(info["architecture"])
        embed_dim, hidden = int(info["embed_dim"]), int(info["hidden"])
        head = StudyHead(
            model=build_study(architecture, embed_dim, hidden),
            architecture=architecture,
            embed_dim=embed_dim,
            hidden=hidden,
            slice_calibration=_calibration(info["slice_calibration"], "study slice calibration"),
            study_calibration=_calibration(info["study_calibration"], "study calibration"),
            summary=dict(info.get("summary", {})),
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path.name} has malformed study metadata: {exc!r}") from None
    _load_weights(head.model, state, path, f"study model {architecture}")
    head.model.eval().to(device)
    return head, study_thresholds


def demo_model_path() -> Path:
    """The demo checkpoint shipped inside the package."""
    return Path(str(resources.files("ichnode") / "models" / "demo.safetensors"))


@torch.inference_mode()
def predict_proba(ckpt: Checkpoint, batch: np.ndarray | torch.Tensor) -> np.ndarray:
    """Calibrated probabilities ``(N, 6)`` for a preprocessed batch ``(N, C, S, S)``."""
    ckpt.model.eval()  # batch norm and dropout in inference mode, whatever the caller did
    param = next(ckpt.model.parameters())
    x = torch.as_tensor(batch).to(device=param.device, dtype=param.dtype)
    return ckpt.calibration.apply(ckpt.model(x).float()).cpu().numpy()
