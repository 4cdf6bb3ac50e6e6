"""Distributed training: `torchrun --nproc-per-node 2 -m ichnode train` with gloo on CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import free_port

from ichnode.model import load_checkpoint
from training.distributed import ShardedSampler
from training.sampling import BalancedSampler

pytestmark = pytest.mark.slow


def test_sharded_sampler_splits_an_epoch_evenly_without_overlap():
    import numpy as np

    labels = np.zeros((11, 6))
    labels[:4, 0] = labels[:4, 5] = 1
    inner = BalancedSampler(labels, seed=3)
    inner.set_epoch(2)
    full = list(inner)
    shards = [list(ShardedSampler(inner, r, 3)) for r in range(3)]
    assert {len(s) for s in shards} == {4}  # 11 draws padded to 12: same steps on every rank
    assert sorted(shards[0] + shards[1] + shards[2]) == sorted(full + full[:1])
    assert [shards[r][0] for r in range(3)] == full[:3]


def test_torchrun_two_cpu_processes_train_and_rank0_writes_the_checkpoint(tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    data, run = tmp_path / "data", tmp_path / "run"
    synth = subprocess.run(
        [
            sys.executable,
            "-m",
            "ichnode",
            "synth",
            "--out",
            str(data),
            "--studies",
            "12",
            "--seed",
            "5",
            "--size",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert synth.returncode == 0, synth.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    done = subprocess.run(
        [
            torchrun,
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
            "-m",
            "ichnode",
            "train",
            "--data",
            str(data),
            "--out",
            str(run),
            "--epochs",
            "2",
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--arch",
            "simplecnn",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distributed: 2 processes" in done.stderr
    ckpt = load_checkpoint(run / "best.safetensors")
    assert ckpt.architecture == "simplecnn" and ckpt.spec.size == 32
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]  # written once, by rank 0
    assert (run / "split.json").is_file() and (run / "last.pt").is_file()
