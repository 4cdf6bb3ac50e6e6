"""``ichnode serve`` with ``receivers = 2`` (a real process): it receives in two processes on
one port, and SIGKILL of the node takes its children (the receiver and the inference
process) down with it, so no orphan keeps the port and acknowledges what nobody serves."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from dicom_client import send
from helpers import free_port, port_in_use, study, wait_for

from ichnode.node.statuses import SUCCESS

pytestmark = [pytest.mark.slow]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return True
    return state in "ZX"  # a zombie no longer runs or holds sockets


def test_sigkill_of_serve_takes_its_receiver_and_inference_processes_down(tmp_path, model_path):
    port = free_port()
    config = tmp_path / "ichnode.toml"
    config.write_text(
        f'port = {port}\ndb_url = "sqlite:///{tmp_path / "ichnode.db"}"\n'
        f'store = "{tmp_path / "store"}"\nmodel = "{model_path}"\ndevice = "cpu"\n'
        "min_free_bytes = 0\nworkers = 1\nreceivers = 2\n[http]\nenabled = false\n"
    )
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ichnode", "serve", "--config", str(config)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for(lambda: "ichnode ready:" in log.read_text(), timeout=120, interval=0.1)
        text = log.read_text()
        assert "in 2 receiver processes" in text
        children = [
            int(pid)
            for pid in re.findall(r"ichnode-(?:receiver-1|inference) process (\d+) started", text)
        ]
        assert len(children) == 2 and not any(_gone(pid) for pid in children)
        assert send(port, study(4, size=32)) == [SUCCESS] * 4
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert wait_for(lambda: all(_gone(pid) for pid in children), timeout=30)
        assert wait_for(lambda: not port_in_use(port), timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
