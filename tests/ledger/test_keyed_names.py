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


def test_a_lost_naming_secret_stops_instead_of_minting_new_keys(ledger: Ledger, run_dir: Path, make_state) -> None:
    import pytest

    from fedunlearn.errors import IntegrityError

    ledger.register_organization("org-a", shard=0)
    root = ledger.put_state(make_state(0))
    update = ledger.put_state(make_state(1), org="org-a", parent=root)
    (run_dir / "keys" / "naming.secret").unlink()  # the key folder restored without it, say
    with Ledger.open(run_dir) as reopened:
        for read in (lambda: reopened.get_state(root), lambda: reopened.get_state(update, org="org-a"),
                     lambda: reopened.put_state(make_state(2), org="org-a", parent=root)):
            with pytest.raises(IntegrityError, match="naming.secret is missing"):
                read()
    assert not [p for p in (run_dir / "keys").iterdir() if p.name == "naming.secret"]  # none minted


def test_messages_for_a_missing_aggregate_or_key_name_the_aggregate(ledger: Ledger, run_dir: Path, make_state) -> None:
    import pytest

    from fedunlearn.errors import LedgerError
    from fedunlearn.ledger.keys import aggregate_key_name

    root = ledger.put_state(make_state(0))
    ledger.keys.key_path(aggregate_key_name(root)).unlink()
    with pytest.raises(LedgerError, match=f"no key for aggregate {root}.*key folder"):
        ledger.get_state(root)
    for path in ledger.aggregate_paths(root):
        path.unlink()
    with pytest.raises(LedgerError, match=f"aggregate {root} is missing") as info:
        ledger.get_state(root)
    assert "organization" not in str(info.value)
