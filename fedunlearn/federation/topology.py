"""Organizations split into isolated shards.

Each shard is a sub-federation with its own adapter, checkpoints and members; the served model
combines the shard adapters. S=1 is plain FedAvg; S=N gives every organization its own adapter, so
erasing one is dropping its adapter.

With ``topology.sample-fraction`` < 1 only a seeded sample of a shard's members trains in each
round (cross-device style, for consortia of hundreds of organizations). The rule is recorded in the
ledger (:meth:`~fedunlearn.ledger.Ledger.set_round_sample`), whose ``members(shard, round)`` every
training round and every erasure replay reads, so a retrain without one organization replays each
round with the same others.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fedunlearn.config import Settings
from fedunlearn.errors import UnknownNameError
from fedunlearn.ledger.store import in_round_sample

__all__ = ["Topology", "derive_seed"]


def derive_seed(*parts: object) -> int:
    """A 31-bit seed derived from ``parts`` (stable across processes and Python versions)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class Topology:
    """Which shard each organization trains in, and when it joins."""

    shards: int
    assignment: dict[str, int]  # organization -> shard
    join_rounds: dict[str, int]  # organization -> first round it trains in
    sample_fraction: float = 1.0  # share of a shard's members sampled to train each round
    seed: int = 0  # run seed: the per-round sample is drawn from it

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        """Explicit ``shard`` fields win; the others are dealt round-robin in list order."""
        assignment: dict[str, int] = {}
        free = [o for o in settings.organizations if o.shard is None]
        for o in settings.organizations:
            if o.shard is not None:
                assignment[o.name] = o.shard
        for i, o in enumerate(free):
            assignment[o.name] = i % settings.topology.shards
        return cls(
            shards=settings.topology.shards,
            assignment={o.name: assignment[o.name] for o in settings.organizations},
            join_rounds={o.name: o.join_round for o in settings.organizations},
            sample_fraction=settings.topology.sample_fraction,
            seed=settings.run.seed,
        )

    def record_sampling(self, ledger) -> None:
        """Record this run's per-round sample in ``ledger`` (refused if the run samples otherwise)."""
        ledger.set_round_sample(self.sample_fraction, self.seed)

    def sampled(self, shard: int, rnd: int) -> list[str]:
        """Members of ``shard`` that joined by round ``rnd`` and are in its sample (erasures ignored)."""
        return [o for o in self.members(shard) if self.join_rounds[o] <= rnd
                and in_round_sample(self.seed, shard, rnd, o, self.sample_fraction)]

    def shard_of(self, org: str) -> int:
        if org not in self.assignment:
            raise UnknownNameError("organization", org, self.assignment)
        return self.assignment[org]

    def members(self, shard: int) -> list[str]:
        """Every organization assigned to ``shard``, in scenario order."""
        return [o for o, s in self.assignment.items() if s == shard]
