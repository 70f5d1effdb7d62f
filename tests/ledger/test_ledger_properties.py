"""Property test: lineage answers agree with a plain-Python model of the head chains."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedunlearn.ledger import Contribution, Dependency, Ledger

ORGS = {"a": 0, "b": 0, "c": 1, "d": 1}  # organization -> shard

# An operation: ("commit", shard, subset of that shard's members) or ("rollback", shard, depth).
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), st.integers(0, 1), st.sets(st.sampled_from(sorted(ORGS)))),
        st.tuples(st.just("rollback"), st.integers(0, 1), st.integers(0, 3)),
    ),
    max_size=10,
)


@settings(max_examples=25, deadline=None)
@given(ops=_ops)
def test_dependents_match_a_model_of_the_head_chains(ops: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as tmp, Ledger.create(Path(tmp), meta={}) as ledger:
        for org, shard in ORGS.items():
            ledger.register_organization(org, shard=shard)
        aggregate = ledger.put_state({"w": torch.zeros(2)})
        model: dict[int, list[set[str]]] = {}  # shard -> contributors of rounds 0..head
        for shard in (0, 1):
            ledger.commit_round(shard=shard, round=0, aggregate_hash=aggregate,
                                contributions=[], parent_id=None)
            model[shard] = [set()]
        for kind, shard, arg in ops:
            head = ledger.head(shard)
            if kind == "commit":
                orgs = sorted(org for org in arg if ORGS[org] == shard)
                ledger.commit_round(
                    shard=shard, round=head.round + 1, aggregate_hash=aggregate,
                    contributions=[Contribution(org, aggregate, 1.0, 1) for org in orgs],
                    parent_id=head.id,
                )
                model[shard].append(set(orgs))
            else:
                keep = max(1, len(model[shard]) - arg)
                ledger.rollback(shard, ledger.chain(shard)[keep - 1].id)
                del model[shard][keep:]

        for org in ORGS:
            expected = []
            for shard, rounds in sorted(model.items()):
                hits = tuple(r for r, orgs in enumerate(rounds) if org in orgs)
                if hits:
                    expected.append(Dependency(shard, hits[0], hits))
            assert ledger.dependents(org) == expected
            for shard, rounds in model.items():
                chain = ledger.chain(shard)
                assert [c.round for c in chain] == list(range(len(rounds)))
                first = next((r for r, orgs in enumerate(rounds) if org in orgs), None)
                before = ledger.checkpoint_before_join(shard, org)
                assert before == (chain[-1] if first is None else chain[first - 1])
