"""C2SP signed notes and tlog checkpoints.

Golden notes: Go's golang.org/x/mod/sumdb/note tests (note_test.go: TestSign, TestOpen) and the
example of c2sp.org/signed-note.
"""

from __future__ import annotations

import hashlib

import pytest

from fedunlearn.audit.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    parse_and_verify_checkpoint,
    parse_checkpoint_body,
    sign_checkpoint,
    sign_note,
    verify_note,
)
from fedunlearn.audit.keys import generate_signing_key
from fedunlearn.errors import ConfigError, IntegrityError

from .test_keys import ENOCH_VKEY, PETER_VKEY, SPEC_VKEY, peter_signing_key

GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNX"
    "gKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01o"
    "OTGwnWLox33WWd1RvMc+QQ=\n"
)
SPEC_NOTE = (
    "This is an example message.\n\n"
    "— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOB"
    "H3mFXmRKuwHjG1Yu72IneyaQM=\n"
)

ORIGIN = "fedunlearn.example/run-1"
ROOT = hashlib.sha256(b"root").digest()


def test_signing_matches_go_byte_for_byte() -> None:
    assert sign_note(GO_TEXT, peter_signing_key()) == GO_TEXT + "\n" + PETER_SIG


def test_spec_example_verifies() -> None:
    assert verify_note(SPEC_NOTE, SPEC_VKEY, "example.com/foo") == "This is an example message.\n"


def test_unknown_signatures_are_ignored_and_known_ones_must_verify() -> None:
    note = GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert verify_note(note, PETER_VKEY, "PeterNeumann") == GO_TEXT
    assert verify_note(note, ENOCH_VKEY, "EnochRoot") == GO_TEXT
    with pytest.raises(IntegrityError, match="no signature from key 'EnochRoot'"):
        verify_note(GO_TEXT + "\n" + PETER_SIG, ENOCH_VKEY, "EnochRoot")
    corrupted = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(IntegrityError, match="does not verify|not valid base64|canonical"):
        verify_note(GO_TEXT + "\n" + corrupted + ENOCH_SIG, PETER_VKEY, "PeterNeumann")
    # A failing signature of the known key rejects the note even if another one verifies.
    bad_peter = PETER_SIG.replace("x08go/ZJ", "x08go/ZK")
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_note(GO_TEXT + "\n" + PETER_SIG + bad_peter, PETER_VKEY, "PeterNeumann")


def test_signature_count_is_capped() -> None:
    most = GO_TEXT + "\n" + PETER_SIG * MAX_SIGNATURES
    assert verify_note(most, PETER_VKEY, "PeterNeumann") == GO_TEXT
    with pytest.raises(IntegrityError, match="signature lines"):
        verify_note(GO_TEXT + "\n" + PETER_SIG * (MAX_SIGNATURES + 1), PETER_VKEY, "PeterNeumann")


@pytest.mark.parametrize(
    "note",
    [
        GO_TEXT + "\n" + PETER_SIG[:-1],  # no final newline
        "\x01" + GO_TEXT + "\n" + PETER_SIG,  # control character
        GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        GO_TEXT + PETER_SIG,  # no blank line
        GO_TEXT + "\n",  # no signatures
        GO_TEXT + "\n" + PETER_SIG.replace("— ", "-- "),
        GO_TEXT + "\n" + PETER_SIG.replace("PeterNeumann ", "Peter Neumann "),
        GO_TEXT.replace("\n", "\r\n", 1) + "\n" + PETER_SIG,
    ],
)
def test_malformed_notes_are_rejected(note: str) -> None:
    with pytest.raises(IntegrityError):
        verify_note(note, PETER_VKEY, "PeterNeumann")


def test_misnamed_or_wrong_key_signature_is_not_accepted() -> None:
    with pytest.raises(IntegrityError, match="no signature"):
        misnamed = PETER_SIG.replace("PeterNeumann", "CarmenSandiego")
        verify_note(GO_TEXT + "\n" + misnamed, PETER_VKEY, "PeterNeumann")
    other = generate_signing_key("PeterNeumann")  # same name, other key: other key ID
    with pytest.raises(IntegrityError, match="no signature"):
        verify_note(GO_TEXT + "\n" + PETER_SIG, other.verifier, "PeterNeumann")


@pytest.mark.parametrize("text", ["", "\n", "no newline", "blank\n\nline\n", "ctrl\x07\n"])
def test_sign_note_refuses_unsignable_text(text: str) -> None:
    with pytest.raises(ConfigError):
        sign_note(text, peter_signing_key())


