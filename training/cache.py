"""Preprocessed-array cache: decode each DICOM once, read float16 ``.npy`` files afterwards.

Arrays live under ``ROOT/pre-<key>/<image id>.npy`` (a phantom slice's bleed map, cut to the
same view, beside it as ``<image id>.mask.npy``) where ``key`` hashes the preprocessing spec,
so a run with another image size or other windows never reads stale arrays. Writes are atomic
(temp file + rename), so data-loader worker processes can fill the cache concurrently. Images
that cannot be decoded get a ``.bad`` marker so later epochs skip them without retrying.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from ichnode.imaging import PreprocessSpec

CACHE_DTYPE = np.float16


def _per_image(spec: PreprocessSpec) -> PreprocessSpec:
    """The part of ``spec`` a cached HU plane depends on: context slices are other images'
    planes and mirror channels are computed from the plane, so neither changes the cache."""
    return replace(spec, context=0, mirror=False)


def spec_key(spec: PreprocessSpec) -> str:
    """A short stable hash of the preprocessing spec's per-image part (:func:`_per_image`: a
    2.5-D or mirror spec shares its 2-D twin's cache)."""
    text = json.dumps(_per_image(spec).to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PreprocessCache:
    """Float16 arrays of preprocessed slices, keyed by image id and spec."""

    def __init__(self, root: Path, spec: PreprocessSpec) -> None:
        self.dir = Path(root) / f"pre-{spec_key(spec)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        spec_file = self.dir / "spec.json"
        if not spec_file.exists():
            _atomic_write(spec_file, json.dumps(_per_image(spec).to_dict()).encode())

    def _path(self, image_id: str, suffix: str) -> Path:
        return self.dir / f"{image_id}{suffix}"

    def load(self, image_id: str) -> np.ndarray | None:
        """The cached float32 array, or None when not cached yet."""
        try:
            return np.load(self._path(image_id, ".npy")).astype(np.float32)
        except (FileNotFoundError, ValueError, OSError):
            return None

    def save(self, image_id: str, arr: np.ndarray) -> None:
        _atomic_save(self._path(image_id, ".npy"), arr.astype(CACHE_DTYPE))

    def load_mask(self, image_id: str) -> np.ndarray | None:
        """The cached bleed map (uint8) of a phantom slice, or None."""
        try:
            return np.load(self._path(image_id, ".mask.npy"))
        except (FileNotFoundError, ValueError, OSError):
            return None

    def save_mask(self, image_id: str, mask: np.ndarray) -> None:
        _atomic_save(self._path(image_id, ".mask.npy"), np.asarray(mask, dtype=np.uint8))

    def is_bad(self, image_id: str) -> bool:
        return self._path(image_id, ".bad").exists()

    def mark_bad(self, image_id: str, reason: str) -> None:
        _atomic_write(self._path(image_id, ".bad"), reason.encode())


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    tmp.replace(path)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
