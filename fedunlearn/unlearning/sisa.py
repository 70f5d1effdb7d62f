"""``sisa``: exact erasure by retraining only the shards that saw the subject.

SISA (Bourtoule et al., "Machine Unlearning", IEEE S&P 2021) trains isolated shards and, to
forget, retrains only the affected shard from its last checkpoint that did not see the data. Here
a shard is a sub-federation of organizations: for each shard whose head chain contains a subject's
contribution, roll back to the checkpoint just before the subject first contributed
(:meth:`~fedunlearn.ledger.Ledger.checkpoint_before_join`; for a late joiner, the checkpoint of the
round before it joined) and replay the later rounds with the remaining members only, through
Flower. Seeds depend on (run seed, shard, round, organization), so the result equals that shard
trained from scratch without the subject, and the served model equals ``retrain``'s.

Guarantee: ``exact``. The lineage of the new heads contains no contribution of the subjects; the
stored updates of the subjects are crypto-shredded.
"""

from __future__ import annotations

from fedunlearn.ledger import Checkpoint, Ledger
from fedunlearn.runs import RunFolder
from fedunlearn.unlearning.base import EraseRequest
from fedunlearn.unlearning.replay import ReplayUnlearner, ShardPlan

__all__ = ["SisaUnlearner"]


class SisaUnlearner(ReplayUnlearner):
    """Roll back each affected shard to before the subjects joined and retrain it without them."""

    name = "sisa"
    guarantee = "exact"

    def plan(self, request: EraseRequest, ledger: Ledger, run: RunFolder) -> list[ShardPlan]:
        bases: dict[int, Checkpoint] = {}
        for subject in request.subjects:
            for dep in ledger.dependents(subject):
                base = ledger.checkpoint_before_join(dep.shard, subject)
                if dep.shard not in bases or base.round < bases[dep.shard].round:
                    bases[dep.shard] = base  # several subjects in one shard: the earliest wins
        plans = []
        for shard, base in sorted(bases.items()):
            until = ledger.head(shard).round
            rounds = range(base.round + 1, until + 1)
            plans.append(ShardPlan(shard=shard, base=base, until=until,
                                   members=self.remaining_members(ledger, shard, rounds, request.subjects)))
        return plans
