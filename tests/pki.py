"""A throw-away PKI for TLS tests: certificates signed by a CA made in the test."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID


def certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool) -> x509.Certificate:  # noqa: ANN001
    """A one-day certificate for ``subject`` signed by ``issuer_key``; leaf certificates are
    valid for localhost and 127.0.0.1."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_pem(
    folder: Path, name: str, cert: x509.Certificate, key=None
) -> tuple[Path, Path | None]:  # noqa: ANN001
    """``name.crt`` (and ``name.key`` when a key is given) in PEM."""
    crt = folder / f"{name}.crt"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is None:
        return crt, None
    pem = folder / f"{name}.key"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


def revocation_list(
    revoked: list[x509.Certificate], issuer: str, issuer_key
) -> x509.CertificateRevocationList:  # noqa: ANN001, E501
    """A CRL of ``issuer`` (valid for a day) revoking ``revoked``."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=1))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    return builder.sign(issuer_key, hashes.SHA256())


def server_files(folder: Path) -> dict[str, Path]:
    """A fresh CA and a server certificate (localhost, 127.0.0.1) it signed, with the
    server's key and a key that is not its own: ``ca``, ``crt``, ``key``, ``other_key``; and a
    renewed server certificate of the same CA with its own key: ``renewed_crt``,
    ``renewed_key``."""
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key, server_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = certificate("ichnode test CA", ca_key, "ichnode test CA", ca_key, ca=True)
    server = certificate("localhost", server_key, "ichnode test CA", ca_key, ca=False)
    files: dict[str, Path] = {}
    files["ca"], _ = write_pem(folder, "ca", ca)
    files["crt"], files["key"] = write_pem(folder, "server", server, server_key)
    _, files["other_key"] = write_pem(folder, "other", server, other_key)
    renewed_key = ec.generate_private_key(ec.SECP256R1())
    renewed = certificate("localhost", renewed_key, "ichnode test CA", ca_key, ca=False)
    files["renewed_crt"], files["renewed_key"] = write_pem(folder, "renewed", renewed, renewed_key)
    return files
