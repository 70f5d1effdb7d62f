"""Run folders: create/open, schema versions, resume, encrypted states, erasure, verification."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import fedunlearn.ledger as ledger_package
from fedunlearn.errors import IntegrityError, LedgerError, RunStateError, UnknownNameError
from fedunlearn.ledger import Contribution, Ledger, Organization, ShreddedError, state_sha256

MakeState = Callable[..., dict[str, torch.Tensor]]


def assert_states_equal(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert list(left) == sorted(right)
    for name in right:
        assert torch.equal(left[name], right[name])


def test_create_lays_out_the_run_folder(ledger: Ledger, run_dir: Path) -> None:
    assert (run_dir / "ledger.sqlite").is_file()
    assert (run_dir / "blobs").is_dir()
    assert stat.S_IMODE((run_dir / "keys").stat().st_mode) == 0o700
    assert ledger.meta == {"seed": "0"}
    ledger.set_meta("model", "tiny")
    assert ledger.meta == {"model": "tiny", "seed": "0"}
    with sqlite3.connect(run_dir / "ledger.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == Ledger.SCHEMA_VERSION


def test_create_refuses_an_existing_run(ledger: Ledger, run_dir: Path) -> None:
    with pytest.raises(RunStateError, match="already exists"):
        Ledger.create(run_dir, meta={})


def test_open_refuses_missing_ledger(tmp_path: Path) -> None:
    with pytest.raises(RunStateError, match="no ledger at"):
        Ledger.open(tmp_path / "nowhere")


def test_open_names_both_schema_versions(ledger: Ledger, run_dir: Path) -> None:
    ledger.close()
    with sqlite3.connect(run_dir / "ledger.sqlite") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(RunStateError, match=rf"schema version 99.*schema version {Ledger.SCHEMA_VERSION}\b"):
        Ledger.open(run_dir)


def test_open_refuses_a_foreign_sqlite_file(tmp_path: Path) -> None:
    tmp_path.joinpath("ledger.sqlite").touch()
    with sqlite3.connect(tmp_path / "ledger.sqlite") as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(RunStateError, match="not a fedunlearn ledger"):
        Ledger.open(tmp_path)


def test_open_refuses_a_non_database(tmp_path: Path) -> None:
    tmp_path.joinpath("ledger.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RunStateError):
        Ledger.open(tmp_path)


def test_closed_ledger_says_so(ledger: Ledger) -> None:
    ledger.close()
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.head(0)


def test_resume_after_an_interrupted_round(
    ledger: Ledger, run_dir: Path, make_state: MakeState
) -> None:
    ledger.register_organization("a", shard=0)
    root = ledger.commit_round(shard=0, round=0, aggregate_hash=ledger.put_state(make_state(0)),
                               contributions=[], parent_id=None)
    update1 = ledger.put_state(make_state(1), org="a")
    round1 = ledger.commit_round(shard=0, round=1, aggregate_hash=ledger.put_state(make_state(2)),
                                 contributions=[Contribution("a", update1, 1.0, 4)],
                                 parent_id=root.id)
    # Round 2: blobs written, then the process dies before commit_round.
    ledger.put_state(make_state(3), org="a")
    ledger.put_state(make_state(4))
    ledger.close()

    with Ledger.open(run_dir) as resumed:
        head = resumed.head(0)
        assert head == round1
        assert [c.round for c in resumed.chain(0)] == [0, 1]
        assert resumed.verify_blobs() == []  # orphans are harmless
        # Redo round 2 from the head; storing the same blobs again is a no-op.
        update2 = resumed.put_state(make_state(3), org="a")
        aggregate2 = resumed.put_state(make_state(4))
        round2 = resumed.commit_round(shard=0, round=2, aggregate_hash=aggregate2,
                                      contributions=[Contribution("a", update2, 1.0, 4)],
                                      parent_id=head.id)
        assert resumed.head(0) == round2
        assert_states_equal(resumed.get_state(round2.hash), make_state(4))


def test_states_round_trip_plain_and_encrypted(ledger: Ledger, make_state: MakeState) -> None:
    ledger.register_organization("a", shard=0)
    state = make_state(5)
    aggregate = ledger.put_state(state)
    update = ledger.put_state(state, org="a")  # equal content, stored separately, encrypted
    assert aggregate == update == state_sha256(state)
    assert_states_equal(ledger.get_state(aggregate), state)
    assert_states_equal(ledger.get_state(update, org="a"), state)
    assert ledger.has_state(update, org="a") and ledger.has_state(aggregate)
    for path in ledger.aggregate_paths(aggregate):
        path.unlink()
    assert_states_equal(ledger.get_state(update, org="a"), state)
    with pytest.raises(UnknownNameError, match="unknown organization 'zz'"):
        ledger.put_state(state, org="zz")


def test_erasure_shreds_the_key_and_updates_become_unreadable(
    ledger: Ledger, run_dir: Path, make_state: MakeState
) -> None:
    ledger.register_organization("a", shard=0)
    ledger.register_organization("b", shard=0)
    update_a = ledger.put_state(make_state(6), org="a")
    update_b = ledger.put_state(make_state(7), org="b")
    ledger.mark_erased("a")
    assert ledger.keys.is_shredded("a")
    assert ledger.blobs.exists(update_a, encrypted=True, aad=b"a")  # ciphertext may remain...
    with pytest.raises(ShreddedError, match="shredded"):
        ledger.get_state(update_a, org="a")  # ...but it is unreadable
    assert_states_equal(ledger.get_state(update_b, org="b"), make_state(7))
    with Ledger.open(run_dir) as reopened:
        with pytest.raises(ShreddedError):
            reopened.get_state(update_a, org="a")
        assert reopened.organization("a") == Organization("a", 0, 1, "erased")


def test_interrupted_erasure_is_finished_on_read(ledger: Ledger, make_state: MakeState) -> None:
    ledger.register_organization("a", shard=0)
    update = ledger.put_state(make_state(8), org="a")
    with sqlite3.connect(ledger.path) as conn:  # status written, crash before the shred
        conn.execute("UPDATE organizations SET status = 'erased' WHERE name = 'a'")
    with pytest.raises(ShreddedError):
        ledger.get_state(update, org="a")
    assert not ledger.keys.key_path("a").exists()


def test_tampered_state_is_never_returned(
    ledger: Ledger, make_state: MakeState, flip_byte: Callable[..., None]
) -> None:
    ledger.register_organization("a", shard=0)
    aggregate = ledger.put_state(make_state(9))
    update = ledger.put_state(make_state(10), org="a")
    flip_byte(ledger.aggregate_paths(aggregate)[0], 100)
    flip_byte(ledger.update_paths(update, "a")[0], 100)
    with pytest.raises(IntegrityError):
        ledger.get_state(aggregate)
    with pytest.raises(IntegrityError):
        ledger.get_state(update, org="a")


def test_verify_blobs_reports_tampered_and_missing_blobs(
    ledger: Ledger, make_state: MakeState, flip_byte: Callable[..., None]
) -> None:
    ledger.register_organization("a", shard=0)
    ledger.register_organization("b", shard=0)
    root = ledger.commit_round(shard=0, round=0, aggregate_hash=ledger.put_state(make_state(0)),
                               contributions=[], parent_id=None)
    update_a = ledger.put_state(make_state(1), org="a")
    update_b = ledger.put_state(make_state(2), org="b")
    aggregate = ledger.put_state(make_state(3))
    ledger.commit_round(shard=0, round=1, aggregate_hash=aggregate, parent_id=root.id,
                        contributions=[Contribution("a", update_a, 0.5, 1),
                                       Contribution("b", update_b, 0.5, 1)])
    assert ledger.verify_blobs() == []

    [aggregate_file] = ledger.aggregate_paths(aggregate)
    flip_byte(aggregate_file)
    [update_file] = ledger.update_paths(update_a, "a")
    flip_byte(update_file, 40)
    for path in ledger.aggregate_paths(root.hash):
        path.unlink()
    problems = ledger.verify_blobs()
    assert len(problems) == 3
    joined = "\n".join(problems)
    for digest, path in [(aggregate, aggregate_file), (update_a, update_file),
                         (root.hash, ledger.blobs.path(root.hash))]:
        assert digest in joined and str(path) in joined
    # Erased organizations' updates are unreadable by design, not a problem.
    ledger.mark_erased("a")
    assert len(ledger.verify_blobs()) == 2


def test_register_is_idempotent_and_refuses_conflicts(ledger: Ledger) -> None:
    ledger.register_organization("a", shard=1, join_round=2)
    ledger.register_organization("a", shard=1, join_round=2)
    assert ledger.organizations() == [Organization("a", 1, 2, "active")]
    with pytest.raises(RunStateError, match="already registered in shard 1 from round 2"):
        ledger.register_organization("a", shard=0, join_round=2)
    with pytest.raises(LedgerError, match="join_round is 0"):
        ledger.register_organization("b", shard=0, join_round=0)
    with pytest.raises(LedgerError, match="non-empty string"):
        ledger.register_organization("", shard=0)
    with pytest.raises(UnknownNameError, match="valid organizations are: 'a'"):
        ledger.organization("b")


def test_meta_must_be_strings(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="holds strings"):
        Ledger.create(tmp_path, meta={"rounds": 3})  # type: ignore[dict-item]
    assert not (tmp_path / "ledger.sqlite").exists()


def test_stats(ledger: Ledger, make_state: MakeState) -> None:
    ledger.register_organization("a", shard=0)
    ledger.commit_round(shard=0, round=0, aggregate_hash=ledger.put_state(make_state(0)),
                        contributions=[], parent_id=None)
    stats = ledger.stats()
    assert stats["rounds_per_shard"] == {0: 0}
    assert stats["checkpoints"] == 1 and stats["updates"] == 0 and stats["organizations"] == 1
    assert stats["blob_bytes"] > 0 and stats["database_bytes"] > 0


def test_public_api_is_sorted_and_exported() -> None:
    names = ledger_package.__all__
    assert names == sorted(names)
    assert all(hasattr(ledger_package, name) for name in names)
    assert issubclass(ShreddedError, LedgerError)
