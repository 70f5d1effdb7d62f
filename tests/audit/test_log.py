"""The SQLite audit log: append, checkpoint, proofs, verification and tamper evidence."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedunlearn.audit import (
    EVENT_TYPES,
    AuditLog,
    SigningKey,
    generate_signing_key,
    leaf_hash,
    parse_and_verify_checkpoint,
    root_hash,
    verify_consistency,
    verify_entry_in_checkpoint,
)
from fedunlearn.errors import ConfigError, IntegrityError, LedgerError, UnknownNameError

ORIGIN = "fedunlearn.example/run-7"
T0 = "2025-01-31T12:00:00Z"

EVENTS = [
    {"type": "enrolment", "org": "k:3f2a", "shard": 0, "time": T0},
    {"type": "enrolment", "org": "k:9b1c", "shard": 1, "time": T0},
    {"type": "round-commit", "round": 1, "shard": 0, "adapter": "sha256:ab", "time": T0},
    {"type": "erasure-request", "org": "k:9b1c", "time": T0},
    {"type": "erasure-applied", "org": "k:9b1c", "method": "sisa", "epsilon": "0.5", "time": T0},
    {"type": "certificate", "sha256": "cd" * 32, "time": T0},
    {"type": "refusal", "reason": "unknown organization", "time": T0},
]


@pytest.fixture
def key() -> SigningKey:
    return generate_signing_key(ORIGIN)


@pytest.fixture
def log(tmp_path: Path, key: SigningKey) -> Iterator[AuditLog]:
    with AuditLog.open(tmp_path / "audit.sqlite", origin=ORIGIN, signer=key) as opened:
        # Tests need no power-loss durability; skipping fsync makes each commit ~50x cheaper.
        opened._conn.execute("PRAGMA synchronous = OFF")
        yield opened


def _fill(log: AuditLog) -> list[str]:
    """Append EVENTS with checkpoints at sizes 2, 5 and 7; return the notes."""
    notes = []
    for i, event in enumerate(EVENTS):
        assert log.append(event) == i
        if i + 1 in (2, 5, 7):
            notes.append(log.checkpoint())
    return notes


def _raw(log: AuditLog) -> sqlite3.Connection:
    """A second connection to the file with the append-only triggers dropped (an attacker)."""
    conn = sqlite3.connect(log.path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # the attacker need not fsync; keeps tests fast
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    return conn


def _flip(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[pos] ^= mask
    return bytes(out)


# --- appending --------------------------------------------------------------------------------


def test_append_stores_canonical_json_and_adds_time(log: AuditLog) -> None:
    assert log.append({"type": "key-rotation", "vkey": "x+00000000+AA=="}) == 0
    assert log.append({"z": 1, "type": "enrolment", "a": "b", "time": T0}) == 1
    first, second = log.entries()
    event = json.loads(first)
    assert event["time"].endswith("Z") and event["time"][:2] == "20"
    assert second == b'{"a":"b","time":"2025-01-31T12:00:00Z","type":"enrolment","z":1}'
    assert log.leaf_hashes() == [leaf_hash(first), leaf_hash(second)]
    assert len(log) == log.size == 2


def test_every_event_type_is_accepted(log: AuditLog) -> None:
    for kind in sorted(EVENT_TYPES):
        log.append({"type": kind})
    assert log.size == len(EVENT_TYPES) == 14


@pytest.mark.parametrize(
    ("event", "error", "fragment"),
    [
        ({"type": "erasure"}, UnknownNameError, "valid audit event types are: 'budget-exhausted', 'certificate', 'compaction'"),
        ({"org": "x"}, ConfigError, "no string 'type'"),
        ("enrolment", ConfigError, "must be a mapping"),
        ({"type": "refusal", "epsilon": 0.5}, ConfigError, "encode decimals as strings"),
        ({"type": "refusal", "time": "yesterday"}, ConfigError, "not RFC 3339"),
        ({"type": "refusal", "time": "2025-02-30T00:00:00Z"}, ConfigError, "not RFC 3339"),
        ({"type": "refusal", "time": "2025-01-31 12:00:00"}, ConfigError, "not RFC 3339"),
    ],
)
def test_invalid_events_are_rejected_and_nothing_is_written(
    log: AuditLog, event: object, error: type, fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        log.append(event)  # type: ignore[arg-type]
    assert log.size == 0


def test_rfc3339_times_with_offsets_and_fractions_are_kept(log: AuditLog) -> None:
    for stamp in ("2025-01-31T12:00:00.123456789+01:00", "2025-01-31T12:00:00-05:30"):
        log.append({"type": "refusal", "time": stamp})
    times = [json.loads(e)["time"] for e in log.entries()]
    assert times == ["2025-01-31T12:00:00.123456789+01:00", "2025-01-31T12:00:00-05:30"]


def test_two_writers_interleave_without_gaps(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "audit.sqlite"
    a = AuditLog.open(path, origin=ORIGIN, signer=key)
    b = AuditLog.open(path, origin=ORIGIN)
    with a, b:
        got = [w.append({"type": "refusal", "n": i}) for i, w in enumerate([a, b, a, b, b])]
        assert got == [0, 1, 2, 3, 4]
        a.checkpoint()
        assert b.verify(key.verifier).ok


# --- checkpoints and proofs -------------------------------------------------------------------


def test_checkpoint_signs_current_size_and_root(log: AuditLog, key: SigningKey) -> None:
    notes = _fill(log)
    assert log.checkpoints() == notes and log.latest_checkpoint() == notes[-1]
    for note, size in zip(notes, (2, 5, 7)):
        cp = parse_and_verify_checkpoint(note, key.verifier, ORIGIN)
        assert (cp.origin, cp.size) == (ORIGIN, size)
        assert cp.root == log.root(size) == root_hash(log.entries(0, size))


def test_empty_log_checkpoint_and_verify(log: AuditLog, key: SigningKey) -> None:
    assert log.latest_checkpoint() is None
    assert log.verify(key.verifier).ok
    note = log.checkpoint()
    assert parse_and_verify_checkpoint(note, key.verifier, ORIGIN).size == 0
    log.append(EVENTS[0])
    log.checkpoint()
    report = log.verify(key.verifier)
    assert report.ok and report.signed_size == 1 and report.checkpoints == 2


def test_inclusion_and_consistency_proofs_verify_against_checkpoints(
    log: AuditLog, key: SigningKey
) -> None:
    notes = _fill(log)
    entries = log.entries()
    for note, size in zip(notes, (2, 5, 7)):
        for index in range(size):
            proof = log.inclusion_proof(index, size)
            entry = entries[index]
            cp = verify_entry_in_checkpoint(entry, index, proof, note, key.verifier, ORIGIN)
            assert cp.size == size
            with pytest.raises(IntegrityError, match=f"entry {index} is not included"):
                verify_entry_in_checkpoint(entry + b" ", index, proof, note, key.verifier, ORIGIN)
    cps = [parse_and_verify_checkpoint(n, key.verifier, ORIGIN) for n in notes]
    for old in cps:
        for new in cps:
            if old.size <= new.size:
                proof = log.consistency_proof(old.size, new.size)
                assert verify_consistency(old.size, new.size, old.root, new.root, proof)


def test_proof_arguments_are_checked(log: AuditLog) -> None:
    _fill(log)
    with pytest.raises(ConfigError, match="not within the log's 7 entries"):
        log.inclusion_proof(0, 8)
    with pytest.raises(ConfigError, match="leaf index 5"):
        log.inclusion_proof(5, 5)
    with pytest.raises(ConfigError):
        log.consistency_proof(5, 3)
    with pytest.raises(ConfigError):
        log.entries(3, 99)


def test_checkpoint_needs_a_signer(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "a.sqlite", origin=ORIGIN) as log:
        log.append(EVENTS[0])
        with pytest.raises(ConfigError, match="without a signer"):
            log.checkpoint()


def test_reopen_keeps_data_and_checks_origin(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "audit.sqlite"
    with AuditLog.open(path, origin=ORIGIN, signer=key) as log:
        _fill(log)
    with AuditLog.open(path, origin=ORIGIN, create=False) as log:
        assert log.size == 7 and log.verify(key.verifier).ok
    with pytest.raises(ConfigError, match="belongs to origin"):
        AuditLog.open(path, origin="other.example/log")
    with pytest.raises(LedgerError, match="no audit log"):
        AuditLog.open(tmp_path / "missing.sqlite", origin=ORIGIN, create=False)
    with pytest.raises(ConfigError):
        AuditLog.open(path, origin="has space")


# --- append-only ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE entries SET entry = x'00' WHERE idx = 1",
        "DELETE FROM entries WHERE idx = 6",
        "UPDATE checkpoints SET size = 1",
        "DELETE FROM checkpoints",
        "UPDATE meta SET value = 'x'",
        "DELETE FROM meta",
        "INSERT INTO entries (idx, entry, leaf_hash) VALUES (9, x'00', x'00')",
        "INSERT OR REPLACE INTO entries (idx, entry, leaf_hash) VALUES (0, x'00', x'00')",
        "INSERT INTO checkpoints (seq, size, root, note) VALUES (0, 0, x'00', x'00')",
    ],
)
def test_updates_and_deletes_are_refused(log: AuditLog, statement: str) -> None:
    _fill(log)
    conn = sqlite3.connect(log.path, isolation_level=None)
    with pytest.raises(sqlite3.DatabaseError, match="append-only|next index"):
        conn.execute(statement)
    conn.close()
    assert log.size == 7


# --- tamper evidence --------------------------------------------------------------------------


def test_one_byte_change_of_any_entry_is_reported_by_index(log: AuditLog, key: SigningKey) -> None:
    _fill(log)
    raw = _raw(log)
    for idx, entry in enumerate(log.entries()):
        for pos in (0, len(entry) // 2, len(entry) - 1):
            raw.execute("UPDATE entries SET entry = ? WHERE idx = ?", (_flip(entry, pos), idx))
            report = log.verify(key.verifier)
            assert not report.ok
            assert any(p.startswith(f"entry {idx}:") for p in report.problems), report.problems
            raw.execute("UPDATE entries SET entry = ? WHERE idx = ?", (entry, idx))
    assert log.verify(key.verifier).ok


def test_rewriting_an_entry_and_its_hash_is_caught_by_the_checkpoints(
    log: AuditLog, key: SigningKey
) -> None:
    _fill(log)
    raw = _raw(log)
    forged = log.entries(3, 4)[0].replace(b"k:9b1c", b"k:0000")
    raw.execute(
        "UPDATE entries SET entry = ?, leaf_hash = ? WHERE idx = 3", (forged, leaf_hash(forged))
    )
    problems = log.verify(key.verifier).problems
    assert any(p.startswith("checkpoint 1 (size 5)") and "match the root" in p for p in problems)
    assert any(p.startswith("checkpoint 2 (size 7)") for p in problems)
    assert not any(p.startswith("checkpoint 0 ") for p in problems)  # entries 0-1 untouched
    with pytest.raises(IntegrityError, match="refusing to sign"):
        log.checkpoint()


def test_one_byte_change_of_any_checkpoint_is_reported_by_number(
    log: AuditLog, key: SigningKey
) -> None:
    _fill(log)
    raw = _raw(log)
    rows = raw.execute("SELECT seq, note FROM checkpoints ORDER BY seq").fetchall()
    for seq, note in rows:
        for pos in range(len(note)):
            raw.execute("UPDATE checkpoints SET note = ? WHERE seq = ?", (_flip(note, pos), seq))
            report = log.verify(key.verifier)
            assert not report.ok
            named = [p for p in report.problems if p.startswith(f"checkpoint {seq} ")]
            assert named, (pos, report.problems)
        raw.execute("UPDATE checkpoints SET note = ? WHERE seq = ?", (note, seq))
    assert log.verify(key.verifier).ok


def test_stored_columns_must_agree_with_the_signed_note(log: AuditLog, key: SigningKey) -> None:
    _fill(log)
    raw = _raw(log)
    raw.execute("UPDATE checkpoints SET size = 4 WHERE seq = 1")
    problems = log.verify(key.verifier).problems
    assert problems == [p for p in problems if p.startswith("checkpoint 1 ")] and problems


def test_removed_entries_and_checkpoints_are_reported(log: AuditLog, key: SigningKey) -> None:
    _fill(log)
    raw = _raw(log)
    raw.execute("DELETE FROM entries WHERE idx = 3")
    raw.execute("DELETE FROM checkpoints WHERE seq = 1")
    problems = log.verify(key.verifier).problems
    assert any(p.startswith("entry 3: missing") for p in problems)
    assert any(p.startswith("checkpoint 1: missing") for p in problems)
    assert any(p.startswith("checkpoint 2 (size 7)") and "only 6" in p for p in problems)


def test_a_rollback_needs_a_checkpoint_kept_elsewhere(log: AuditLog, key: SigningKey) -> None:
    notes = _fill(log)
    raw = _raw(log)
    raw.execute("DELETE FROM checkpoints WHERE seq = 2")
    raw.execute("DELETE FROM entries WHERE idx >= 5")
    assert log.verify(key.verifier).ok  # self-consistent: only an outside copy can tell
    report = log.verify(key.verifier, known_checkpoints=[notes[2]])
    assert not report.ok and report.problems[0].startswith("known checkpoint 0 (size 7)")


def test_verify_with_the_wrong_key_fails_on_every_checkpoint(log: AuditLog) -> None:
    _fill(log)
    report = log.verify(generate_signing_key(ORIGIN).verifier)
    assert not report.ok and len(report.problems) == 3
    assert all("no signature from key" in p for p in report.problems)
    assert log.verify(generate_signing_key(ORIGIN).verifier.raw).signed_size == 0


def test_verify_accepts_the_public_key_in_any_form(log: AuditLog, key: SigningKey) -> None:
    _fill(log)
    for form in (key.verifier, key.verifier.vkey, key.verifier.raw, key.verifier.public_key):
        report = log.verify(form)
        assert report.ok
        assert (report.size, report.checkpoints, report.signed_size) == (7, 3, 7)


def test_a_replayed_older_checkpoint_is_reported(log: AuditLog, key: SigningKey) -> None:
    notes = _fill(log)
    raw = _raw(log)
    root = parse_and_verify_checkpoint(notes[0], key.verifier, ORIGIN).root
    raw.execute(
        "INSERT INTO checkpoints (seq, size, root, note) VALUES (3, 2, ?, ?)",
        (root, notes[0].encode()),
    )
    problems = log.verify(key.verifier).problems
    assert problems == ["checkpoint 3 (size 2): smaller than checkpoint 2 (size 7); "
                        "an append-only log never shrinks"]


def test_checkpoint_refuses_to_sign_entries_that_do_not_match_their_hash(
    log: AuditLog, key: SigningKey
) -> None:
    _fill(log)
    log.append({"type": "refusal", "reason": "late"})
    raw = _raw(log)
    raw.execute("UPDATE entries SET entry = x'7b7d' WHERE idx = 7")
    with pytest.raises(IntegrityError, match="entry 7 does not match its leaf hash"):
        log.checkpoint()
    raw.execute("UPDATE entries SET leaf_hash = x'00' WHERE idx = 0")
    with pytest.raises(IntegrityError, match="entry 0 does not match"):
        log.checkpoint()
    assert len(log.checkpoints()) == 3  # nothing was signed
