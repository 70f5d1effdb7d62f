"""Ed25519 signing keys for checkpoints and certificates, named as C2SP signed-note keys.

A key has a *name* (RECOMMENDED: a schema-less URL such as ``fedunlearn.example/run-42``;
non-empty, no Unicode spaces, no ``+``) and an Ed25519 key pair. Its 4-byte key ID is the one
recommended by c2sp.org/signed-note::

    key ID = SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4]

Files:

* private key: PKCS#8 PEM, created with permissions 0600 and never overwritten silently;
* public key: the C2SP *verifier key* line ``<name>+<hex key ID>+<base64(0x01 || public key)>``,
  which Go's ``golang.org/x/mod/sumdb/note`` and other tlog tools read directly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedunlearn.errors import ConfigError, IntegrityError, LedgerError

__all__ = [
    "ED25519_TYPE",
    "SigningKey",
    "VerifierKey",
    "as_verifier",
    "check_key_name",
    "generate_signing_key",
    "key_id",
    "load_public_key",
    "load_signing_key",
    "save_private_key",
    "save_public_key",
]

ED25519_TYPE = b"\x01"
"""C2SP signed-note signature type byte for Ed25519."""


def check_key_name(name: object) -> str:
    """Return ``name`` if it is a valid C2SP key name, else raise ConfigError."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"key name {name!r} must be a non-empty string such as 'example.org/log'")
    if "+" in name or any(ch.isspace() for ch in name):
        raise ConfigError(
            f"key name {name!r} contains a space or '+', which C2SP signed notes forbid; "
            "use a schema-less URL such as 'example.org/log'"
        )
    if any(ord(ch) < 0x20 for ch in name):
        raise ConfigError(f"key name {name!r} contains a control character; remove it")
    return name


