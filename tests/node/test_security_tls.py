"""DICOM TLS on the listening port: a CA, server and client certificates made in the test with
``cryptography``; pynetdicom (``tls_args``) and DCMTK (``+tls key cert +cf ca``) as clients.

The backend does not matter here: the tests run on SQLite only.
"""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dicom_client import send
from helpers import run_dcmtk, study, wait_for, write_all
from pki import certificate, revocation_list, write_pem
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from ichnode.audit import list_associations
from ichnode.errors import ConfigError
from ichnode.node.scp import SUCCESS
from ichnode.node.scu import hold_responses_for_the_sender

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed CA, a server certificate and a client certificate it signed, and a client
    certificate signed by another CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _key(), _key()
    ca = certificate("ichnode test CA", ca_key, "ichnode test CA", ca_key, ca=True)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    files: dict[str, Path] = {}
    files["ca"], _ = write_pem(folder, "ca", ca)
    files["server_crt"], files["server_key"] = write_pem(
        folder,
        "server",
        certificate("localhost", server_key, "ichnode test CA", ca_key, ca=False),
        server_key,
    )
    files["client_crt"], files["client_key"] = write_pem(
        folder,
        "client",
        certificate("TESTSCU", client_key, "ichnode test CA", ca_key, ca=False),
        client_key,
    )
    files["rogue_crt"], files["rogue_key"] = write_pem(
        folder, "rogue", certificate("ROGUE", rogue_key, "other CA", other_key, ca=False), rogue_key
    )
    # A client certificate of our CA that the CA has revoked, and the CA's CRL.
    revoked_key = _key()
    revoked = certificate("REVOKED", revoked_key, "ichnode test CA", ca_key, ca=False)
    files["revoked_crt"], files["revoked_key"] = write_pem(folder, "revoked", revoked, revoked_key)
    files["crl"] = folder / "ca.crl"
    files["crl"].write_bytes(
        revocation_list([revoked], "ichnode test CA", ca_key).public_bytes(
            serialization.Encoding.PEM
        )
    )
    # The CA's CRL before it revoked anything, and a renewed server certificate and key.
    files["crl_empty"] = folder / "ca-empty.crl"
    files["crl_empty"].write_bytes(
        revocation_list([], "ichnode test CA", ca_key).public_bytes(serialization.Encoding.PEM)
    )
    renewed_key = _key()
    files["renewed_crt"], files["renewed_key"] = write_pem(
        folder,
        "renewed",
        certificate("localhost", renewed_key, "ichnode test CA", ca_key, ca=False),
        renewed_key,
    )
    return files


def _tls(pki: dict[str, Path], **overrides: object) -> dict[str, object]:
    """``[tls]`` settings: our server certificate, client certificates required."""
    tls = {
        "enabled": True,
        "cert": pki["server_crt"],
        "key": pki["server_key"],
        "ca": pki["ca"],
        "require_client_cert": True,
    }
    return tls | overrides


def _tls_node(factory, pki: dict[str, Path], require_client_cert: bool = True, **settings):  # noqa: ANN001, ANN003, ANN202
    return factory(tls=_tls(pki, require_client_cert=require_client_cert), **settings)


def _client_context(pki: dict[str, Path], cert: str | None = "client") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]))
    if cert:
        ctx.load_cert_chain(str(pki[f"{cert}_crt"]), str(pki[f"{cert}_key"]))
    return ctx


