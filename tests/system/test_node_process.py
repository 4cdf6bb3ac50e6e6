"""`ichnode serve` as a real process: start on defaults, the README walk-through, SIGTERM,
and SIGKILL while a study is arriving."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dicom_client import send
from helpers import free_port, port_in_use, run_dcmtk, study, wait_for
from pki import server_files
from pynetdicom import AE
from sqlalchemy import create_engine, text

from ichnode.node.scu import hold_responses_for_the_sender

pytestmark = pytest.mark.slow

ICHNODE = [sys.executable, "-m", "ichnode"]
#: The default DICOM and HTTP ports (config.py); the defaults test needs both free.
DEFAULT_PORTS = {11112: "DICOM", 8080: "HTTP"}


class ServeProcess:
    """`ichnode serve ARGS` in ``cwd``; its output goes to a log file."""

    def __init__(self, cwd: Path, *args: str, http: bool = False) -> None:
        self.cwd = cwd
        self.log = cwd / f"serve-{len(list(cwd.glob('serve-*.log')))}.log"
        self.proc = subprocess.Popen(
            [*ICHNODE, "serve", *args],
            cwd=cwd,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "ICHNODE_HTTP__ENABLED": str(http).lower()},
        )
        wait_for(self.ready, timeout=90, interval=0.1)

    def output(self) -> str:
        return self.log.read_text()

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"ichnode serve exited early:\n{self.output()}")
        # The printed line (not the log record, which comes first and lacks the HTTP part).
        return any(line.startswith("ichnode ready:") for line in self.output().splitlines())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ICHNODE, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _results(cwd: Path, *args: str) -> list[dict]:
    done = _cli(cwd, "results", "--format", "json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_serve_with_no_arguments_starts_on_the_defaults(tmp_path):
    busy = [port for port in DEFAULT_PORTS if port_in_use(port)]
    if busy:  # the one environmental case: something else holds a default port
        named = ", ".join(f"{port} ({DEFAULT_PORTS[port]})" for port in busy)
        pytest.skip(
            f"default port {named} already in use on 127.0.0.1: stop what listens there "
            f"(e.g. an 'ichnode serve' left from the walk-through; 'ss -ltnp sport = :{busy[0]}' "
            "shows it) to run this test"
        )
    node = ServeProcess(tmp_path, http=True)
    try:
        line = next(x for x in node.output().splitlines() if x.startswith("ichnode ready:"))
        assert "AE ICHNODE on 127.0.0.1:11112" in line and "sqlite:///var/ichnode.db" in line
        assert "HTTP on http://127.0.0.1:8080" in line
        with urllib.request.urlopen("http://127.0.0.1:8080/healthz", timeout=10) as rsp:
            assert rsp.status == 200 and json.loads(rsp.read())
        done = run_dcmtk("echoscu", "-aec", "ICHNODE", "127.0.0.1", "11112")
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "var" / "ichnode.db").is_file()
    finally:
        assert node.stop() == 0


def test_readme_walkthrough_synth_storescu_results(tmp_path):
    """The README's main walk-through, command for command (on a free port)."""
    done = _cli(
        tmp_path,
        "synth",
        "--out",
        "demo",
        "--studies",
        "1",
        "--seed",
        "3",
        "--size",
        "256",
        "--valid-uids",
    )
    assert done.returncode == 0, done.stderr
    port = free_port()
    node = ServeProcess(tmp_path, "--port", str(port), "--stable-seconds", "2")
    try:
        sent = run_dcmtk(
            "storescu",
            "-aec",
            "ICHNODE",
            "+sd",
            "127.0.0.1",
            str(port),
            str(tmp_path / "demo" / "stage_2_train"),
            timeout=120,
        )
        assert sent.returncode == 0, sent.stderr
        n_files = len(list((tmp_path / "demo" / "stage_2_train").glob("*.dcm")))
        studies = wait_for(
            lambda: [s for s in _results(tmp_path) if s["status"] == "resulted"], timeout=60
        )
        (study_row,) = studies
        assert study_row["n_instances"] == n_files and study_row["version"] == 1
        # The README's study is a normal phantom (no bleed in its labels): it is not flagged.
        labels = (tmp_path / "demo" / "stage_2_train.csv").read_text().splitlines()[1:]
        assert labels and not any(row.endswith(",1") for row in labels)
        assert study_row["flagged"] is False and study_row["flagged_subtypes"] == []
        assert set(study_row["probabilities"]) == {
            "epidural",
            "intraparenchymal",
            "intraventricular",
            "subarachnoid",
            "subdural",
            "any",
        }
        detail = _results(tmp_path, "--study", study_row["study_instance_uid"])[0]
        assert len(detail["instances"]) == n_files
        assert all(i["status"] == "done" and i["probabilities"] for i in detail["instances"])
        csv_out = _cli(tmp_path, "results", "--format", "csv")
        assert csv_out.returncode == 0 and study_row["study_instance_uid"] in csv_out.stdout
    finally:
        assert node.stop() == 0
    assert "ichnode stopped" in node.output()


