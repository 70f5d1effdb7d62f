"""Per-organization keys and crypto-shredding."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fedunlearn.errors import IntegrityError, LedgerError
from fedunlearn.ledger import KeyStore, ShreddedError


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path)


def test_key_is_created_once_private_and_not_named_after_the_org(
    keys: KeyStore, tmp_path: Path
) -> None:
    key = keys.key_for("Acme Hospital")
    assert len(key) == 32
    assert keys.key_for("Acme Hospital") == key
    assert keys.key_for("Other Org") != key
    path = keys.key_path("Acme Hospital")
    assert path.parent == tmp_path / "keys"
    assert "Acme" not in path.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_missing_key_without_create(keys: KeyStore) -> None:
    with pytest.raises(LedgerError, match="no key for organization 'ghost'") as info:
        keys.key_for("ghost", create=False)
    assert not isinstance(info.value, ShreddedError)
    assert not keys.key_path("ghost").exists()


def test_shred_destroys_key_and_leaves_tombstone(keys: KeyStore, tmp_path: Path) -> None:
    keys.key_for("org-a")
    keys.shred("org-a")
    assert not keys.key_path("org-a").exists()
    assert keys.tombstone_path("org-a").exists()
    assert keys.is_shredded("org-a")
    assert not keys.is_shredded("org-b")
    for create in (True, False):
        with pytest.raises(ShreddedError, match="shredded"):
            keys.key_for("org-a", create=create)
    assert not keys.key_path("org-a").exists()  # never recreated
    # Another store on the same folder (another process) sees it too.
    with pytest.raises(ShreddedError):
        KeyStore(tmp_path).key_for("org-a")
    keys.shred("org-a")  # idempotent


def test_shred_without_key_still_blocks_creation(keys: KeyStore) -> None:
    keys.shred("never-had-a-key")
    with pytest.raises(ShreddedError):
        keys.key_for("never-had-a-key")


def test_damaged_key_file(keys: KeyStore) -> None:
    keys.key_for("org-a")
    keys.key_path("org-a").write_bytes(b"short")
    with pytest.raises(IntegrityError, match="holds 5 bytes, expected 32"):
        keys.key_for("org-a")


@pytest.mark.parametrize("org", ["", None, 3])
def test_bad_org_name(keys: KeyStore, org: object) -> None:
    with pytest.raises(LedgerError, match="non-empty string"):
        keys.key_for(org)  # type: ignore[arg-type]
