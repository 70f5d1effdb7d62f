"""Key material of a deployment: a CA, the SuperLink's TLS certificate, SuperNode auth keys.

Everything is generated with ``cryptography`` (no ``openssl`` binary):

- :func:`make_ca` writes a self-signed EC P-384 certificate authority (``ca.crt``, ``ca.key``);
- :func:`make_server_certificate` writes the SuperLink's certificate (``server.pem``,
  ``server.key``), signed by the CA, valid for the given IP addresses and DNS names (by default
  ``127.0.0.1`` and ``localhost``);
- :func:`make_node_keys` writes one organization's SuperNode authentication key pair
  (``<org>.key`` OpenSSH private key, ``<org>.pub`` OpenSSH public key, EC P-384), the format
  ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` expect.

Private keys are written with mode 0600. Keys and certificates are never committed: generate
them where they are used.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedunlearn.errors import ConfigError

__all__ = ["CertificateAuthority", "NodeKeys", "ServerCertificate", "make_ca", "make_node_keys",
           "make_server_certificate"]

_VALID_DAYS = 30


@dataclass(frozen=True)
class CertificateAuthority:
    """Paths of a CA certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ServerCertificate:
    """Paths of the SuperLink's certificate (signed by ``ca``) and private key."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class NodeKeys:
    """An organization's SuperNode authentication key pair (OpenSSH format, EC P-384)."""

    org: str
    private_key: Path
    public_key: Path


def _write(path: Path, data: bytes, *, private: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(out: Path, *, name: str = "fedunlearn deployment CA") -> CertificateAuthority:
    """Create a self-signed CA in ``out`` (``ca.crt`` and ``ca.key``, 0600).

    Parameters
    ----------
    out : Path
        Folder for the files (created when missing).
    name : str
        Common name of the CA.

    Returns
    -------
    CertificateAuthority
        The paths written.
    """
    out = Path(out)
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return CertificateAuthority(cert=_write(out / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), private=False),
                                key=_write(out / "ca.key", _pem_key(key), private=True))


def make_server_certificate(ca: CertificateAuthority, out: Path, *,
                            hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> ServerCertificate:
    """Issue the SuperLink's TLS certificate for ``hosts`` (IP addresses and DNS names).

    Raises
    ------
    ConfigError
        When ``hosts`` is empty.
    """
    if not hosts:
        raise ConfigError("hosts = () is invalid: expected at least one IP address or DNS name, e.g. ('127.0.0.1',)")
    out = Path(out)
    ca_cert = x509.load_pem_x509_certificate(Path(ca.cert).read_bytes())
    ca_key = serialization.load_pem_private_key(Path(ca.key).read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP384R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return ServerCertificate(cert=_write(out / "server.pem", cert.public_bytes(serialization.Encoding.PEM), private=False),
                             key=_write(out / "server.key", _pem_key(key), private=True), ca=Path(ca.cert))


def make_node_keys(org: str, out: Path) -> NodeKeys:
    """Generate ``org``'s SuperNode authentication key pair in ``out`` (``<org>.key``, ``<org>.pub``).

    Raises
    ------
    ConfigError
        When ``org`` is empty or contains a path separator.
    """
    if not org or "/" in org or org.startswith("."):
        raise ConfigError(f"organization name {org!r} is invalid for a key file: expected a name such as 'org-0'")
    out = Path(out)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return NodeKeys(org=org, private_key=_write(out / f"{org}.key", private, private=True),
                    public_key=_write(out / f"{org}.pub", public + f" {org}\n".encode(), private=False))
