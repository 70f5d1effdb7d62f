"""Purging abandoned aggregates that depend on an erased organization (schema version 2)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fedunlearn.errors import LedgerError, RunStateError
from fedunlearn.ledger import Checkpoint, Contribution, Ledger

MakeState = Callable[..., dict[str, torch.Tensor]]


def _commit(ledger: Ledger, shard: int, parent: Checkpoint | None, state: dict[str, torch.Tensor],
            members: dict[str, dict[str, torch.Tensor]]) -> Checkpoint:
    """Store ``members``' updates (encrypted) and ``state`` (clear), commit the next round."""
    contributions = [Contribution(org, ledger.put_state(update, org=org), 1.0, 10)
                     for org, update in sorted(members.items())]
    return ledger.commit_round(shard=shard, round=0 if parent is None else parent.round + 1,
                               aggregate_hash=ledger.put_state(state), contributions=contributions,
                               parent_id=None if parent is None else parent.id)


@pytest.fixture
def erased_late_joiner(ledger: Ledger, make_state: MakeState) -> tuple[Ledger, dict[str, Checkpoint]]:
    """Shard 0: ``a`` from round 1, ``b`` joins at round 2 alone with ``a`` absent (its update is
    the round-2 aggregate), round 3 both; then SISA-style: roll back to round 1, replay without
    ``b``, mark ``b`` erased. Shard 1: ``c`` alone (S = N), untouched."""
    ledger.register_organization("a", shard=0)
    ledger.register_organization("b", shard=0, join_round=2)
    ledger.register_organization("c", shard=1)
    root = _commit(ledger, 0, None, make_state(0), {})
    r1 = _commit(ledger, 0, root, make_state(1), {"a": make_state(1)})
    b_alone = make_state(2)
    r2 = _commit(ledger, 0, r1, b_alone, {"b": b_alone})  # single member: aggregate == update
    r3 = _commit(ledger, 0, r2, make_state(3), {"a": make_state(31), "b": make_state(32)})
    other = _commit(ledger, 1, None, make_state(10), {})
    other1 = _commit(ledger, 1, other, make_state(11), {"c": make_state(11)})
    ledger.rollback(0, r1.id)
    n2 = _commit(ledger, 0, r1, make_state(1), {})  # carry-over: nobody trained in round 2
    n3 = _commit(ledger, 0, n2, make_state(4), {"a": make_state(41)})
    ledger.record_served(served_hash="f" * 64, components=[n3.id, other1.id], weights=[0.5, 0.5],
                         path="export/served")
    ledger.mark_erased("b")
    return ledger, {"root": root, "r1": r1, "r2": r2, "r3": r3, "n2": n2, "n3": n3, "other1": other1}


def test_purge_deletes_abandoned_dependents_and_keeps_their_hashes(erased_late_joiner) -> None:
    ledger, ck = erased_late_joiner
    b_update = ledger.update_hashes("b")[0]
    assert ledger.has_state(b_update)  # the gap: b's update is readable in the clear as r2
    purged = ledger.purge_dependents("b")
    assert [c.id for c in purged] == [ck["r2"].id, ck["r3"].id]
    assert not ledger.has_state(ck["r2"].hash) and not ledger.has_state(ck["r3"].hash)
    assert not any(ledger.has_state(d) for d in ledger.update_hashes("b"))
    assert ledger.checkpoint(ck["r2"].id).hash == ck["r2"].hash  # the audit log's references stay
    for kept in ("root", "r1", "n2", "n3", "other1"):  # head chains and the served model
        assert ledger.has_state(ck[kept].hash), kept
    assert ledger.purged() == purged == ledger.purged("b")
    assert ledger.verify_blobs() == []


def test_purge_is_idempotent(erased_late_joiner, run_dir: Path) -> None:
    ledger, ck = erased_late_joiner
    first = ledger.purge_dependents("b")
    files = sorted(p.name for p in (run_dir / "blobs").rglob("*") if p.is_file())
    assert ledger.purge_dependents("b") == first
    assert ledger.purge_erased() == first
    assert sorted(p.name for p in (run_dir / "blobs").rglob("*") if p.is_file()) == files
    assert ledger.verify_blobs() == []


def test_interrupted_purge_is_reported_and_completed(erased_late_joiner) -> None:
    ledger, ck = erased_late_joiner
    assert "depend on an erased organization" in " ".join(ledger.verify_blobs())  # not purged yet
    ledger.purge_dependents("b")
    path = ledger.blobs.path(ck["r2"].hash)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"left by a purge that crashed before deleting")  # recorded, not yet deleted
    problems = ledger.verify_blobs()
    assert len(problems) == 1 and "still readable" in problems[0] and ck["r2"].hash in problems[0]
    ledger.purge_erased()
    assert not path.exists() and ledger.verify_blobs() == []


