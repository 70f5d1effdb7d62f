"""Per-organization AES-256-GCM keys and crypto-shredding.

Every organization's stored updates are encrypted with its own 256-bit key (see
:class:`~fedunlearn.ledger.blobs.BlobStore`). Erasing the organization destroys the key, which makes
every copy of its updates unreadable, backups of the blob store included ("crypto-shredding").

Layout under ``<key folder>/keys/`` (folder mode 0700), where the key folder is the run folder by
default or the run's ``run.key-dir`` setting (see :func:`key_folder`)::

    <h>.key        32 random bytes, mode 0600
    <h>.shredded   tombstone left by :meth:`KeyStore.shred`, so that a later access reports
                   "shredded" rather than "missing" and never silently creates a fresh key

    naming.secret  32 random bytes, mode 0600: the key of the keyed hashes that name these files and
                   the encrypted blobs' tags (see :mod:`fedunlearn.ledger.blobs`)

where ``<h>`` is an HMAC-SHA-256 (key: ``naming.secret``) of the key's name, so that neither the
file names here nor the blob names in the run folder tell which organization a key or an update
belongs to, or which one was shredded, to anyone without the key folder. Runs made before keyed
names use an unkeyed SHA-256 (domain-separated); their files are still found and used.

Besides the organizations' keys the store holds one key per stored aggregate (name
:func:`aggregate_key_name`): the aggregate is encrypted under it, and every update trained from it is
encrypted under :func:`bound_key` of its organization's key and that aggregate's key. When an
erasure purges the aggregates whose lineage holds the erased organization, their keys are shredded:
the aggregates, and the other organizations' updates trained on them, become unreadable in every
copy of the run folder made before the erasure (a backup), not only in the run.

Limits: shredding overwrites the key file before unlinking it, but copy-on-write and journaling
file systems or SSD wear levelling may keep old blocks; keep the key folder out of backups and on
storage you trust, as the guarantee rests on no other copy of the key existing. With the default
key folder a backup of the run folder holds the keys too, which defeats crypto-shredding for that
backup: set ``run.key-dir`` (``fedunlearn simulate --key-dir``) to a folder outside the run, and
back it up separately or not at all.

Several runs may share one ``run.key-dir``: each run keeps its files under its own sub-folder
``<run.key-dir>/run-<run id>/`` (``keys/`` and ``secrets/``), where the run id is the random
``run_id`` of ``RUN_DIR/run.json``, so two runs never read, overwrite or shred each other's keys.
A copy of the run folder (a backup) has the same id and therefore finds the same keys, which is
what makes crypto-shredding reach the backup. Runs made before run ids existed use
``<run.key-dir>`` itself.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedunlearn.errors import IntegrityError, LedgerError
from fedunlearn.ledger._files import fsync_dir, write_atomic

__all__ = ["KEY_BYTES", "KeyStore", "ShreddedError", "aggregate_key_name", "bound_key", "key_folder"]

KEY_BYTES = 32
"""Length of an AES-256-GCM key in bytes."""

_NAME_DOMAIN = b"fedunlearn/ledger/org-key/v1\x00"
_NAMING_FILE = "naming.secret"
_AGGREGATE_PREFIX = "\x00aggregate/"


def aggregate_key_name(digest: str) -> str:
    """The key-store name of the key that encrypts aggregate ``digest`` (never an organization's name)."""
    return _AGGREGATE_PREFIX + digest


def bound_key(org_key: bytes, aggregate_key: bytes) -> bytes:
    """The key of an update: HKDF-SHA-256 of its organization's key and the key of the aggregate it was
    trained from, so that shredding either one makes the update unreadable."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=b"fedunlearn/ledger/update-key/v1").derive(bytes(org_key) + bytes(aggregate_key))


def key_folder(run_dir: str | os.PathLike[str]) -> Path:
    """The folder holding a run's ``keys/`` and ``secrets/``.

    With ``run.key-dir`` set in ``RUN_DIR/run.json``: ``<run.key-dir>/run-<run id>`` (a relative
    key-dir is taken relative to the run folder; see the module docstring for runs without an id).
    Without it: the run folder itself.

    Raises
    ------
    LedgerError
        If ``run.json`` exists but cannot be read, or its run id is not a short hex string.
    """
    run_dir = Path(run_dir)
    meta = run_dir / "run.json"
    if not meta.is_file():
        return run_dir
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
        configured, run_id = doc.get("settings", {}).get("run.key-dir", ""), doc.get("run_id", "")
    except (OSError, ValueError, AttributeError) as exc:
        raise LedgerError(f"cannot read the key folder setting from {meta}: {exc}; restore run.json") from exc
    if not configured:
        return run_dir
    folder = run_dir / Path(configured).expanduser()  # an absolute path replaces run_dir
    if not run_id:  # a run made before run ids: the historical, unscoped layout
        return folder
    if not (isinstance(run_id, str) and 0 < len(run_id) <= 64 and all(c in "0123456789abcdef" for c in run_id)):
        raise LedgerError(f"run id {run_id!r} in {meta} is not a hex string; restore run.json from a backup")
    return folder / f"run-{run_id}"


class ShreddedError(LedgerError):
    """The organization's key was destroyed on erasure; its stored updates are unreadable."""


class KeyStore:
    """Per-organization AES-256-GCM keys stored one file per organization.

    Parameters
    ----------
    root : Path
        Run folder; keys live in ``key_folder(root) / "keys"`` (``root / "keys"`` unless the run
        sets ``run.key-dir``), created with mode 0700 on first use.

    Notes
    -----
    Keys are read from disk on every call, never cached, so a key shredded through another
    :class:`KeyStore` (or process) is gone here too.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.directory = key_folder(self.root) / "keys"
        self.naming_required = False  # set by the ledger when its run's keys are named with the secret

    def __repr__(self) -> str:
        return f"KeyStore({str(self.root)!r})"

    # -- paths ------------------------------------------------------------------------------
    @staticmethod
    def _check_org(org: str) -> str:
        if not isinstance(org, str) or not org:
            raise LedgerError(
                f"organization name {org!r} is not a non-empty string; pass the organization's "
                "name as registered in the ledger"
            )
        return org

    def _naming(self, *, create: bool) -> bytes | None:
        """The secret of the keyed file names (created on first need; None for a run made before it)."""
        path = self.directory / _NAMING_FILE
        if not path.is_file():
            if self.naming_required:
                raise IntegrityError(
                    f"{path} is missing, but this run's key files are named with it: restore the key folder "
                    f"({self.directory}) from where you keep it (run.key-dir); without it none of the run's keys "
                    "can be found, and new keys would silently replace them")
            if not create:
                return None
            self.ensure_directory()
            write_atomic(path, os.urandom(KEY_BYTES), exclusive=True)  # a concurrent creator's wins
        secret = path.read_bytes()
        if len(secret) != KEY_BYTES:
            raise IntegrityError(f"{path} holds {len(secret)} bytes, expected {KEY_BYTES}; restore it from the key "
                                 "folder's backup (without it no key of this run can be found)")
        return secret

    def tag(self, data: bytes) -> str | None:
        """A keyed hash (hex) naming ``data`` on disk, or None when this key folder has no naming secret."""
        secret = self._naming(create=False)
        return hmac.new(secret, bytes(data), hashlib.sha256).hexdigest() if secret is not None else None

    def _stems(self, org: str, *, create: bool = False) -> tuple[str | None, str]:
        """(keyed stem or None, the stem of runs made before keyed names)."""
        name = _NAME_DOMAIN + self._check_org(org).encode("utf-8")
        secret = self._naming(create=create)
        keyed = hmac.new(secret, name, hashlib.sha256).hexdigest() if secret is not None else None
        return keyed, hashlib.sha256(name).hexdigest()

    def _path(self, org: str, suffix: str, *, create: bool = False) -> Path:
        keyed, legacy = self._stems(org, create=create)
        old = self.directory / f"{legacy}{suffix}"
        if keyed is None or (old.exists() and not (self.directory / f"{keyed}{suffix}").exists()):
            return old
        return self.directory / f"{keyed}{suffix}"

    def key_path(self, org: str) -> Path:
        """Path of ``org``'s key file (it may not exist)."""
        return self._path(org, ".key")

    def tombstone_path(self, org: str) -> Path:
        """Path of ``org``'s shredding tombstone (it exists only after :meth:`shred`)."""
        return self._path(org, ".shredded")

    def ensure_directory(self) -> None:
        """Create the key folder with mode 0700 if needed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    # -- public API -------------------------------------------------------------------------
    def is_shredded(self, org: str) -> bool:
        """Whether ``org``'s key was destroyed by :meth:`shred`."""
        return self.tombstone_path(org).exists()

    def _raise_shredded(self, org: str) -> None:
        raise ShreddedError(
            f"the key of organization {org!r} was shredded when it was erased "
            f"(tombstone {self.tombstone_path(org)}); its stored updates can no longer be "
            "decrypted, by design: use the retrained adapters, which do not depend on it"
        )

    def key_for(self, org: str, *, create: bool = True) -> bytes:
        """Return ``org``'s 32-byte key, creating it on first use.

        Parameters
        ----------
        org : str
            Organization name.
        create : bool, default True
            Create a fresh random key when none exists; with ``False`` a missing key is an error.

        Returns
        -------
        bytes
            The AES-256-GCM key.

        Raises
        ------
        ShreddedError
            If the key was shredded (never recreated: that would hide the erasure).
        LedgerError
            If there is no key and ``create`` is false.
        IntegrityError
            If the key file does not hold exactly 32 bytes.
        """
        path = self.key_path(org)
        if self.is_shredded(org):
            self._raise_shredded(org)
        if not path.exists():
            if create:
                path = self._path(org, ".key", create=True)  # a new key gets a keyed name
            if not create:
                raise LedgerError(
                    f"no key for organization {org!r} (expected {path}); its updates were never "
                    "stored encrypted in this run, or the key folder was not copied with the run"
                )
            self.ensure_directory()
            write_atomic(path, AESGCM.generate_key(bit_length=8 * KEY_BYTES), exclusive=True)
            if self.is_shredded(org):  # shredded concurrently while we were creating it
                self.shred(org)
                self._raise_shredded(org)
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            if self.is_shredded(org):
                self._raise_shredded(org)
            raise LedgerError(
                f"key file {path} of organization {org!r} vanished while reading it; retry, and "
                "check that no other process deletes files under the key folder"
            ) from None
        if len(key) != KEY_BYTES:
            raise IntegrityError(
                f"key file {path} of organization {org!r} holds {len(key)} bytes, expected "
                f"{KEY_BYTES}; it is damaged: restore it from your key escrow if you keep one, "
                "otherwise this organization's stored updates are lost (retrain without them)"
            )
        return key

    def shred(self, org: str) -> None:
        """Destroy ``org``'s key: tombstone first, then overwrite the key file and delete it.

        Idempotent; shredding an organization that never had a key still leaves the tombstone,
        so that no key can be created for it later.
        """
        self.ensure_directory()
        tombstone = self.tombstone_path(org)
        if not tombstone.exists():
            tombstone = self._path(org, ".shredded", create=True)
        if not tombstone.exists():
            stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            write_atomic(tombstone, json.dumps({"shredded": stamp}).encode(), exclusive=True)
        path = self.key_path(org)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            size = os.fstat(fd).st_size
            os.pwrite(fd, os.urandom(max(size, KEY_BYTES)), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fsync_dir(self.directory)
