"""Ledger compaction: which blobs go, which stay, and that audits still pass afterwards."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fedunlearn.errors import LedgerError, RunStateError, UnknownNameError
from fedunlearn.ledger import CompactionPolicy, Contribution, Ledger, compact, plan_compaction
from fedunlearn.ledger.compact import AGGREGATE_ONLY, UPDATE_READERS
from fedunlearn.ledger.store import in_round_sample

MakeState = Callable[..., dict[str, torch.Tensor]]


def _round(ledger: Ledger, shard: int, rnd: int, parent: int | None, orgs: dict[str, dict], agg: dict) -> int:
    contributions = [Contribution(org=o, update_hash=ledger.put_state(s, org=o), weight=1.0 / len(orgs),
                                  num_examples=1, metrics={}) for o, s in orgs.items()]
    digest = ledger.put_state(agg)
    return ledger.commit_round(shard=shard, round=rnd, aggregate_hash=digest, contributions=contributions,
                               parent_id=parent).id


@pytest.fixture
def history(ledger: Ledger, make_state: MakeState) -> Ledger:
    """Shard 0: two rounds of a, b, then b erased by a rollback to round 0 and a new round 1 with a
    alone (the abandoned branch is purged). Shard 1: c trains round 1 twice (a rollback without an
    erasure), which leaves one abandoned checkpoint that depends on no erased organization."""
    for org, shard in (("a", 0), ("b", 0), ("c", 1)):
        ledger.register_organization(org, shard=shard)
    root = _round(ledger, 0, 0, None, {}, make_state(0))
    r1 = _round(ledger, 0, 1, root, {"a": make_state(1), "b": make_state(2)}, make_state(3))
    _round(ledger, 0, 2, r1, {"a": make_state(4), "b": make_state(5)}, make_state(6))
    ledger.rollback(0, root)
    _round(ledger, 0, 1, root, {"a": make_state(7)}, make_state(8))
    ledger.mark_erased("b")
    ledger.purge_erased()
    root1 = _round(ledger, 1, 0, None, {}, make_state(10))
    _round(ledger, 1, 1, root1, {"c": make_state(11)}, make_state(12))
    ledger.rollback(1, root1)
    _round(ledger, 1, 1, root1, {"c": make_state(13)}, make_state(14))
    return ledger


def test_policy_names_every_registered_method_and_refuses_unknown_ones() -> None:
    from fedunlearn.unlearning import UNLEARNERS

    # a new erasure method must say whether it reads stored updates before compaction can run
    assert set(UNLEARNERS.names()) == UPDATE_READERS | AGGREGATE_ONLY
    with pytest.raises(UnknownNameError, match="'sisaa'.*sisa"):
        CompactionPolicy.parse("sisaa")
    assert CompactionPolicy.parse(" Subtract ,sisa").keep == ("sisa", "subtract")


def test_default_policy_drops_updates_keeps_aggregates_and_verifies(history: Ledger, run_dir: Path) -> None:
    before = history.blobs.size_bytes()
    plan = plan_compaction(history, CompactionPolicy())
    assert history.blobs.size_bytes() == before  # a plan changes nothing
    # a's three updates; b's are shredded and were unreadable, but their files still count
    assert sorted(org for org, _ in plan.updates) == ["a", "a", "a", "b", "b", "c", "c"]
    assert plan.aggregates == []
    report = compact(history, CompactionPolicy())
    assert report.applied and report.bytes_after == plan.bytes_after < before
    hashes = {h for _, h in report.updates}
    assert not any(history.has_state(h, org="a") for h in hashes)
    # every hash stays in the lineage; heads and history aggregates are all readable
    assert set(history.update_hashes("a")) <= hashes
    for ckpt in history.chain(0):
        history.get_state(ckpt.hash)
    assert history.verify_blobs() == []
    with pytest.raises(LedgerError, match="deleted by a ledger compaction.*sisa or retrain"):
        history.get_state(history.update_hashes("a")[0], org="a")
    assert compact(history, CompactionPolicy()).updates == []  # idempotent
    assert any(k.startswith("compaction/") for k in history.meta)


def test_keeping_subtract_keeps_updates_and_drop_history_deletes_abandoned_aggregates(
        history: Ledger) -> None:
    on_chain = {c.id for s in (0, 1) for c in history.chain(s)}
    purged = {c.id for c in history.purged()}
    abandoned = [c for c in (history.checkpoint(i) for i in range(1, 8)) if c.id not in on_chain | purged]
    assert [(c.shard, c.round) for c in abandoned] == [(1, 1)]
    report = compact(history, CompactionPolicy.parse("subtract", drop_history=True))
    assert sorted(org for org, _ in report.updates) == ["b", "b"]  # only the erased organization's
    assert all(history.has_state(h, org=o) for o in "ac" for h in history.update_hashes(o))
    assert report.aggregates == [abandoned[0].hash]
    for ckpt in history.chain(0) + history.chain(1):  # never a head-chain aggregate
        history.get_state(ckpt.hash)
    assert history.verify_blobs() == []
    for digest in report.aggregates:
        with pytest.raises(LedgerError, match="compaction with drop_history"):
            history.get_state(digest)


def test_a_blob_deleted_without_a_record_is_still_reported(history: Ledger) -> None:
    compact(history, CompactionPolicy())
    victim = history.head(0).hash
    for path in history.aggregate_paths(victim):  # deleted by hand, no record
        path.unlink()
    assert any(victim in p for p in history.verify_blobs())


def test_interrupted_compaction_is_finished_by_the_next(history: Ledger, run_dir: Path) -> None:
    digest = history.update_hashes("a")[0]
    with sqlite3.connect(run_dir / "ledger.sqlite") as conn:  # recorded, but the file not yet deleted
        conn.execute("INSERT INTO compacted VALUES (?, 'a', 'update', '{}', 'now')", (digest,))
    assert history.has_state(digest, org="a")
    compact(history, CompactionPolicy.parse("subtract"))
    assert not history.has_state(digest, org="a")


def test_a_version_2_ledger_is_upgraded_with_the_compacted_table(ledger: Ledger, run_dir: Path) -> None:
    ledger.close()
    with sqlite3.connect(run_dir / "ledger.sqlite") as conn:
        conn.execute("DROP TABLE compacted")
        conn.execute("PRAGMA user_version = 2")
    with Ledger.open(run_dir) as reopened:
        assert compact(reopened, CompactionPolicy()).applied
    with sqlite3.connect(run_dir / "ledger.sqlite") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == Ledger.SCHEMA_VERSION == 3


def test_round_sample_is_seeded_stable_and_fixed_for_the_run(ledger: Ledger) -> None:
    names = [f"o{i:03d}" for i in range(200)]
    for n in names:
        ledger.register_organization(n, shard=0)
    assert ledger.members(0, 1) == sorted(names)  # no sample recorded: everyone
    ledger.set_round_sample(0.1, seed=7)
    picked = [ledger.members(0, r) for r in (1, 2, 3)]
    assert all(5 <= len(p) <= 40 for p in picked) and picked[0] != picked[1]
    assert picked[0] == [n for n in sorted(names) if in_round_sample(7, 0, 1, n, 0.1)]
    erased = picked[0][0]
    ledger.mark_erased(erased)  # the others of the round do not change
    assert ledger.members(0, 1) == picked[0][1:]
    ledger.set_round_sample(0.1, seed=7)  # same rule: fine
    with pytest.raises(RunStateError, match="fixed for the life of a run"):
        ledger.set_round_sample(0.2, seed=7)
    with pytest.raises(LedgerError, match="expected a share in"):
        ledger.set_round_sample(0.0, seed=7)


def test_verify_checks_blobs_and_compactions_before_anything_is_exported(history: Ledger, run_dir: Path) -> None:
    """A run with a ledger and an audit log but no export event yet: its ledger is still audited."""
    from fedunlearn.certify import RunAudit, verify_run
    from fedunlearn.certify.compaction import log_compactions

    with RunAudit.open(run_dir) as audit:
        audit.checkpoint()
    compact(history, CompactionPolicy())  # the ledger API alone: no signed event
    result = verify_run(run_dir)
    assert "artifacts: no export event in the log (nothing exported yet)" in result.checked
    assert any(p.startswith("ledger compaction:") for p in result.problems), result.problems
    with RunAudit.open(run_dir) as audit:
        assert len(log_compactions(audit, history)) == 1
    result = verify_run(run_dir)
    assert result.ok, result.problems