def test_sigterm_finishes_and_exits_zero_releasing_leases(tmp_path):
    port = free_port()
    node = ServeProcess(tmp_path, "--port", str(port), "--stable-seconds", "30")
    slices = study(8, size=64)
    assert send(port, slices) == [0] * 8
    assert node.stop(signal.SIGTERM) == 0
    engine = create_engine(f"sqlite:///{tmp_path / 'var' / 'ichnode.db'}")
    with engine.connect() as conn:
        claimed = conn.execute(
            text("select count(*) from instances where status='claimed'")
        ).scalar()
        total = conn.execute(text("select count(*) from instances")).scalar()
    engine.dispose()
    assert claimed == 0 and total == 8


def test_sigkill_while_a_study_arrives_loses_no_acknowledged_instance(tmp_path):
    port = free_port()
    args = ("--port", str(port), "--stable-seconds", "1")
    node = ServeProcess(tmp_path, *args)
    slices = study(40, size=128)
    acked: list[str] = []
    enough = threading.Event()

    def sender() -> None:
        ae = AE(ae_title="CRASHSCU")
        ae.add_requested_context(slices[0].SOPClassUID, slices[0].file_meta.TransferSyntaxUID)
        assoc = hold_responses_for_the_sender(ae.associate("127.0.0.1", port, ae_title="ICHNODE"))
        try:
            for ds in slices:
                rsp = assoc.send_c_store(ds)
                if "Status" in rsp and rsp.Status == 0:
                    acked.append(ds.SOPInstanceUID)
                if len(acked) >= 12:
                    enough.set()
                if not assoc.is_established:
                    break
        finally:
            enough.set()
            if assoc.is_established:
                assoc.abort()

    thread = threading.Thread(target=sender)
    thread.start()
    assert enough.wait(60)
    node.stop(signal.SIGKILL)
    thread.join(30)
    assert len(acked) >= 12

    node = ServeProcess(tmp_path, *args)
    try:
        db = create_engine(f"sqlite:///{tmp_path / 'var' / 'ichnode.db'}")

        def scored() -> dict[str, int]:
            with db.connect() as conn:
                rows = conn.execute(
                    text(
                        "select i.sop_instance_uid, count(p.id) from instances i "
                        "left join predictions p on p.instance_id = i.id "
                        "where i.status = 'done' group by i.sop_instance_uid"
                    )
                ).all()
            return dict(rows)

        wait_for(lambda: set(acked) <= set(scored()), timeout=60)
        counts = scored()
        assert all(counts[uid] == 1 for uid in acked)  # scored exactly once
        for uid in acked:
            assert list((tmp_path / "var" / "store").rglob(f"{uid}.dcm"))
        # The sender re-sends what it was not told was stored: everything ends up scored once.
        rest = [ds for ds in slices if ds.SOPInstanceUID not in set(acked)]
        assert send(port, rest) == [0] * len(rest)
        wait_for(lambda: len(scored()) == len(slices), timeout=90)
        assert set(scored().values()) == {1}
        db.dispose()
    finally:
        assert node.stop() == 0


