"""Lineage: commits, head chains, dependence, rollback, stale and failed commits."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from fedunlearn.errors import LedgerError, RunStateError, UnknownNameError
from fedunlearn.ledger import Checkpoint, Contribution, Dependency, Ledger

MakeState = Callable[..., dict[str, torch.Tensor]]


def commit(
    ledger: Ledger, make_state: MakeState, shard: int, round: int, *, seed: int = 0
) -> Checkpoint:
    """One simulated round: store every member's update and the aggregate, then commit."""
    head = ledger.head(shard)
    contributions = []
    for i, org in enumerate(ledger.members(shard, round) if round else []):
        update = ledger.put_state(make_state(1000 * shard + 10 * round + i + seed), org=org)
        contributions.append(Contribution(org, update, 1.0, 10 + i, {"loss": 1.0 / round}))
    aggregate = ledger.put_state(make_state(-(1000 * shard + 10 * round + seed) - 1))
    return ledger.commit_round(
        shard=shard, round=round, aggregate_hash=aggregate, contributions=contributions,
        parent_id=None if head is None else head.id,
    )


@pytest.fixture
def federation(ledger: Ledger, make_state: MakeState) -> Ledger:
    """2 shards x 3 rounds; a and c join at round 1, b and d at round 2."""
    ledger.register_organization("a", shard=0)
    ledger.register_organization("b", shard=0, join_round=2)
    ledger.register_organization("c", shard=1)
    ledger.register_organization("d", shard=1, join_round=2)
    for shard in (0, 1):
        for round in range(4):
            commit(ledger, make_state, shard, round)
    return ledger


