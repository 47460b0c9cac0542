"""A throwaway certificate authority for the TLS tests, made with ``cryptography``.

:func:`make_certificates` writes, into a directory, a CA certificate and a server
certificate (with its key) that the CA signed for ``127.0.0.1`` and ``localhost``, valid
for a day. EC P-256 keys: quick to make, and every server here (Redis, RabbitMQ on
Erlang/OTP, PostgreSQL) accepts them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Certificates:
    """PEM files: ``ca`` (the authority's certificate, what clients trust), ``cert`` and
    ``key`` (the server's certificate and unencrypted private key)."""

    ca: Path
    cert: Path
    key: Path

    def copy_to(
        self, directory: Path, uid: int | None = None, gid: int | None = None
    ) -> Certificates:
        """The same files in ``directory``, owned by ``uid``/``gid`` when given (a server
        that runs as another user must read them), the key readable by its owner only
        (PostgreSQL refuses a key that others may read)."""
        directory.mkdir(parents=True, exist_ok=True)
        copies = []
        for source in (self.ca, self.cert, self.key):
            target = directory / source.name
            shutil.copyfile(source, target)
            target.chmod(0o600 if source == self.key else 0o644)
            if uid is not None:
                os.chown(target, uid, -1 if gid is None else gid)
            copies.append(target)
        return Certificates(*copies)


# Signs certificates, nothing else.
_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_certificates(directory: Path, names: tuple[str, ...] = SERVER_NAMES) -> Certificates:
    """A new CA and a server certificate it signed for ``names`` (IP addresses or DNS
    names), written into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    # A little in the past: a server whose clock lags ours must not see it as not yet valid.
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"channel-layers test CA {os.getpid()}")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = Certificates(
        directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files.key, key)
    return files
