"""Ed25519 signing keys, C2SP key IDs and verifier-key files.

Golden keys come from public test suites: the ``PeterNeumann`` key pair of Go's
golang.org/x/mod/sumdb/note tests (note_test.go) and the ``example.com/foo`` verifier key of
the C2SP signed-note specification (c2sp.org/signed-note, "Example").
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedunlearn.audit.keys import (
    SigningKey,
    VerifierKey,
    as_verifier,
    check_key_name,
    generate_signing_key,
    key_id,
    load_public_key,
    load_signing_key,
    save_private_key,
    save_public_key,
)
from fedunlearn.errors import ConfigError, IntegrityError, LedgerError

# golang.org/x/mod/sumdb/note/note_test.go
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
# c2sp.org/signed-note, "Example"
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"


def peter_signing_key() -> SigningKey:
    """The Go test suite's private key: base64(0x01 || 32-byte Ed25519 seed)."""
    seed = base64.b64decode(PETER_SKEY.split("+", 4)[4])[1:]  # base64 may hold "+"
    return SigningKey("PeterNeumann", Ed25519PrivateKey.from_private_bytes(seed))


@pytest.mark.parametrize("vkey", [PETER_VKEY, ENOCH_VKEY, SPEC_VKEY])
def test_published_verifier_keys_parse_and_reencode(vkey: str) -> None:
    key = VerifierKey.parse(vkey)
    assert key.vkey == vkey
    assert key.key_id.hex() == vkey.split("+")[1]
    assert key_id(key.name, key.raw) == key.key_id


def test_go_private_key_matches_its_verifier_key() -> None:
    signer = peter_signing_key()
    assert signer.verifier.vkey == PETER_VKEY
    assert signer.key_id == bytes.fromhex("c74f20a3")


def test_every_single_byte_mangling_of_a_verifier_key_is_rejected() -> None:
    raw = bytearray(PETER_VKEY.encode())
    for i in range(len(raw)):
        raw[i] += 1
        with pytest.raises((ConfigError, IntegrityError)):
            VerifierKey.parse(raw.decode("latin-1"))
        raw[i] -= 1


def test_verifier_key_with_wrong_id_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError, match="claims key ID c74f20a4"):
        VerifierKey.parse(PETER_VKEY.replace("c74f20a3", "c74f20a4"))


@pytest.mark.parametrize("name", ["", "a b", "a+b", "tab\there", "line\nbreak", "nb\u00a0sp", 7])
def test_invalid_key_names_are_rejected(name: object) -> None:
    with pytest.raises(ConfigError):
        check_key_name(name)


def test_generate_sign_verify() -> None:
    key = generate_signing_key("fedunlearn.example/run")
    sig = key.sign(b"message")
    assert len(sig) == 64
    assert key.verifier.verify(sig, b"message")
    assert not key.verifier.verify(sig, b"messagE")
    assert not key.verifier.verify(sig[:-1] + bytes([sig[-1] ^ 1]), b"message")
    assert not key.verifier.verify(b"short", b"message")
    assert "private" not in repr(key).lower() and key.key_id.hex() in repr(key)


def test_private_key_file_is_0600_and_roundtrips(tmp_path: Path) -> None:
    key = generate_signing_key("fedunlearn.example/run")
    path = save_private_key(key, tmp_path / "log.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    loaded = load_signing_key(path, name="fedunlearn.example/run")
    assert loaded.verifier.raw == key.verifier.raw
    assert loaded.verifier.verify(loaded.sign(b"x"), b"x")


def test_private_key_is_never_overwritten_silently(tmp_path: Path) -> None:
    path = tmp_path / "log.key"
    first = generate_signing_key("a.example")
    save_private_key(first, path)
    with pytest.raises(LedgerError, match="already exists"):
        save_private_key(generate_signing_key("a.example"), path)
    assert load_signing_key(path, name="a.example").verifier.raw == first.verifier.raw
    os.chmod(path, 0o644)
    second = generate_signing_key("a.example")
    save_private_key(second, path, overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # tightened again
    assert load_signing_key(path, name="a.example").verifier.raw == second.verifier.raw


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_group_readable_private_key_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = save_private_key(generate_signing_key("a.example"), tmp_path / "k")
    os.chmod(path, 0o640)
    with pytest.raises(LedgerError, match="chmod 600"):
        load_signing_key(path, name="a.example")


def test_bad_private_key_files(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="cannot read"):
        load_signing_key(tmp_path / "missing", name="a.example")
    junk = tmp_path / "junk"
    junk.write_text("not a key")
    junk.chmod(0o600)
    with pytest.raises(LedgerError, match="not an unencrypted PEM"):
        load_signing_key(junk, name="a.example")


def test_public_key_file_is_a_c2sp_verifier_key(tmp_path: Path) -> None:
    key = peter_signing_key()
    path = save_public_key(key, tmp_path / "log.pub")
    assert path.read_text() == PETER_VKEY + "\n"
    assert load_public_key(path).vkey == PETER_VKEY
    path.write_text(PETER_VKEY.replace("ARpc", "ARpd"))
    with pytest.raises(IntegrityError):
        load_public_key(path)


def test_as_verifier_accepts_every_public_form() -> None:
    key = peter_signing_key().verifier
    raw_b64 = base64.b64encode(key.raw).decode()
    for form in (key, key.public_key, key.raw, raw_b64, PETER_VKEY):
        assert as_verifier(form, "PeterNeumann").vkey == PETER_VKEY
    assert as_verifier(PETER_VKEY).name == "PeterNeumann"
    with pytest.raises(ConfigError, match="carries no key name"):
        as_verifier(key.raw)
    with pytest.raises(ConfigError, match="named 'PeterNeumann'"):
        as_verifier(key, "EnochRoot")
    with pytest.raises(ConfigError, match="not usable"):
        as_verifier(12345, "PeterNeumann")  # type: ignore[arg-type]