def _tls_echo(port: int, ctx: ssl.SSLContext | None) -> bool:
    """True if a C-ECHO over (TLS) ``ctx`` gets Success."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    tls_args = (ctx, "localhost") if ctx else None
    try:
        assoc = hold_responses_for_the_sender(
            ae.associate("127.0.0.1", port, ae_title="ICHNODE", tls_args=tls_args)
        )
    except (OSError, ssl.SSLError):
        return False
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == SUCCESS
    finally:
        if assoc.is_established:
            assoc.release()


def test_pynetdicom_with_a_client_certificate_stores_over_tls(scp_factory, pki):
    node = _tls_node(scp_factory, pki)
    assert _tls_echo(node.settings.port, _client_context(pki))
    ds = study(1, size=32)[0]
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, ds.file_meta.TransferSyntaxUID)
    assoc = hold_responses_for_the_sender(
        ae.associate(
            "127.0.0.1",
            node.settings.port,
            ae_title="ICHNODE",
            tls_args=(_client_context(pki), "localhost"),
        )
    )
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == SUCCESS
    assoc.release()


@pytest.mark.slow
def test_both_receiver_processes_store_over_tls(node_factory, pki):
    """Two receiver processes on one listening socket: each wraps what it accepts in TLS."""
    node = _tls_node(node_factory, pki, receiving=2, inference_process=True)
    loads = node.scp.server.listening.loads
    slices = study(2, size=32)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, slices[0].file_meta.TransferSyntaxUID)
    held = []
    try:
        for opened in (1, 2):  # the first to the receiver, the second to the node's process
            assoc = ae.associate(
                "127.0.0.1",
                node.settings.port,
                ae_title="ICHNODE",
                tls_args=(_client_context(pki), "localhost"),
            )
            assert assoc.is_established
            held.append(hold_responses_for_the_sender(assoc))
            assert wait_for(lambda opened=opened: sum(loads) == opened)
        assert list(loads) == [1, 1]
        answers = [a.send_c_store(ds) for a, ds in zip(held, slices, strict=True)]
        assert [int(answer.Status) for answer in answers] == [SUCCESS] * 2
    finally:
        for assoc in held:
            assoc.release()


def test_plain_connection_to_the_tls_port_is_refused(scp_factory, pki, tmp_path):
    node = _tls_node(scp_factory, pki)
    assert not _tls_echo(node.settings.port, None)
    done = run_dcmtk("echoscu", "-to", "5", "-aec", "ICHNODE", "127.0.0.1", str(node.settings.port))
    assert done.returncode != 0
    assert _tls_echo(node.settings.port, _client_context(pki))  # still serving


def test_client_without_a_certificate_is_refused_when_required(scp_factory, pki):
    node = _tls_node(scp_factory, pki)
    assert not _tls_echo(node.settings.port, _client_context(pki, cert=None))


def test_client_certificate_from_another_ca_is_refused(scp_factory, pki):
    node = _tls_node(scp_factory, pki)
    assert not _tls_echo(node.settings.port, _client_context(pki, cert="rogue"))
    # The refused connection is in the audit trail, with its address and why.

    def audited() -> list[dict]:
        with node.sessions() as session:
            return list_associations(session)

    [row] = wait_for(audited)
    assert row["outcome"].startswith("rejected: TLS handshake failed")
    assert row["peer"].startswith("127.0.0.1:") and row["calling_ae"] is None


def test_a_revoked_client_certificate_is_refused_when_a_crl_is_set(scp_factory, pki):
    node = scp_factory(tls=_tls(pki, crl=pki["crl"]))
    assert not _tls_echo(node.settings.port, _client_context(pki, cert="revoked"))
    assert _tls_echo(node.settings.port, _client_context(pki))  # not revoked: served
    # Without the CRL the same revoked certificate would pass: the CRL is what refused it.
    plain = _tls_node(scp_factory, pki)
    assert _tls_echo(plain.settings.port, _client_context(pki, cert="revoked"))


def _replace(target: Path, source: Path) -> None:
    """Put ``source``'s bytes at ``target`` the way an operator should: write, then rename."""
    staged = target.with_suffix(".new")
    staged.write_bytes(source.read_bytes())
    os.replace(staged, target)


def _server_serial(port: int, pki: dict[str, Path]) -> int:
    """Serial number of the certificate the node presents (TLS handshake only)."""
    ctx = _client_context(pki)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def test_a_crl_published_while_running_refuses_without_a_restart(
    scp_factory, pki, tmp_path, caplog
):
    crl = tmp_path / "ca.crl"
    _replace(crl, pki["crl_empty"])
    node = scp_factory(tls=_tls(pki, crl=crl))
    port = node.settings.port
    assert _tls_echo(port, _client_context(pki, cert="revoked"))  # not revoked yet
    _replace(crl, pki["crl"])
    assert wait_for(lambda: not _tls_echo(port, _client_context(pki, cert="revoked")), 10, 0.3)
    assert _tls_echo(port, _client_context(pki))
    # A broken CRL file is reported once; the node keeps the last good one (still refusing).
    crl.write_text("not a CRL")
    refused = lambda: not _tls_echo(port, _client_context(pki, cert="revoked"))  # noqa: E731
    assert wait_for(lambda: refused() and "changed files not loaded" in caplog.text, 10, 0.3)
    assert not _tls_echo(port, _client_context(pki, cert="revoked"))
    assert _tls_echo(port, _client_context(pki))
    assert caplog.text.count("changed files not loaded") == 1


