"""Organizations split into isolated shards.

Each shard is a sub-federation with its own adapter, checkpoints and members; the served model
combines the shard adapters. S=1 is plain FedAvg; S=N gives every organization its own adapter, so
erasing one is dropping its adapter.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fedunlearn.config import Settings
from fedunlearn.errors import UnknownNameError

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
        )

    def shard_of(self, org: str) -> int:
        if org not in self.assignment:
            raise UnknownNameError("organization", org, self.assignment)
        return self.assignment[org]

    def members(self, shard: int) -> list[str]:
        """Every organization assigned to ``shard``, in scenario order."""
        return [o for o, s in self.assignment.items() if s == shard]