# --- checkpoints ----------------------------------------------------------------------------


def test_checkpoint_roundtrip_and_exact_format() -> None:
    key = generate_signing_key(ORIGIN)
    note = sign_checkpoint(ORIGIN, 17, ROOT, key)
    body, sig = note.split("\n\n")
    assert body.split("\n") == [ORIGIN, "17", "SBNJTRN+FjG7owHVrKtue7eqdM4RhdRWVl71HXN2d7I="]
    assert sig.startswith(f"\u2014 {ORIGIN} ") and sig.endswith("\n")
    assert parse_and_verify_checkpoint(note, key.verifier, ORIGIN) == Checkpoint(ORIGIN, 17, ROOT)
    assert parse_and_verify_checkpoint(note.encode(), key.verifier.raw, ORIGIN).size == 17


def test_every_single_byte_change_of_a_checkpoint_is_rejected() -> None:
    key = generate_signing_key(ORIGIN)
    data = bytearray(sign_checkpoint(ORIGIN, 1234, ROOT, key).encode("utf-8"))
    for i in range(len(data)):
        for mask in (0x01, 0x20):
            data[i] ^= mask
            with pytest.raises(IntegrityError):
                parse_and_verify_checkpoint(bytes(data), key.verifier, ORIGIN)
            data[i] ^= mask


def test_checkpoint_from_wrong_key_or_name_is_rejected() -> None:
    key = generate_signing_key(ORIGIN)
    note = sign_checkpoint(ORIGIN, 3, ROOT, key)
    with pytest.raises(IntegrityError):
        parse_and_verify_checkpoint(note, generate_signing_key(ORIGIN).verifier, ORIGIN)
    with pytest.raises(ConfigError):  # the VerifierKey's own name disagrees
        parse_and_verify_checkpoint(note, key.verifier, "other.example/log")
    with pytest.raises(IntegrityError):
        parse_and_verify_checkpoint(note, key.verifier.raw, "other.example/log")


@pytest.mark.parametrize(
    "body",
    [
        f"{ORIGIN}\n017\nSBNJTRN+FjG7owHVrKtue7eqdM4RhdRWVl71HXN2d7I=\n",  # leading zero
        f"{ORIGIN}\n+17\nSBNJTRN+FjG7owHVrKtue7eqdM4RhdRWVl71HXN2d7I=\n",
        f"{ORIGIN}\n1_7\nSBNJTRN+FjG7owHVrKtue7eqdM4RhdRWVl71HXN2d7I=\n",
        f"{ORIGIN}\n\u0661\nSBNJTRN+FjG7owHVrKtue7eqdM4RhdRWVl71HXN2d7I=\n",  # Arabic-Indic digit
        f"{ORIGIN}\n17\nSBNJTRN+FjG7owHVrKtue7eqdM4RhdRWVl71HXN2d7J=\n",  # padding bits set
        f"{ORIGIN}\n17\nSBNJTRN+FjG7owHVrKtue7eqdM4RhdRWVl71HXN2\n",  # 30 bytes
        f"{ORIGIN}\n17\nSBNJTRN+FjG7owHVrKtue7eqdM4RhdRWVl71HXN2d7I=\nextension\n",
        f"\n17\nSBNJTRN+FjG7owHVrKtue7eqdM4RhdRWVl71HXN2d7I=\n",
        f"{ORIGIN}\n17\nSBNJTRN+FjG7owHVrKtue7eqdM4RhdRWVl71HXN2d7I=",
    ],
)
def test_checkpoint_bodies_are_parsed_strictly(body: str) -> None:
    with pytest.raises(IntegrityError):
        parse_checkpoint_body(body)


@pytest.mark.parametrize(
    ("origin", "size", "root"),
    [
        ("has space", 1, ROOT),
        ("a+b", 1, ROOT),
        ("", 1, ROOT),
        (ORIGIN, -1, ROOT),
        (ORIGIN, True, ROOT),
        (ORIGIN, 1, ROOT[:31]),
        (ORIGIN, 1, ROOT.hex()),
    ],
)
def test_sign_checkpoint_rejects_bad_arguments(origin: str, size: int, root: bytes) -> None:
    with pytest.raises(ConfigError):
        sign_checkpoint(origin, size, root, generate_signing_key(ORIGIN))
