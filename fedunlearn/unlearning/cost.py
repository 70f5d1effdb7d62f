"""What full retraining without some organizations would cost, read from the ledger.

Retraining from round 0 without the subjects replays every shard's schedule with the same members
minus the subjects, on the same data with the same epochs and batch size. So its client-steps,
rounds, aggregations, bytes and participants are exactly those of the current head chains with
the subjects' contributions left out; only its wall time is an estimate (the sum of the recorded
client fit seconds, or the erasure's own seconds per client-step scaled up when it trained).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedunlearn.ledger import Ledger
from fedunlearn.runs import RunFolder
from fedunlearn.unlearning.base import Cost

__all__ = ["estimate_full_retrain", "state_nbytes"]


def state_nbytes(ledger: Ledger, run: RunFolder) -> int:
    """Bytes of one shard adapter (every shard's adapter has the same shape)."""
    head = ledger.head(0)
    if head is None:
        return 0
    return sum(t.numel() * t.element_size() for t in ledger.get_state(head.hash).values())


def estimate_full_retrain(ledger: Ledger, run: RunFolder, subjects: Sequence[str]) -> Cost:
    """Cost of retraining every shard from round 0 without ``subjects``, from the current lineage.

    Parameters
    ----------
    ledger : Ledger
        The run's ledger, read before the erasure switches any head.
    run : RunFolder
        The run (for the shard count and adapter size).
    subjects : sequence of str
        Organizations that would be left out.

    Returns
    -------
    Cost
        ``estimated=True``; ``wall_seconds`` is the sum of the recorded client fit seconds
        (server and transport overhead not included).
    """
    excluded = set(subjects)
    per_update = 2 * state_nbytes(ledger, run)  # adapter down and back up
    steps = updates = aggregations = 0
    seconds = 0.0
    rounds: set[int] = set()
    orgs: set[str] = set()
    for shard in range(run.settings.topology.shards):
        for ckpt in ledger.chain(shard)[1:]:
            kept = [c for c in ledger.contributions(ckpt.id) if c.org not in excluded]
            if not kept:
                continue
            aggregations += 1
            rounds.add(ckpt.round)
            for c in kept:
                steps += int(c.metrics.get("steps", 0))
                seconds += float(c.metrics.get("seconds", 0.0))
                updates += 1
                orgs.add(c.org)
    return Cost(client_steps=steps, wall_seconds=seconds, rounds=len(rounds), aggregations=aggregations,
                bytes_sent=updates * per_update, organizations=tuple(sorted(orgs)), estimated=True,
                basis="estimated from the ledger: recorded contributions without the subjects")
