"""Grad-CAM saliency on the last convolutional block of a checkpoint's model.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017: weight each channel of the last conv block's activation by the
spatial mean of the gradient of the class logit, sum, ReLU, upsample, scale to [0, 1].

Both registered architectures keep their convolutional trunk in ``model.features`` (an
``nn.Sequential``); its last module is hooked. The hook is removed and no parameter gradient is
left behind (``torch.autograd.grad`` on the activation only, never ``backward``).

A forward hook sees every forward pass of its module, from any thread; so Grad-CAMs run one at
a time in a process (a lock), or two of them on one checkpoint would read each other's
activations.

:func:`head_mask` and :func:`mask_to_head` confine a map to the head before it is drawn: a
Grad-CAM map of a small network spreads over the air around the skull, where it explains
nothing and hides the outline of the head.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ichnode.imaging import (
    BODY_HU,
    input_to_display,
    pixel_spacing,
    preprocess_planes,
    read_neighbours,
    resize,
    to_hu,
)
from ichnode.model import Checkpoint
from ichnode.report.findings import ReportError
from ichnode.subtypes import ANY, SUBTYPES

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ichnode.inference import Predictor

_ONE_AT_A_TIME = threading.Lock()


def target_layer(model: nn.Module) -> nn.Module:
    """The module Grad-CAM hooks: the last module of ``model.features``."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential) or len(features) == 0:
        raise ReportError(
            f"{type(model).__name__} has no non-empty 'features' nn.Sequential for Grad-CAM"
        )
    return features[-1]


def grad_cam(ckpt: Checkpoint, x: np.ndarray, subtype: str = ANY) -> np.ndarray:
    """Grad-CAM map ``float32 (S, S)`` in [0, 1] of ``subtype`` for one preprocessed image.

    ``x`` is the model input ``(C, S, S)`` as :func:`ichnode.imaging.preprocess` returns it.
    Works on any device the model is on; the model is left in eval mode with no hooks and no
    ``.grad`` set. An all-zero map means no positive evidence for ``subtype``.
    """
    if not isinstance(ckpt, Checkpoint):
        raise ReportError(f"ckpt must be a Checkpoint, got {type(ckpt).__name__}")
    if subtype not in SUBTYPES:
        raise ReportError(f"subtype {subtype!r} is not one of {', '.join(SUBTYPES)}")
    arr = np.asarray(x)
    channels = ckpt.spec.channels
    if arr.ndim != 3 or arr.shape[0] != channels or arr.shape[1] != arr.shape[2]:
        raise ReportError(f"x must have shape ({channels}, S, S), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ReportError("x contains NaN or infinite values")

    with _ONE_AT_A_TIME:
        return _grad_cam(ckpt.model, arr, subtype)


def _grad_cam(model: nn.Module, arr: np.ndarray, subtype: str) -> np.ndarray:
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        captured.append(output)

    handle = target_layer(model).register_forward_hook(keep)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            inp = torch.tensor(arr, dtype=param.dtype, device=param.device)[None]
            # Gradients must reach the activation even for frozen weights.
            inp.requires_grad_(True)
            logits = model(inp)
            score = logits[0, SUBTYPES.index(subtype)]
            (grads,) = torch.autograd.grad(score, captured[-1])
            act = captured[-1].detach()
            weights = grads.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((weights * act).sum(dim=1, keepdim=True))
            cam = F.interpolate(
                cam.float(), size=arr.shape[1:], mode="bilinear", align_corners=False
            )[0, 0]
    finally:
        handle.remove()
        captured.clear()
        model.train(was_training)
    top = float(cam.max())
    if top <= 0.0 or not np.isfinite(top):
        return np.zeros(arr.shape[1:], dtype=np.float32)
    return (cam / top).clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)


def head_mask(hu: np.ndarray, body_hu: float = BODY_HU) -> np.ndarray:
    """``bool`` mask of the head in a 2-D HU image: the largest connected region above
    ``body_hu`` (default -300 HU: skin, bone, brain; not air), with its holes filled (the
    ventricles, the sinuses. air). All False when nothing is above ``body_hu``."""
    above = np.asarray(hu) > body_hu
    labels, count = ndimage.label(above)
    if count == 0:
        return np.zeros(above.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(largest)


#: Heat map colours and the opacity at saliency 1 (the summary image and the web overlay).
HEATMAP = "jet"
HEATMAP_MAX_ALPHA = 0.5


def overlay(gray: np.ndarray, saliency: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """The grey square ``gray`` (display of ``hu``, in [0, 1]) as RGB with the saliency map
    (any resolution, [0, 1]) blended in as a heat map, confined to the head."""
    from matplotlib import colormaps

    side = gray.shape[0]
    heat = resize(np.clip(saliency, 0.0, 1.0).astype(np.float32)[None], side)[0]
    heat = mask_to_head(heat, hu)  # no heat over the air around the head
    colour = colormaps[HEATMAP](heat)[..., :3]
    alpha = (HEATMAP_MAX_ALPHA * heat)[..., None]
    rgb = np.repeat(gray[..., None], 3, axis=2)
    return (1.0 - alpha) * rgb + alpha * colour


def mask_to_head(heat: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """``heat`` (square, the padded-square display of ``hu``) times the head mask of ``hu``
    resized to it: zero outside the head, unchanged well inside it (float32)."""
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2 or heat.shape[0] != heat.shape[1]:
        raise ReportError(f"heat must be a square 2-D map, got shape {heat.shape}")
    mask = resize(head_mask(hu).astype(np.float32)[None], heat.shape[0])[0]
    return heat * mask


class SaliencyModel:
    """The node's one private CPU copy of the served checkpoint, for Grad-CAM.

    Grad-CAM hooks the model and switches it to eval mode, which must not race the workers'
    forward passes on the served one; the reports and the web's overlay share this copy (the
    Grad-CAMs of a process run one at a time anyway). It is made on first use and again when
    the served model was swapped (:mod:`ichnode.node.reload`).
    """

    def __init__(self, predictor: Predictor | None) -> None:
        self._predictor = predictor
        self._copy: Checkpoint | None = None
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return self._predictor is not None

    @property
    def context(self) -> int:
        """Neighbouring slices on each side the model reads (0: 2-D)."""
        return self._predictor.checkpoint.spec.context if self._predictor else 0

    def checkpoint(self) -> Checkpoint:
        """The CPU copy of the checkpoint served now."""
        if self._predictor is None:
            raise ReportError("no model loaded: saliency is not available")
        with self._lock:
            served = self._predictor.checkpoint
            if self._copy is None or self._copy.model_id != served.model_id:
                model = copy.deepcopy(served.model).to("cpu")
                self._copy = dataclasses.replace(served, model=model)
            return self._copy

    def cam(
        self, ds: Dataset, subtype: str = ANY, neighbour_paths: Sequence[str | None] = ()
    ) -> np.ndarray:
        """Grad-CAM map of ``subtype`` over the displayed slice of ``ds`` (its padded square,
        in [0, 1]): computed on the model input (with the stored neighbours of a 2.5-D model,
        lowest z first), mapped back to the slice's pixels."""
        ckpt = self.checkpoint()
        neighbours = read_neighbours(neighbour_paths)
        cam = grad_cam(ckpt, preprocess_planes(ds, neighbours, ckpt.spec), subtype)
        return input_to_display(cam, to_hu(ds), pixel_spacing(ds), ckpt.spec)