def key_id(name: str, public_key: bytes) -> bytes:
    """Return the 4-byte C2SP key ID of an Ed25519 public key (32 raw bytes) under ``name``."""
    check_key_name(name)
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise ConfigError(f"public key {public_key!r:.60} must be 32 raw Ed25519 bytes")
    return hashlib.sha256(name.encode("utf-8") + b"\n" + ED25519_TYPE + public_key).digest()[:4]


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class VerifierKey:
    """A named Ed25519 public key, as a verifier of signed notes knows it.

    Attributes
    ----------
    name : str
        The key name that signature lines must carry.
    public_key : Ed25519PublicKey
        The key itself.
    """

    name: str
    public_key: Ed25519PublicKey

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not isinstance(self.public_key, Ed25519PublicKey):
            raise ConfigError(
                f"public_key is a {type(self.public_key).__name__}; expected an "
                "Ed25519PublicKey (load one with load_public_key)"
            )

    @property
    def raw(self) -> bytes:
        """The 32-byte RFC 8032 encoding of the public key."""
        return _raw_public(self.public_key)

    @property
    def key_id(self) -> bytes:
        """The 4-byte C2SP key ID."""
        return key_id(self.name, self.raw)

    @property
    def vkey(self) -> str:
        """The C2SP verifier key string ``name+hexid+base64(0x01 || key)``."""
        b64 = base64.b64encode(ED25519_TYPE + self.raw).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{b64}"

    def verify(self, signature: bytes, message: bytes) -> bool:
        """Return True if ``signature`` is this key's Ed25519 signature of ``message``."""
        try:
            self.public_key.verify(bytes(signature), bytes(message))
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True

    @classmethod
    def parse(cls, vkey: str) -> VerifierKey:
        """Parse a C2SP verifier key string; raise IntegrityError if its key ID is wrong."""
        # Names and hex IDs never contain '+', base64 may: split twice only.
        parts = vkey.strip().split("+", 2) if isinstance(vkey, str) else []
        if len(parts) != 3:
            raise ConfigError(
                f"verifier key {vkey!r:.80} is not 'name+hexid+base64key'; "
                "pass the line written by save_public_key"
            )
        name, hex_id, b64 = parts
        try:
            raw = base64.b64decode(b64, validate=True)
            want_id = bytes.fromhex(hex_id)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"verifier key {vkey!r:.80} has bad hex or base64: {exc}") from exc
        if len(raw) != 33 or raw[:1] != ED25519_TYPE or len(want_id) != 4:
            raise ConfigError(
                f"verifier key {vkey!r:.80} is not an Ed25519 key (type byte 0x01 + 32 bytes)"
            )
        try:
            key = cls(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
        except ValueError as exc:
            raise ConfigError(f"verifier key {vkey!r:.80} holds an invalid key: {exc}") from exc
        if key.key_id != want_id:
            raise IntegrityError(
                f"verifier key {vkey!r:.80} claims key ID {hex_id} but its name and key give "
                f"{key.key_id.hex()}; the file was altered: obtain the key again from its owner"
            )
        return key


@dataclass(frozen=True)
class SigningKey:
    """A named Ed25519 private key that signs checkpoints and certificates.

    Attributes
    ----------
    name : str
        Key name written into signature lines; by convention the log origin.
    private_key : Ed25519PrivateKey
        The secret key. Keep its file at 0600.
    """

    name: str
    private_key: Ed25519PrivateKey

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not isinstance(self.private_key, Ed25519PrivateKey):
            raise ConfigError(
                f"private_key is a {type(self.private_key).__name__}; expected an "
                "Ed25519PrivateKey (make one with generate_signing_key)"
            )

    @property
    def verifier(self) -> VerifierKey:
        """The matching public :class:`VerifierKey`."""
        return VerifierKey(self.name, self.private_key.public_key())

    @property
    def key_id(self) -> bytes:
        """The 4-byte C2SP key ID."""
        return self.verifier.key_id

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        return self.private_key.sign(bytes(message))

    def __repr__(self) -> str:  # never print key material
        return f"SigningKey(name={self.name!r}, key_id={self.key_id.hex()})"


def generate_signing_key(name: str) -> SigningKey:
    """Create a fresh Ed25519 signing key called ``name``."""
    return SigningKey(check_key_name(name), Ed25519PrivateKey.generate())


def save_private_key(
    key: SigningKey, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write ``key`` as unencrypted PKCS#8 PEM readable by its owner only (0600).

    Raises
    ------
    LedgerError
        If the file exists and ``overwrite`` is False, or it cannot be written.
    """
    path = Path(path)
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file
    except FileExistsError as exc:
        raise LedgerError(
            f"private key file {path} already exists; refusing to replace a signing key: "
            "choose another path or pass overwrite=True"
        ) from exc
    except OSError as exc:
        raise LedgerError(f"cannot write private key {path}: {exc}") from exc
    return path


def load_signing_key(path: str | os.PathLike[str], *, name: str) -> SigningKey:
    """Read a PKCS#8 PEM Ed25519 private key and give it the key name ``name``.

    Raises
    ------
    LedgerError
        If the file is missing, readable by group or others, or not an Ed25519 PEM key.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise LedgerError(f"cannot read private key {path}: {exc}") from exc
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise LedgerError(
            f"private key {path} has permissions {stat.filemode(mode)}; a signing key must be "
            f"private to its owner: run `chmod 600 {path}`"
        )
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise LedgerError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise LedgerError(f"{path} holds a {type(private).__name__}; expected an Ed25519 key")
    return SigningKey(check_key_name(name), private)


def save_public_key(key: SigningKey | VerifierKey, path: str | os.PathLike[str]) -> Path:
    """Write the C2SP verifier key line of ``key`` (public, mode 0644) and return the path."""
    verifier = key.verifier if isinstance(key, SigningKey) else key
    path = Path(path)
    try:
        path.write_text(verifier.vkey + "\n", encoding="ascii")
    except OSError as exc:
        raise LedgerError(f"cannot write public key {path}: {exc}") from exc
    return path


def load_public_key(path: str | os.PathLike[str]) -> VerifierKey:
    """Read a verifier key file written by :func:`save_public_key`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(f"cannot read public key {path}: {exc}") from exc
    return VerifierKey.parse(text)


def as_verifier(
    public_key: VerifierKey | Ed25519PublicKey | bytes | str, name: str | None = None
) -> VerifierKey:
    """Coerce a public key to a :class:`VerifierKey` named ``name``.

    Parameters
    ----------
    public_key : VerifierKey, Ed25519PublicKey, bytes or str
        A ``VerifierKey``, an ``Ed25519PublicKey``, 32 raw bytes, the base64 of those bytes,
        or a C2SP verifier key string (``name+hexid+base64``).
    name : str, optional
        The key name signatures must carry. Required unless ``public_key`` carries a name;
        if both are given they must agree.
    """
    if isinstance(public_key, str):
        text = public_key.strip()
        try:
            raw = base64.b64decode(text, validate=True)
        except binascii.Error:
            raw = b""
        public_key = raw if len(raw) == 32 else VerifierKey.parse(text)
    if isinstance(public_key, VerifierKey):
        key = public_key
    elif isinstance(public_key, Ed25519PublicKey) or (
        isinstance(public_key, (bytes, bytearray)) and len(public_key) == 32
    ):
        if name is None:
            raise ConfigError(
                "a bare public key carries no key name; pass name= (by convention the log "
                "origin) or a VerifierKey / verifier key string"
            )
        if not isinstance(public_key, Ed25519PublicKey):
            public_key = Ed25519PublicKey.from_public_bytes(bytes(public_key))
        key = VerifierKey(check_key_name(name), public_key)
    else:
        raise ConfigError(
            f"public key {public_key!r:.60} is not usable; pass a VerifierKey, an "
            "Ed25519PublicKey, 32 raw bytes or a C2SP verifier key string"
        )
    if name is not None and key.name != name:
        raise ConfigError(
            f"verifier key is named {key.name!r} but signatures are expected from {name!r}; "
            "pass the key of that signer or the matching name"
        )
    return key
