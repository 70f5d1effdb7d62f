"""``drop``: erasure in a run with one shard per organization (S = N): drop the subject's adapter.

With S = N every organization trains its own adapter and the served model is their exact ΔW
combination. Erasing one is rolling its shard back to the initial adapter (round 0, no
contribution) and recombining the others with re-normalized weights: no training, no Flower,
well under a second. It is ``sisa`` on a shard without remaining members; this name refuses
runs where that would not hold, so that a caller who asked for a free erasure never starts a
retraining by surprise.

Guarantee: ``exact`` (the served model has no component that depends on the subject).
"""

from __future__ import annotations

from fedunlearn.federation.topology import Topology
from fedunlearn.runs import RunFolder
from fedunlearn.unlearning.sisa import SisaUnlearner

__all__ = ["DropUnlearner"]


class DropUnlearner(SisaUnlearner):
    """Drop the subject's own adapter (runs with one shard per organization)."""

    name = "drop"
    guarantee = "exact"

    def supports(self, run: RunFolder) -> str | None:
        topology = Topology.from_settings(run.settings)
        shared = {s: m for s in range(topology.shards) if len(m := topology.members(s)) > 1}
        if not shared:
            return None
        shard, members = sorted(shared.items())[0]
        return (f"it needs one shard per organization (topology.shards = {len(run.settings.organizations)}) "
                f"but shard {shard} holds {members}; use --method sisa, which retrains the shared shards")