def count(ledger: Ledger, table: str) -> int:
    with sqlite3.connect(ledger.path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_chains_heads_and_contributions(federation: Ledger) -> None:
    for shard in (0, 1):
        chain = federation.chain(shard)
        assert [c.round for c in chain] == [0, 1, 2, 3]
        assert chain[0].parent_id is None
        assert [c.parent_id for c in chain[1:]] == [c.id for c in chain[:-1]]
        assert federation.head(shard) == chain[-1]
        assert federation.checkpoint(chain[2].id) == chain[2]
    assert federation.head(7) is None and federation.chain(7) == []
    round1, round2 = federation.chain(0)[1:3]
    assert [c.org for c in federation.contributions(round1.id)] == ["a"]
    assert [c.org for c in federation.contributions(round2.id)] == ["a", "b"]
    assert federation.contributions(round2.id)[1].metrics == {"loss": 0.5}
    assert federation.contributions(federation.chain(0)[0].id) == []
    assert federation.members(0, 1) == ["a"] and federation.members(0, 2) == ["a", "b"]
    assert federation.stats()["rounds_per_shard"] == {0: 3, 1: 3}
    assert federation.stats()["updates"] == 10


def test_dependents(federation: Ledger) -> None:
    assert federation.dependents("a") == [Dependency(shard=0, since_round=1, rounds=(1, 2, 3))]
    assert federation.dependents("b") == [Dependency(shard=0, since_round=2, rounds=(2, 3))]
    assert federation.dependents("c") == [Dependency(shard=1, since_round=1, rounds=(1, 2, 3))]
    assert federation.dependents("d") == [Dependency(shard=1, since_round=2, rounds=(2, 3))]
    with pytest.raises(UnknownNameError, match="valid organizations are: 'a', 'b', 'c', 'd'"):
        federation.dependents("z")


def test_checkpoint_before_join(federation: Ledger) -> None:
    chain0, chain1 = federation.chain(0), federation.chain(1)
    assert federation.checkpoint_before_join(0, "b") == chain0[1]  # round 1, before b's round 2
    assert federation.checkpoint_before_join(0, "a") == chain0[0]  # the initial adapter
    assert federation.checkpoint_before_join(1, "b") == chain1[-1]  # b never entered shard 1
    with pytest.raises(LedgerError, match="no checkpoints"):
        federation.checkpoint_before_join(5, "b")


def test_rollback_then_retrain_forgets_the_abandoned_branch(
    federation: Ledger, make_state: MakeState
) -> None:
    old_chain = federation.chain(0)
    target = federation.checkpoint_before_join(0, "b")
    federation.mark_erased("b")
    federation.rollback(0, target.id)
    assert federation.head(0) == target
    assert federation.chain(0) == old_chain[:2]
    # Abandoned but not forgotten as history; yet nothing on the head chain depends on b now.
    assert federation.checkpoint(old_chain[3].id) == old_chain[3]
    assert federation.dependents("b") == []
    for round in (2, 3):
        commit(federation, make_state, 0, round, seed=7)
    chain = federation.chain(0)
    assert [c.round for c in chain] == [0, 1, 2, 3]
    assert [c.branch for c in chain] == [0, 0, 1, 1]
    assert chain[:2] == old_chain[:2] and chain[2].id not in {c.id for c in old_chain}
    assert federation.dependents("b") == []
    assert federation.dependents("a") == [Dependency(0, 1, (1, 2, 3))]
    assert federation.dependents("d") == [Dependency(1, 2, (2, 3))]  # other shard untouched
    # A second rollback opens yet another branch.
    federation.rollback(0, chain[1].id)
    assert commit(federation, make_state, 0, 2, seed=9).branch == 2


def test_rollback_refuses_checkpoints_off_the_head_chain(federation: Ledger) -> None:
    abandoned = federation.chain(0)[3]
    federation.rollback(0, federation.chain(0)[1].id)
    head = federation.head(0)
    with pytest.raises(LedgerError, match="not on the head chain of shard 0"):
        federation.rollback(0, abandoned.id)
    with pytest.raises(LedgerError, match="not on the head chain of shard 0"):
        federation.rollback(0, federation.chain(1)[1].id)  # another shard's checkpoint
    assert federation.head(0) == head
    federation.rollback(0, head.id)  # to the head itself: a no-op
    assert federation.head(0) == head


def test_stale_parent_is_refused_and_nothing_changes(
    federation: Ledger, run_dir: Path, make_state: MakeState
) -> None:
    stale = federation.head(0)
    # Another process commits round 4 first.
    with Ledger.open(run_dir) as other:
        winner = commit(other, make_state, 0, 4)
    before = (count(federation, "checkpoints"), count(federation, "contributions"))
    aggregate = federation.put_state(make_state(99))
    with pytest.raises(LedgerError, match="stale or concurrent commit to shard 0"):
        federation.commit_round(
            shard=0, round=4, aggregate_hash=aggregate, contributions=[], parent_id=stale.id
        )
    assert federation.head(0) == winner
    assert (count(federation, "checkpoints"), count(federation, "contributions")) == before


@pytest.mark.parametrize(
    ("round", "parent", "message"),
    [(3, "head", "expected round 4"), (5, "head", "expected round 4"), (4, None, "stale")],
)
def test_round_must_follow_the_head(
    federation: Ledger, make_state: MakeState, round: int, parent: str | None, message: str
) -> None:
    aggregate = federation.put_state(make_state(5))
    parent_id = federation.head(0).id if parent == "head" else None
    with pytest.raises(LedgerError, match=message):
        federation.commit_round(
            shard=0, round=round, aggregate_hash=aggregate, contributions=[], parent_id=parent_id
        )


def test_first_commit_must_be_round_zero(ledger: Ledger, make_state: MakeState) -> None:
    aggregate = ledger.put_state(make_state(1))
    with pytest.raises(LedgerError, match="must be round 0"):
        ledger.commit_round(shard=0, round=1, aggregate_hash=aggregate, contributions=[],
                            parent_id=None)
    ledger.register_organization("a", shard=0)
    update = ledger.put_state(make_state(2), org="a")
    with pytest.raises(LedgerError, match="takes no contributions"):
        ledger.commit_round(shard=0, round=0, aggregate_hash=aggregate,
                            contributions=[Contribution("a", update, 1.0, 3)], parent_id=None)
    assert ledger.head(0) is None


def test_commit_is_atomic_when_a_contribution_fails(
    federation: Ledger, make_state: MakeState
) -> None:
    head = federation.head(0)
    before = (count(federation, "checkpoints"), count(federation, "contributions"))
    update = federation.put_state(make_state(3), org="a")
    aggregate = federation.put_state(make_state(4))
    good = Contribution("a", update, 0.5, 5)
    ghost = Contribution("ghost", update, 0.5, 5)  # fails after the checkpoint and `a` are inserted
    with pytest.raises(UnknownNameError, match="unknown organization 'ghost'"):
        federation.commit_round(shard=0, round=4, aggregate_hash=aggregate,
                                contributions=[good, ghost], parent_id=head.id)
    assert federation.head(0) == head
    assert (count(federation, "checkpoints"), count(federation, "contributions")) == before
    # The same round commits cleanly afterwards.
    checkpoint = federation.commit_round(shard=0, round=4, aggregate_hash=aggregate,
                                         contributions=[good], parent_id=head.id)
    assert federation.head(0) == checkpoint


def test_commit_is_atomic_when_the_transaction_crashes(
    federation: Ledger, make_state: MakeState, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = federation.head(1)
    before = (count(federation, "checkpoints"), count(federation, "contributions"))
    aggregate = federation.put_state(make_state(6))
    update = federation.put_state(make_state(7), org="c")

    def crash(*args: object) -> None:
        raise RuntimeError("simulated crash inside the transaction")

    monkeypatch.setattr(Ledger, "_check_member", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        federation.commit_round(shard=1, round=4, aggregate_hash=aggregate,
                                contributions=[Contribution("c", update, 1.0, 1)],
                                parent_id=head.id)
    assert federation.head(1) == head
    assert (count(federation, "checkpoints"), count(federation, "contributions")) == before


@pytest.mark.parametrize(
    ("org", "round", "error", "message"),
    [
        ("c", 4, LedgerError, "belongs to shard 1, not shard 0"),
        ("late", 4, LedgerError, "joins shard 0 at round 6"),
    ],
)
def test_contribution_must_come_from_a_member(
    federation: Ledger, make_state: MakeState, org: str, round: int, error: type, message: str
) -> None:
    federation.register_organization("late", shard=0, join_round=6)
    update = federation.put_state(make_state(8), org=org)
    aggregate = federation.put_state(make_state(9))
    with pytest.raises(error, match=message):
        federation.commit_round(shard=0, round=round, aggregate_hash=aggregate,
                                contributions=[Contribution(org, update, 1.0, 1)],
                                parent_id=federation.head(0).id)


@pytest.mark.parametrize(
    ("contribution", "message"),
    [
        (Contribution("a", "0" * 64, -1.0, 1), "expected a finite number >= 0"),
        (Contribution("a", "0" * 64, float("nan"), 1), "expected a finite number"),
        (Contribution("a", "0" * 64, 1.0, -3), "expected an integer >= 0"),
        (Contribution("a", "xyz", 1.0, 1), "64 lowercase hex"),
        (("a", "0" * 64, 1.0, 1), "expected a Contribution"),
    ],
)
def test_invalid_contributions(federation: Ledger, contribution: Any, message: str) -> None:
    head = federation.head(0)
    with pytest.raises(LedgerError, match=message):
        federation.commit_round(shard=0, round=4, aggregate_hash=head.hash,
                                contributions=[contribution], parent_id=head.id)


def test_duplicate_contribution_and_missing_aggregate(federation: Ledger) -> None:
    head = federation.head(0)
    twice = [Contribution("a", "0" * 64, 1.0, 1)] * 2
    with pytest.raises(LedgerError, match=r"\['a'\] more than once"):
        federation.commit_round(shard=0, round=4, aggregate_hash=head.hash, contributions=twice,
                                parent_id=head.id)
    with pytest.raises(LedgerError, match="store it with put_state"):
        federation.commit_round(shard=0, round=4, aggregate_hash="f" * 64, contributions=[],
                                parent_id=head.id)


def test_update_hashes_and_unknown_checkpoint(federation: Ledger) -> None:
    hashes = federation.update_hashes("b")
    assert len(hashes) == 2
    assert hashes == [c.update_hash for cp in federation.chain(0)[2:]
                      for c in federation.contributions(cp.id) if c.org == "b"]
    with pytest.raises(LedgerError, match="no checkpoint with id 999"):
        federation.checkpoint(999)


def test_served_model_record(federation: Ledger) -> None:
    assert federation.served() is None
    heads = [federation.head(0).id, federation.head(1).id]
    federation.record_served(served_hash="a" * 64, components=heads, weights=[0.5, 0.5],
                             path="exports/model")
    served = federation.served()
    assert served is not None
    assert served["components"] == heads and served["weights"] == [0.5, 0.5]
    assert served["path"] == "exports/model" and served["served_hash"] == "a" * 64
    with pytest.raises(LedgerError, match="one weight per component"):
        federation.record_served(served_hash="a" * 64, components=heads, weights=[1.0], path="x")
    with pytest.raises(LedgerError, match="no checkpoint with id 999"):
        federation.record_served(served_hash="a" * 64, components=[999], weights=[1.0], path="x")


def test_erased_org_cannot_contribute_or_rejoin(federation: Ledger, make_state: MakeState) -> None:
    update = federation.put_state(make_state(11), org="d")
    federation.mark_erased("d")
    assert federation.organization("d").status == "erased"
    assert federation.members(1, 5) == ["c"]
    head = federation.head(1)
    with pytest.raises(RunStateError, match="already erased"):
        federation.commit_round(shard=1, round=4, aggregate_hash=head.hash,
                                contributions=[Contribution("d", update, 1.0, 1)],
                                parent_id=head.id)
    assert federation.head(1) == head
    with pytest.raises(RunStateError, match="already erased"):
        federation.register_organization("d", shard=1, join_round=2)
    with pytest.raises(RunStateError, match="already erased"):
        federation.put_state(make_state(12), org="d")
    federation.mark_erased("d")  # idempotent


def test_metrics_keep_flower_metric_record_types(federation: Ledger) -> None:
    head = federation.head(0)
    metrics = {"train-loss": 0.25, "num-examples": 12, "curve": [1.0, 0.5], "nan": float("nan")}
    checkpoint = federation.commit_round(
        shard=0, round=4, aggregate_hash=head.hash, parent_id=head.id,
        contributions=[Contribution("a", head.hash, 1.0, 12, metrics)],
    )
    stored = federation.contributions(checkpoint.id)[0].metrics
    assert list(stored) == sorted(metrics)
    assert stored["num-examples"] == 12 and isinstance(stored["num-examples"], int)
    assert stored["curve"] == [1.0, 0.5] and stored["train-loss"] == 0.25
    assert stored["nan"] != stored["nan"]
    with pytest.raises(LedgerError, match="expected a number or a list of numbers"):
        federation.commit_round(
            shard=0, round=5, aggregate_hash=head.hash, parent_id=checkpoint.id,
            contributions=[Contribution("a", head.hash, 1.0, 1, {"note": "text"})],
        )
