"""``retrain``: the reference. Retrain every shard from round 0 without the subjects.

Same seeds, same schedule, same topology and the same remaining members as the original run, so
it is what the model would be had the subjects never taken part. Every other method is measured
against it (fidelity, cost). Its cost is measured, not estimated. Shards that never saw a subject
are retrained too (to identical adapters on CPU): that is the point of a reference.

Guarantee: ``exact``.
"""

from __future__ import annotations

from fedunlearn.ledger import Ledger
from fedunlearn.runs import RunFolder
from fedunlearn.unlearning.base import EraseRequest
from fedunlearn.unlearning.replay import ReplayUnlearner, ShardPlan

__all__ = ["RetrainUnlearner"]


class RetrainUnlearner(ReplayUnlearner):
    """Full federated retraining without the subjects."""

    name = "retrain"
    guarantee = "exact"

    def plan(self, request: EraseRequest, ledger: Ledger, run: RunFolder) -> list[ShardPlan]:
        plans = []
        for shard in range(run.settings.topology.shards):
            chain = ledger.chain(shard)
            base, until = chain[0], chain[-1].round
            rounds = range(base.round + 1, until + 1)
            plans.append(ShardPlan(shard=shard, base=base, until=until,
                                   members=self.remaining_members(ledger, shard, rounds, request.subjects)))
        return plans
