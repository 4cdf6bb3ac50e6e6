"""Compute device selection: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""

from __future__ import annotations

import torch

from ichnode.errors import DeviceError


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for ``name``; a device that is not present is a :class:`DeviceError`."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but no CUDA device is available")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} requested but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist"
            )
        return dev
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("device 'mps' requested but Apple MPS is not available")
        return torch.device("mps")
    raise DeviceError(f"unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps")
