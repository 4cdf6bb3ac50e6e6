"""HTTPS on the HTTP side (``http.cert`` and ``http.key``): uvicorn serving TLS on a loopback
port, httpx verifying the certificate against the CA the test made."""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from pki import server_files
from web_fixtures import TOKEN

from ichnode.config import HTTPSettings, load_settings
from ichnode.errors import ConfigError
from ichnode.web import check_http_settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return server_files(tmp_path_factory.mktemp("https"))


def _verify(pki: dict[str, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki["ca"]))


def test_the_api_is_served_over_https_and_not_in_clear(empty, web, pki):
    handle = web(empty, token=TOKEN, cert=pki["crt"], key=pki["key"])
    assert handle.url == f"https://127.0.0.1:{handle.port}"
    with httpx.Client(base_url=handle.url, verify=_verify(pki), timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/studies").status_code == 401  # the token still applies
        ok = client.get("/api/studies", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["total"] == 0
        assert client.get("/").status_code == 401
        login = client.get("/", params={"token": TOKEN})  # the cookie is Secure over HTTPS
        assert login.status_code == 303 and "secure" in login.headers["set-cookie"].lower()
        assert client.get("/").status_code == 200
    # A client that does not trust the CA is refused at the handshake.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{handle.url}/healthz", timeout=30)
    # Plain HTTP to the HTTPS port gets no answer: nothing is served in clear text.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{handle.port}/healthz", timeout=30)
    with httpx.Client(base_url=handle.url, verify=_verify(pki), timeout=30) as client:
        assert client.get("/healthz").status_code == 200  # still serving


def _http(**extra: object) -> SimpleNamespace:
    return SimpleNamespace(http=HTTPSettings(bind="127.0.0.1:0", **extra))


def test_a_certificate_without_its_key_is_refused_in_one_line(tmp_path, pki):
    config = tmp_path / "half.toml"
    config.write_text(f'[http]\ncert = "{pki["crt"]}"\n')
    with pytest.raises(ConfigError, match="http.cert and http.key go together") as info:
        load_settings(config)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("cert", "key", "reason"),
    [
        ("missing", "key", "No such file"),
        ("crt", "other_key", "KEY_VALUES_MISMATCH"),
        ("ca", "key", "KEY_VALUES_MISMATCH"),
        ("key", "key", "PEM lib"),
    ],
)
def test_files_that_do_not_load_name_the_settings(pki, tmp_path, cert, key, reason):
    files = {**pki, "missing": tmp_path / "nowhere.crt"}
    with pytest.raises(ConfigError) as info:
        check_http_settings(_http(cert=files[cert], key=files[key]))
    message = str(info.value)
    assert message.startswith("invalid setting http.cert / http.key: cannot load them: ")
    assert reason in message and "\n" not in message
    assert check_http_settings(_http(cert=pki["crt"], key=pki["key"])) == ("127.0.0.1", 0)


def _served_certificate(port: int) -> str:
    return ssl.get_server_certificate(("127.0.0.1", port))


def _same(pem: str, path: Path) -> bool:
    return ssl.PEM_cert_to_DER_cert(pem) == ssl.PEM_cert_to_DER_cert(path.read_text())


def _replace(source: Path, target: Path) -> None:
    """Put ``source`` in place of ``target`` at once, as an operator's renewal does."""
    scratch = target.with_suffix(".new")
    shutil.copyfile(source, scratch)
    os.replace(scratch, target)


def test_a_renewed_certificate_is_served_without_a_restart(empty, web, pki, tmp_path, caplog):
    cert, key = tmp_path / "http.crt", tmp_path / "http.key"
    shutil.copyfile(pki["crt"], cert)
    shutil.copyfile(pki["key"], key)
    handle = web(empty, cert=cert, key=key)
    assert _same(_served_certificate(handle.port), pki["crt"])
    _replace(pki["renewed_key"], key)
    _replace(pki["renewed_crt"], cert)
    deadline = time.monotonic() + 15
    while not _same(_served_certificate(handle.port), pki["renewed_crt"]):
        assert time.monotonic() < deadline, "the renewed certificate was never served"
        time.sleep(0.2)
    with httpx.Client(base_url=handle.url, verify=_verify(pki), timeout=30) as client:
        assert client.get("/healthz").status_code == 200  # the renewed key goes with it
    # A half-written certificate is not loaded: the renewed one stays, and the log says why.
    caplog.set_level(logging.ERROR, logger="ichnode.web.https")
    cert.write_text("-----BEGIN CERTIFICATE-----\ntruncated")
    deadline = time.monotonic() + 15
    while "changed files not loaded" not in caplog.text:
        assert time.monotonic() < deadline, "the bad certificate was not reported"
        time.sleep(0.2)
    assert _same(_served_certificate(handle.port), pki["renewed_crt"])
    with httpx.Client(base_url=handle.url, verify=_verify(pki), timeout=30) as client:
        assert client.get("/healthz").status_code == 200