def test_a_blob_deleted_without_a_purge_record_is_still_reported(erased_late_joiner) -> None:
    ledger, ck = erased_late_joiner
    ledger.purge_dependents("b")
    for path in ledger.aggregate_paths(ck["r1"].hash):  # on the head chain, never purged: deleted by hand
        path.unlink()
    problems = ledger.verify_blobs()
    assert len(problems) == 1 and ck["r1"].hash in problems[0] and "missing" in problems[0]


def test_reading_a_purged_aggregate_says_it_was_purged(erased_late_joiner) -> None:
    ledger, ck = erased_late_joiner
    ledger.purge_dependents("b")
    with pytest.raises(LedgerError, match="purged"):
        ledger.get_state(ck["r2"].hash)


def test_purge_refuses_an_active_organization(erased_late_joiner) -> None:
    ledger, _ = erased_late_joiner
    with pytest.raises(RunStateError, match="'a' is active, not erased"):
        ledger.purge_dependents("a")


def test_the_served_model_and_equal_head_chain_blobs_are_never_deleted(
    ledger: Ledger, make_state: MakeState,
) -> None:
    ledger.register_organization("a", shard=0)
    ledger.register_organization("b", shard=0)
    root = _commit(ledger, 0, None, make_state(0), {})
    r1 = _commit(ledger, 0, root, make_state(1), {"a": make_state(11), "b": make_state(12)})
    r2 = _commit(ledger, 0, r1, make_state(2), {"a": make_state(21), "b": make_state(22)})
    ledger.record_served(served_hash="e" * 64, components=[r1.id], weights=[1.0], path="export/served")
    ledger.rollback(0, root.id)
    n1 = _commit(ledger, 0, root, make_state(2), {"a": make_state(21)})  # equal content to r2
    ledger.mark_erased("b")
    assert ledger.purge_dependents("b") == []  # r1: served; r2: same bytes as the head n1
    assert ledger.has_state(r1.hash) and ledger.has_state(r2.hash) and n1.hash == r2.hash
    ledger.record_served(served_hash="d" * 64, components=[n1.id], weights=[1.0], path="export/served")
    assert [c.id for c in ledger.purge_dependents("b")] == [r1.id]
    assert ledger.verify_blobs() == []


def test_head_chain_dependents_stay_after_an_approximate_erasure(
    ledger: Ledger, make_state: MakeState,
) -> None:
    """influence/subtract/negate commit a correction on top of the head: nothing is abandoned,
    the chain the served head derives from keeps the subject's contributions (``empirical``)."""
    ledger.register_organization("a", shard=0)
    ledger.register_organization("b", shard=0)
    root = _commit(ledger, 0, None, make_state(0), {})
    r1 = _commit(ledger, 0, root, make_state(1), {"a": make_state(11), "b": make_state(12)})
    fix = _commit(ledger, 0, r1, make_state(5), {})
    ledger.mark_erased("b")
    assert ledger.purge_erased() == []
    assert all(ledger.has_state(c.hash) for c in (root, r1, fix))
    assert [d.shard for d in ledger.dependents("b")] == [0]
    assert ledger.verify_blobs() == []


def test_a_version_1_ledger_is_upgraded_on_open(ledger: Ledger, run_dir: Path,
                                                 make_state: MakeState) -> None:
    ledger.register_organization("a", shard=0)
    _commit(ledger, 0, None, make_state(0), {})
    ledger.close()
    with sqlite3.connect(run_dir / "ledger.sqlite") as conn:  # what version 1 wrote
        conn.execute("DROP TABLE purged")
        conn.execute("DROP TABLE compacted")  # added by version 3
        conn.execute("PRAGMA user_version = 1")
    with Ledger.open(run_dir) as reopened:
        assert reopened.purged() == [] and reopened.verify_blobs() == []
        assert reopened.head(0).round == 0
    with sqlite3.connect(run_dir / "ledger.sqlite") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == Ledger.SCHEMA_VERSION == 3


def test_a_purge_made_before_aggregates_had_keys_verifies(erased_late_joiner) -> None:
    """A run purged by an older fedunlearn: the blob is gone and no key or tombstone was ever made for it."""
    from fedunlearn.ledger.keys import aggregate_key_name

    ledger, ck = erased_late_joiner
    ledger.purge_dependents("b")
    for checkpoint in ledger.purged("b"):  # as the old purge left it: no key, no tombstone
        name = aggregate_key_name(checkpoint.hash)
        for path in (ledger.keys.key_path(name), ledger.keys.tombstone_path(name)):
            path.unlink(missing_ok=True)
    assert ledger.verify_blobs() == []
    key = ledger.keys.key_path(aggregate_key_name(ck["r2"].hash))
    key.write_bytes(b"k" * 32)  # a key left behind: the aggregate's copies elsewhere would stay readable
    problems = ledger.verify_blobs()
    assert len(problems) == 1 and "was not shredded" in problems[0] and ck["r2"].hash in problems[0]
