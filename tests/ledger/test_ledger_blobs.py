"""Content-addressed blob store: round trips, encryption, tampering, missing blobs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fedunlearn.errors import IntegrityError, LedgerError
from fedunlearn.ledger import BlobStore

DATA = b"lora factors " * 40
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path)


def test_plain_round_trip_is_content_addressed(blobs: BlobStore, tmp_path: Path) -> None:
    digest = blobs.put(DATA)
    assert digest == hashlib.sha256(DATA).hexdigest()
    assert blobs.path(digest) == tmp_path / "blobs" / digest[:2] / digest
    assert blobs.path(digest).read_bytes() == DATA
    assert blobs.get(digest) == DATA
    assert blobs.exists(digest)
    assert blobs.put(DATA) == digest  # idempotent
    assert blobs.size_bytes() == len(DATA)


def test_encrypted_round_trip_and_unreadable_without_key(blobs: BlobStore) -> None:
    digest = blobs.put(DATA, key=KEY, aad=b"org-a")
    assert digest == hashlib.sha256(DATA).hexdigest()  # named by the plaintext
    stored = blobs.path(digest, encrypted=True, aad=b"org-a").read_bytes()
    assert b"lora factors" not in stored
    assert len(stored) == 12 + len(DATA) + 16  # nonce || ciphertext || tag
    assert blobs.get(digest, key=KEY, aad=b"org-a") == DATA
    with pytest.raises(IntegrityError, match="authentication"):
        blobs.get(digest, key=OTHER_KEY, aad=b"org-a")
    with pytest.raises(LedgerError, match="stored encrypted"):
        blobs.get(digest)  # no plaintext copy exists
    assert not blobs.exists(digest)
    assert blobs.exists(digest, encrypted=True, aad=b"org-a")


def test_equal_plaintexts_get_separate_encrypted_copies(blobs: BlobStore) -> None:
    # One organization in a shard: its update equals the aggregate; two organizations may send
    # equal updates. Each copy must stay readable with its own key only.
    digest = blobs.put(DATA)
    assert blobs.put(DATA, key=KEY, aad=b"org-a") == digest
    assert blobs.put(DATA, key=OTHER_KEY, aad=b"org-b") == digest
    assert blobs.get(digest) == DATA
    assert blobs.get(digest, key=KEY, aad=b"org-a") == DATA
    assert blobs.get(digest, key=OTHER_KEY, aad=b"org-b") == DATA
    blobs.delete(digest, encrypted=True, aad=b"org-a")
    assert not blobs.exists(digest, encrypted=True, aad=b"org-a")
    assert blobs.get(digest, key=OTHER_KEY, aad=b"org-b") == DATA


@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize("offset", [0, 20, -1])
def test_one_byte_tamper_is_detected(
    blobs: BlobStore, flip_byte: Callable[..., None], encrypted: bool, offset: int
) -> None:
    key = KEY if encrypted else None
    digest = blobs.put(DATA, key=key, aad=b"org-a")
    path = blobs.path(digest, encrypted=encrypted, aad=b"org-a")
    flip_byte(path, offset)
    with pytest.raises(IntegrityError) as info:
        blobs.get(digest, key=key, aad=b"org-a")
    assert digest in str(info.value) and str(path) in str(info.value)


def test_truncated_encrypted_blob(blobs: BlobStore) -> None:
    digest = blobs.put(DATA, key=KEY)
    path = blobs.path(digest, encrypted=True)
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(IntegrityError, match="truncated"):
        blobs.get(digest, key=KEY)


def test_put_repairs_a_damaged_copy(blobs: BlobStore, flip_byte: Callable[..., None]) -> None:
    digest = blobs.put(DATA)
    flip_byte(blobs.path(digest))
    assert blobs.put(DATA) == digest
    assert blobs.get(digest) == DATA


def test_missing_blob_names_the_file(blobs: BlobStore) -> None:
    digest = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(LedgerError, match="missing") as info:
        blobs.get(digest)
    assert not isinstance(info.value, IntegrityError)
    assert str(blobs.path(digest)) in str(info.value)


def test_delete_and_size(blobs: BlobStore) -> None:
    digest = blobs.put(DATA)
    blobs.put(b"x", key=KEY)
    assert blobs.size_bytes() == len(DATA) + 12 + 1 + 16
    blobs.delete(digest)
    blobs.delete(digest)  # deleting twice is fine
    assert not blobs.exists(digest)
    assert blobs.size_bytes() == 12 + 1 + 16


def test_no_temporary_files_are_left(blobs: BlobStore, tmp_path: Path) -> None:
    blobs.put(DATA)
    blobs.put(DATA, key=KEY)
    names = [name for _, _, files in os.walk(tmp_path) for name in files]
    assert not [name for name in names if name.startswith(".tmp-")]


@pytest.mark.parametrize("digest", ["abc", "G" * 64, "A" * 64, 7])
def test_malformed_digest(blobs: BlobStore, digest: object) -> None:
    with pytest.raises(LedgerError, match="64 lowercase hex"):
        blobs.get(digest)  # type: ignore[arg-type]


def test_bad_key_length(blobs: BlobStore) -> None:
    with pytest.raises(LedgerError, match="expected 32 bytes"):
        blobs.put(DATA, key=b"short")
