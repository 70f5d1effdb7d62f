"""File names in keys/ and blobs/ are keyed hashes: a copy of the run folder (or a listing of the key
folder) does not tell whose key or update a file is, nor which organization was erased."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fedunlearn.ledger import Ledger
from fedunlearn.ledger.blobs import _AAD_DOMAIN
from fedunlearn.ledger.keys import _NAME_DOMAIN, KeyStore


def _names(folder: Path) -> str:
    return " ".join(p.name for p in folder.rglob("*"))


def test_no_file_name_is_an_unkeyed_hash_of_an_organization(ledger: Ledger, run_dir: Path, make_state) -> None:
    for org in ("hospital-a", "bank-b"):
        ledger.register_organization(org, shard=0)
    root = ledger.put_state(make_state(0))
    ledger.put_state(make_state(1), org="hospital-a", parent=root)
    kept = ledger.put_state(make_state(2), org="bank-b", parent=root)
    ledger.mark_erased("hospital-a")  # a tombstone now marks who was erased: its name must not say who
    listing = _names(run_dir / "keys") + " " + _names(run_dir / "blobs")
    for org in ("hospital-a", "bank-b"):
        guessable = hashlib.sha256(_NAME_DOMAIN + org.encode()).hexdigest()  # anyone can compute these
        assert guessable not in listing
        assert hashlib.sha256(_AAD_DOMAIN + org.encode()).hexdigest()[:16] not in listing
        assert org not in listing
    assert ledger.keys.is_shredded("hospital-a") and not ledger.keys.is_shredded("bank-b")
    assert set(ledger.get_state(kept, org="bank-b")) == set(make_state(2))  # found under its keyed name


def test_a_key_folder_from_before_keyed_names_is_still_used(run_dir: Path) -> None:
    """A run made before keyed names: its key files carry the unkeyed name; they are found, shredded
    and never shadowed by a new key."""
    store = KeyStore(run_dir)
    store.ensure_directory()
    legacy = store.directory / f"{hashlib.sha256(_NAME_DOMAIN + b'org-a').hexdigest()}.key"
    legacy.write_bytes(b"k" * 32)
    assert store.key_for("org-a") == b"k" * 32  # found, not replaced by a fresh key
    assert store.key_for("org-b") != b"k" * 32  # a new organization's key gets a keyed name
    assert (store.directory / "naming.secret").is_file()
    assert store.key_for("org-a") == b"k" * 32
    store.shred("org-a")
    assert store.is_shredded("org-a") and not legacy.exists()
