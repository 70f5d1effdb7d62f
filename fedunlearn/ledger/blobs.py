"""Content-addressed blob store, optionally encrypted with AES-256-GCM.

A blob is named by the SHA-256 (hex) of its *plaintext*, whether it is stored in the clear or
encrypted, so that lineage records one identity per update or adapter. Layout under
``<root>/blobs/``::

    <h[:2]>/<h>            plaintext blob (aggregate adapters)
    <h[:2]>/<h>.<t>        the same plaintext encrypted: nonce (12 bytes) || AES-GCM ciphertext+tag

where ``<t>`` is a 16-hex-digit tag of the associated data (the organization name in the ledger): a
keyed hash (the key store's naming secret, :meth:`~fedunlearn.ledger.keys.KeyStore.tag`) when the
store has a ``tagger``, so that blob names do not tell whose update a file is; files named by the
unkeyed hash of runs made before keyed names are still read (and deleted).
Encrypted copies get their own file because equal plaintexts happen: with one organization in a
shard the aggregate *is* its update, and two organizations may send equal updates. Sharing one file
would leave an organization's update readable in the clear after its key is shredded, or make
one organization's blob unreadable with the other's key.

Writes go to a temporary file in the same folder, are fsynced and renamed into place, so a crash
never leaves a torn blob under its final name; writing the same content again is a no-op (a
damaged existing copy is repaired). Reads decrypt, then check the hash: a blob that was changed on
disk is reported with :class:`~fedunlearn.errors.IntegrityError` and never returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedunlearn.errors import IntegrityError, LedgerError
from fedunlearn.ledger._files import TEMP_PREFIX, fsync_dir, write_atomic
from fedunlearn.ledger.keys import KEY_BYTES

__all__ = ["NONCE_BYTES", "BlobStore"]

NONCE_BYTES = 12
"""Length of the random AES-GCM nonce stored in front of every encrypted blob."""

_TAG_BYTES = 16  # AES-GCM authentication tag appended by AESGCM.encrypt
_DIGEST = re.compile(r"[0-9a-f]{64}")
_AAD_DOMAIN = b"fedunlearn/ledger/blob-aad/v1\x00"


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is 64 lowercase hex characters, else raise :class:`LedgerError`."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise LedgerError(
            f"blob hash {digest!r} is not a SHA-256 hex digest; expected 64 lowercase hex "
            "characters as returned by BlobStore.put or Ledger.put_state"
        )
    return digest


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        shown = f"{len(key)} bytes" if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise LedgerError(
            f"blob encryption key is {shown}; expected {KEY_BYTES} bytes (AES-256-GCM): "
            "get it from KeyStore.key_for(org)"
        )
    return bytes(key)


class BlobStore:
    """Content-addressed files under ``<root>/blobs``.

    Parameters
    ----------
    root : Path
        Run folder; blobs live in ``root / "blobs"``.
    """

    def __init__(self, root: Path, tagger=None) -> None:
        self.root = Path(root)
        self.directory = self.root / "blobs"
        self._tagger = tagger  # bytes -> keyed hex tag, or None (no naming secret yet)

    def __repr__(self) -> str:
        return f"BlobStore({str(self.root)!r})"

    def path(self, digest: str, *, encrypted: bool = False, aad: bytes = b"") -> Path:
        """File that holds blob ``digest`` (plaintext, or encrypted with associated data ``aad``).

        Parameters
        ----------
        digest : str
            SHA-256 hex of the plaintext.
        encrypted : bool, default False
            Whether to name the encrypted copy.
        aad : bytes, default b""
            Associated data the copy was encrypted with (ignored for plaintext).
        """
        check_digest(digest)
        name = digest
        if encrypted:
            keyed = self._tagger(_AAD_DOMAIN + bytes(aad)) if self._tagger is not None else None
            legacy = self.directory / digest[:2] / f"{digest}.{hashlib.sha256(_AAD_DOMAIN + bytes(aad)).hexdigest()[:16]}"
            if keyed is None or (legacy.is_file() and not (self.directory / digest[:2] / f"{digest}.{keyed[:16]}").is_file()):
                return legacy  # a run made before keyed names (or a store without a naming secret)
            name += "." + keyed[:16]
        return self.directory / digest[:2] / name

    def put(self, data: bytes, *, key: bytes | None = None, aad: bytes = b"") -> str:
        """Store ``data`` and return the SHA-256 hex of the plaintext.

        Parameters
        ----------
        data : bytes
            Plaintext content.
        key : bytes, optional
            32-byte AES-256-GCM key; when given the file holds ``nonce || ciphertext``.
        aad : bytes, default b""
            Associated data authenticated with the ciphertext (the organization name).

        Returns
        -------
        str
            The plaintext digest; equal contents give equal digests (idempotent).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise LedgerError(
                f"blob content must be bytes, got {type(data).__name__}; serialize tensor states "
                "with fedunlearn.ledger.state_to_bytes"
            )
        data = bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        path = self.path(digest, encrypted=key is not None, aad=aad)
        if path.exists():
            try:
                self.get(digest, key=key, aad=aad)
                return digest
            except (IntegrityError, LedgerError):
                pass  # damaged or vanished copy: rewrite it below
        if key is None:
            payload = data
        else:
            nonce = os.urandom(NONCE_BYTES)
            payload = nonce + AESGCM(_check_key(key)).encrypt(nonce, data, bytes(aad))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, payload)
        return digest

    def get(self, digest: str, *, key: bytes | None = None, aad: bytes = b"") -> bytes:
        """Read, decrypt and verify blob ``digest``.

        Parameters
        ----------
        digest : str
            SHA-256 hex of the plaintext.
        key : bytes, optional
            The key the blob was stored with; ``None`` for plaintext blobs.
        aad : bytes, default b""
            The associated data it was stored with.

        Returns
        -------
        bytes
            The plaintext, whose SHA-256 equals ``digest``.

        Raises
        ------
        LedgerError
            If the blob file does not exist.
        IntegrityError
            If decryption fails (tampered ciphertext, wrong key or associated data) or the
            plaintext does not hash to ``digest``.
        """
        path = self.path(digest, encrypted=key is not None, aad=aad)
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            missing = self._missing_message(digest, path, encrypted=key is not None)
            raise LedgerError(missing) from None
        if key is None:
            data = payload
        else:
            key = _check_key(key)
            if len(payload) < NONCE_BYTES + _TAG_BYTES:
                raise IntegrityError(
                    f"encrypted blob {digest} ({path}) is {len(payload)} bytes, shorter than "
                    f"nonce+tag ({NONCE_BYTES + _TAG_BYTES}); it is truncated: store it again "
                    "or retrain the affected rounds"
                )
            try:
                data = AESGCM(key).decrypt(payload[:NONCE_BYTES], payload[NONCE_BYTES:], bytes(aad))
            except InvalidTag:
                raise IntegrityError(
                    f"encrypted blob {digest} ({path}) failed AES-GCM authentication: it was "
                    "modified on disk, or the key / associated data differ from the ones it was "
                    "stored with; it is not used: restore it from a backup or retrain"
                ) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise IntegrityError(
                f"blob {digest} ({path}) hashes to {actual}: its content was modified on disk; "
                "it is not used: restore it from a backup or retrain the affected rounds"
            )
        return data

    def _missing_message(self, digest: str, path: Path, *, encrypted: bool) -> str:
        message = f"blob {digest} is missing (expected {path})"
        others = sorted(p.name for p in path.parent.glob(f"{digest}*") if p != path)
        if others and not encrypted:
            message += f"; it is stored encrypted ({', '.join(others)}): pass the organization"
        elif others:
            message += f"; other copies exist ({', '.join(others)}): check the organization name"
        else:
            message += (
                "; it was never stored, or was deleted: store blobs before committing them and "
                "copy the whole run folder when moving a run"
            )
        return message

    def exists(self, digest: str, *, encrypted: bool = False, aad: bytes = b"") -> bool:
        """Whether the file for blob ``digest`` exists (content is not verified)."""
        return self.path(digest, encrypted=encrypted, aad=aad).is_file()

    def delete(self, digest: str, *, encrypted: bool = False, aad: bytes = b"") -> None:
        """Delete blob ``digest`` (the plaintext or one encrypted copy); missing is not an error."""
        path = self.path(digest, encrypted=encrypted, aad=aad)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            fsync_dir(path.parent)

    def size_bytes(self) -> int:
        """Total size in bytes of all stored blob files (temporary files excluded)."""
        if not self.directory.exists():
            return 0
        return sum(
            p.stat().st_size
            for p in self.directory.glob("*/*")
            if p.is_file() and not p.name.startswith(TEMP_PREFIX)
        )