def _serve_fails(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """`ichnode serve ARGS` that must refuse to start: its one-line error (stderr)."""
    done = subprocess.run(
        [*ICHNODE, "serve", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode != 0, done.stdout + done.stderr
    assert "ichnode ready" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert not (cwd / "var").exists()  # neither the database nor the store was created
    return lines[0]


@contextmanager
def _busy_port() -> Iterator[int]:
    """A loopback port some other program is listening on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_a_busy_http_port_is_one_line_error_before_anything_is_created(tmp_path):
    with _busy_port() as http_port:
        line = _serve_fails(
            tmp_path,
            "--port",
            str(free_port()),
            env={"ICHNODE_HTTP__ENABLED": "true", "ICHNODE_HTTP__BIND": f"127.0.0.1:{http_port}"},
        )
    assert f"127.0.0.1:{http_port}" in line and "http.bind" in line
    assert "in use" in line


def test_a_busy_dicom_port_is_one_line_error_before_anything_is_created(tmp_path):
    with _busy_port() as port:
        line = _serve_fails(
            tmp_path,
            "--port",
            str(port),
            env={"ICHNODE_HTTP__ENABLED": "true", "ICHNODE_HTTP__BIND": f"127.0.0.1:{free_port()}"},
        )
    assert f"127.0.0.1:{port}" in line and "port" in line and "in use" in line


def test_a_failing_start_is_refused_before_torch_is_imported(tmp_path):
    # What keeps a failing start quick (and these tests cheap): preflight imports no torch.
    with _busy_port() as port:
        code = (
            "import sys\n"
            "from ichnode.cli import main\n"
            f"sys.argv = ['ichnode', 'serve', '--port', '{port}']\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 2, exc.code\n"
            "assert 'torch' not in sys.modules, 'torch imported before the preflight failed'\n"
        )
        # HTTP on a free port, not the default 8080 (the defaults test may hold it meanwhile).
        http = {"ICHNODE_HTTP__ENABLED": "true", "ICHNODE_HTTP__BIND": f"127.0.0.1:{free_port()}"}
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
            timeout=120, env={**os.environ, **http},
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "in use" in done.stderr and f"127.0.0.1:{port}" in done.stderr


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.1:http", ":8080", "127.0.0.1:70000"])
def test_a_bad_http_bind_is_refused_naming_the_setting(tmp_path, bind):
    line = _serve_fails(
        tmp_path,
        "--port",
        str(free_port()),
        env={"ICHNODE_HTTP__ENABLED": "true", "ICHNODE_HTTP__BIND": bind},
    )
    assert line.startswith("error: invalid setting http.bind: expected HOST:PORT"), line
    assert repr(bind) in line


def test_a_remote_http_bind_without_a_token_is_refused_before_anything_is_created(tmp_path):
    line = _serve_fails(
        tmp_path,
        "--port",
        str(free_port()),
        env={"ICHNODE_HTTP__ENABLED": "true", "ICHNODE_HTTP__BIND": f"0.0.0.0:{free_port()}"},
    )
    assert "without a token" in line and "http.token" in line


def test_the_ready_line_comes_once_http_answers(tmp_path):
    http_port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [*ICHNODE, "serve", "--port", str(free_port())],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env={
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "ICHNODE_HTTP__ENABLED": "true",
            "ICHNODE_HTTP__BIND": f"127.0.0.1:{http_port}",
        },
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the node prints its one ready line
        assert line.startswith("ichnode ready:"), line + log.read_text()
        assert f"HTTP on http://127.0.0.1:{http_port}" in line
        # Right after the line: no retry, the first request is answered.
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=30) as rsp:
            assert rsp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    # The log says "ready" once too, with the HTTP part: no earlier record before HTTP listens.
    logged = [x for x in log.read_text().splitlines() if "ichnode ready:" in x]
    assert len(logged) == 1 and f"HTTP on http://127.0.0.1:{http_port}" in logged[0]


def test_serve_over_https_says_so_and_answers(tmp_path):
    pki = server_files(tmp_path)
    http_port = free_port()
    proc = subprocess.Popen(
        [*ICHNODE, "serve", "--port", str(free_port())],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "ICHNODE_HTTP__ENABLED": "true",
            "ICHNODE_HTTP__BIND": f"127.0.0.1:{http_port}",
            "ICHNODE_HTTP__CERT": str(pki["crt"]),
            "ICHNODE_HTTP__KEY": str(pki["key"]),
        },
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"HTTP on https://127.0.0.1:{http_port}" in line, line
        trust = ssl.create_default_context(cafile=str(pki["ca"]))
        url = f"https://localhost:{http_port}/healthz"
        with urllib.request.urlopen(url, timeout=30, context=trust) as rsp:
            assert rsp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_an_https_key_that_is_not_the_certificates_is_refused_before_anything_is_created(
    tmp_path,
):
    pki = server_files(tmp_path)
    line = _serve_fails(
        tmp_path,
        "--port",
        str(free_port()),
        env={
            "ICHNODE_HTTP__ENABLED": "true",
            "ICHNODE_HTTP__BIND": f"127.0.0.1:{free_port()}",
            "ICHNODE_HTTP__CERT": str(pki["crt"]),
            "ICHNODE_HTTP__KEY": str(pki["other_key"]),
        },
    )
    assert line.startswith("error: invalid setting http.cert / http.key: cannot load them"), line


def test_a_store_that_cannot_be_created_names_the_setting(tmp_path):
    (tmp_path / "afile").write_text("a file, not a folder")
    line = _serve_fails(
        tmp_path,
        "--port",
        str(free_port()),
        "--store",
        str(tmp_path / "afile" / "store"),
        env={"ICHNODE_HTTP__ENABLED": "false"},
    )
    assert "(setting store)" in line and "Not a directory" in line


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def test_serve_scores_in_its_inference_process_and_stops_it_on_sigterm(tmp_path):
    port = free_port()
    config = tmp_path / "ichnode.toml"
    config.write_text("inference_process = true\n")
    node = ServeProcess(
        tmp_path, "--config", str(config), "--port", str(port), "--stable-seconds", "30"
    )
    spawned = [p for p in _children(node.proc.pid) if "spawn_main" in _cmdline(p)]
    assert spawned, "no inference process under ichnode serve"
    assert send(port, study(4, size=64)) == [0] * 4
    engine = create_engine(f"sqlite:///{tmp_path / 'var' / 'ichnode.db'}")

    def done() -> int:
        with engine.connect() as conn:
            return conn.execute(text("select count(*) from instances where status='done'")).scalar()

    try:
        assert wait_for(lambda: done() == 4, timeout=120)
    finally:
        engine.dispose()
    assert node.stop(signal.SIGTERM) == 0
    assert not any(_cmdline(p) for p in spawned)  # the child is gone with the node