def test_a_renewed_server_certificate_is_served_without_a_restart(scp_factory, pki, tmp_path):
    crt, key = tmp_path / "server.crt", tmp_path / "server.key"
    _replace(crt, pki["server_crt"])
    _replace(key, pki["server_key"])
    node = scp_factory(tls=_tls(pki, cert=crt, key=key))
    port = node.settings.port
    old = x509.load_pem_x509_certificate(pki["server_crt"].read_bytes()).serial_number
    new = x509.load_pem_x509_certificate(pki["renewed_crt"].read_bytes()).serial_number
    assert _server_serial(port, pki) == old
    _replace(key, pki["renewed_key"])
    _replace(crt, pki["renewed_crt"])
    assert wait_for(lambda: _server_serial(port, pki) == new, 10, 0.3)
    assert _tls_echo(port, _client_context(pki))


def test_an_unreadable_crl_is_a_one_line_start_error(scp_factory, pki, tmp_path):
    bad = tmp_path / "bad.crl"
    bad.write_text("not a CRL")
    tls = {"enabled": True, "cert": pki["server_crt"], "key": pki["server_key"], "crl": bad}
    with pytest.raises(ConfigError, match="crl needs tls.ca"):
        scp_factory(tls=tls)
    with pytest.raises(ConfigError, match="cannot load the CRL"):
        scp_factory(tls={**tls, "ca": pki["ca"]})


def test_client_without_a_certificate_is_served_when_not_required(scp_factory, pki):
    node = _tls_node(scp_factory, pki, require_client_cert=False)
    assert _tls_echo(node.settings.port, _client_context(pki, cert=None))


def _dcmtk_tls(tool: str, pki: dict[str, Path], cert: str, port: int, *files: str):  # noqa: ANN202
    return run_dcmtk(
        tool,
        "+tls",
        str(pki[f"{cert}_key"]),
        str(pki[f"{cert}_crt"]),
        "+cf",
        str(pki["ca"]),
        "-to",
        "10",
        "-aec",
        "ICHNODE",
        "127.0.0.1",
        str(port),
        *files,
    )


def test_dcmtk_echoscu_and_storescu_over_tls(scp_factory, pki, tmp_path):
    node = _tls_node(scp_factory, pki)
    done = _dcmtk_tls("echoscu", pki, "client", node.settings.port)
    assert done.returncode == 0, done.stderr
    files = write_all(study(2, size=32), tmp_path / "send")
    done = _dcmtk_tls("storescu", pki, "client", node.settings.port, *map(str, files))
    assert done.returncode == 0, done.stderr
    assert len(list(node.store.root.rglob("*.dcm"))) == 2


def test_dcmtk_with_a_certificate_from_another_ca_is_refused(scp_factory, pki):
    node = _tls_node(scp_factory, pki)
    done = _dcmtk_tls("echoscu", pki, "rogue", node.settings.port)
    assert done.returncode != 0


def test_plain_send_still_works_without_tls(scp_factory):
    node = scp_factory()
    assert send(node.settings.port, study(1, size=32)) == [SUCCESS]


def test_tls_handshakes_without_a_request_take_no_association_slot(scp_factory, pki):
    # A TLS health check: handshake, then close. It used to hold a slot for network_timeout.
    node = _tls_node(scp_factory, pki, max_associations=2)
    for _ in range(6):
        _server_serial(node.settings.port, pki)
    assert _tls_echo(node.settings.port, _client_context(pki))


def test_silent_peer_on_the_tls_port_does_not_block_other_clients(scp_factory, pki):
    node = _tls_node(scp_factory, pki)
    with socket.create_connection(("127.0.0.1", node.settings.port)):  # no ClientHello
        assert _tls_echo(node.settings.port, _client_context(pki))
