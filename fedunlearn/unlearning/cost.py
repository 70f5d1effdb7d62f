"""What an erasure cost, and what full retraining without some organizations would cost.

An erasure's wall time is one monotonic interval: from the method's start to its result, in the
process that ran it (:func:`finished_cost`). An erasure killed after its journal was written and
completed by a later process is the one exception: its figure is the journaled compute interval
plus the completing interval, and its basis says so (the time between the two processes is not
counted).

Retraining from round 0 without the subjects replays every shard's schedule with the same members
minus the subjects, on the same data with the same epochs and batch size. So its client-steps,
rounds, aggregations, bytes and participants are exactly those of the current head chains with
the subjects' contributions left out. Its wall time is the one estimate, defined once for every
method (:func:`estimate_full_retrain`): each kept round's recorded wall time (``round-seconds/``
ledger metadata, written when the round was trained) scaled by the share of its client-steps that
the kept organizations ran. Engine start-up and the capture before an erasure are not part of it,
as they are not part of any method's figure either. Rounds trained before the coordinator
recorded round times fall back to the sum of the kept organizations' client fit seconds (a lower
bound); the basis line says which rounds did.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from fedunlearn.ledger import Ledger
from fedunlearn.ledger.store import ROUND_SECONDS_PREFIX
from fedunlearn.runs import RunFolder
from fedunlearn.unlearning.base import Cost

__all__ = ["estimate_full_retrain", "finished_cost", "state_nbytes"]


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
        ``estimated=True``; ``wall_seconds`` as the module doc defines it, ``basis`` says how.
    """
    excluded = set(subjects)
    per_update = 2 * state_nbytes(ledger, run)  # adapter down and back up
    meta = ledger.meta
    steps = updates = aggregations = unrecorded = 0
    seconds = 0.0
    rounds: set[int] = set()
    orgs: set[str] = set()
    for shard in range(run.settings.topology.shards):
        for ckpt in ledger.chain(shard)[1:]:
            every = ledger.contributions(ckpt.id)
            kept = [c for c in every if c.org not in excluded]
            if not kept:
                continue
            aggregations += 1
            rounds.add(ckpt.round)
            kept_steps = sum(int(c.metrics.get("steps", 0)) for c in kept)
            all_steps = sum(int(c.metrics.get("steps", 0)) for c in every)
            recorded = meta.get(ROUND_SECONDS_PREFIX + str(ckpt.id))
            if recorded is not None and all_steps:
                seconds += float(recorded) * kept_steps / all_steps
            else:
                unrecorded += 1
                seconds += sum(float(c.metrics.get("seconds", 0.0)) for c in kept)
            steps += kept_steps
            updates += len(kept)
            orgs.update(c.org for c in kept)
    basis = ("estimated from the ledger: client-steps, rounds and bytes of the recorded contributions without "
             "the subjects; wall seconds: each kept round's recorded wall time scaled by its kept client-steps")
    if unrecorded:
        basis += (f"; {unrecorded} of {aggregations} rounds had no recorded wall time, counted as the sum of "
                  "their kept client fit seconds (a lower bound)")
    return Cost(client_steps=steps, wall_seconds=seconds, rounds=len(rounds), aggregations=aggregations,
                bytes_sent=updates * per_update, organizations=tuple(sorted(orgs)), estimated=True, basis=basis)


def finished_cost(journaled: Mapping[str, Any], start: float, *, resumed: bool) -> Cost:
    """An erasure's :class:`Cost` once its result is in, from the cost its journal recorded.

    Parameters
    ----------
    journaled : mapping
        The cost the compute phase journaled (``Cost.to_dict()``); its ``wall_seconds`` is the
        compute interval measured from ``start`` of the process that computed it.
    start : float
        ``time.perf_counter()`` when this process's call began.
    resumed : bool
        Whether the compute phase ran in an earlier process (the journal was read, not written,
        here). If not, the wall time is the one interval ``start`` → now, which already covers the
        journaled compute time; if so, it is the journaled interval plus this process's interval.
    """
    doc = dict(journaled)
    here = time.perf_counter() - start
    if resumed:
        earlier = float(doc["wall_seconds"])
        doc["wall_seconds"] = earlier + here
        doc["basis"] = (f"{doc.get('basis', 'measured')}; resumed: {earlier:.3f} s computed by an earlier process "
                        f"(journaled) + {here:.3f} s to complete it in this one; the time between them not counted")
    else:
        doc["wall_seconds"] = here
    doc["organizations"] = tuple(doc.get("organizations", ()))
    return Cost(**doc)
