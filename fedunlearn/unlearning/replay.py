"""Erasure by replaying shard chains without the subjects: the engine of ``sisa``, ``drop`` and ``retrain``.

A :class:`ReplayUnlearner` says, per affected shard, which checkpoint to roll back to and which
organizations train in each later round (:class:`ShardPlan`). The engine then works in three
phases so that an erasure killed at any point leaves a consistent run that a second call completes:

1. **compute** — retrain every planned round through Flower with the remaining members only. Blobs
   are stored, nothing is committed: the heads, the served model and the subjects' status are
   untouched, so a kill here leaves the run as it was and a re-run recomputes (deterministically).
2. **journal** — the new chains (aggregate hashes and contributions) are written to the ledger's
   metadata (``erasure.pending``) in one transaction.
3. **switch** — each shard is rolled back and the new rounds committed; the served model is
   re-exported; the subjects are marked erased (their update keys shredded); the aggregates of
   the abandoned checkpoints that depend on them are purged
   (:meth:`~fedunlearn.ledger.Ledger.purge_erased`); the journal is cleared. Every step is
   idempotent, so a kill here is completed from the journal, without training, by running the
   same request again.
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedunlearn.errors import RunStateError
from fedunlearn.federation.serving import export_served
from fedunlearn import crashpoints
from fedunlearn.ledger import Checkpoint, Contribution, Ledger
from fedunlearn.ledger.store import ROUND_SECONDS_PREFIX
from fedunlearn.runs import RunFolder, utc_now
from fedunlearn.unlearning.base import Cost, EraseRequest, Federation, Unlearner, UnlearnResult, check_request
from fedunlearn.unlearning.cost import estimate_full_retrain, finished_cost

__all__ = ["JOURNAL_KEY", "NewRound", "ReplayUnlearner", "ShardPlan", "pending_erasure", "switch_chain"]

JOURNAL_KEY = "erasure.pending"
"""Ledger metadata key of an erasure whose new chains are computed but not yet all committed."""


@dataclass(frozen=True)
class ShardPlan:
    """Roll ``shard`` back to ``base`` and replay rounds ``base.round + 1 .. until``.

    ``members[r]`` are the organizations that train in round ``r`` (subjects excluded); a round
    without members commits a carry-over checkpoint (same adapter), as the coordinator does.
    """

    shard: int
    base: Checkpoint
    until: int
    members: Mapping[int, tuple[str, ...]]

    @property
    def rounds(self) -> range:
        return range(self.base.round + 1, self.until + 1)

    @property
    def trains(self) -> bool:
        return any(self.members.get(r) for r in self.rounds)


@dataclass(frozen=True)
class NewRound:
    """One round of a recomputed chain, ready to commit."""

    round: int
    hash: str
    contributions: tuple[Contribution, ...]
    seconds: float = 0.0  # the round's wall time when it was trained (0: nothing trained)


def pending_erasure(ledger: Ledger) -> dict[str, Any] | None:
    """The journal of an interrupted erasure, or ``None``."""
    text = ledger.meta.get(JOURNAL_KEY, "")
    return json.loads(text) if text else None


def _encode_chain(base_id: int, rounds: list[NewRound]) -> dict[str, Any]:
    return {"base": base_id, "rounds": [
        {"round": r.round, "hash": r.hash, "contributions": [
            {"org": c.org, "update_hash": c.update_hash, "weight": c.weight, "num_examples": c.num_examples,
             "metrics": dict(c.metrics)} for c in r.contributions], "seconds": r.seconds}
        for r in rounds]}


def _decode_chain(doc: Mapping[str, Any]) -> tuple[int, list[NewRound]]:
    rounds = [NewRound(r["round"], r["hash"], tuple(Contribution(**c) for c in r["contributions"]),
                       float(r.get("seconds", 0.0))) for r in doc["rounds"]]
    return int(doc["base"]), rounds


def switch_chain(ledger: Ledger, shard: int, base_id: int, rounds: list[NewRound]) -> None:
    """Make ``shard``'s head chain ``... base_id, rounds...``; idempotent, resumes a partial switch.

    Checkpoints already on the head chain after ``base_id`` that match the new rounds (round, hash
    and contributing organizations) are kept; the rest of the old chain is rolled back.
    """
    chain = ledger.chain(shard)
    ids = [c.id for c in chain]
    if base_id not in ids:
        raise RunStateError(
            f"shard {shard}'s head chain no longer contains checkpoint {base_id}, the erasure's rollback "
            "point: the ledger changed after the erasure was planned. Restore the run folder from a "
            "backup, or clear the ledger meta key 'erasure.pending' and request the erasure again"
        )
    i = ids.index(base_id)
    after = chain[i + 1:]
    k = 0
    while k < min(len(after), len(rounds)):
        old, new = after[k], rounds[k]
        orgs = sorted(c.org for c in ledger.contributions(old.id))
        if (old.round, old.hash, orgs) != (new.round, new.hash, sorted(c.org for c in new.contributions)):
            break
        k += 1
    if k < len(after):
        ledger.rollback(shard, chain[i + k].id)
    parent = chain[i + k].id
    for new in rounds[k:]:
        parent = ledger.commit_round(shard=shard, round=new.round, aggregate_hash=new.hash,
                                     contributions=list(new.contributions), parent_id=parent).id
        if new.seconds:
            ledger.set_meta(ROUND_SECONDS_PREFIX + str(parent), repr(round(new.seconds, 6)))


class ReplayUnlearner(Unlearner):
    """Template: subclasses give :meth:`plan`; :meth:`unlearn` computes, journals and switches."""

    guarantee = "exact"

    @abstractmethod
    def plan(self, request: EraseRequest, ledger: Ledger, run: RunFolder) -> list[ShardPlan]:
        """The shards to replay and who trains in which round (subjects excluded)."""

    def needs_grid(self, request: EraseRequest, ledger: Ledger, run: RunFolder) -> bool:
        """Whether the erasure trains anything (and so needs Flower)."""
        if pending_erasure(ledger) is not None:
            return False
        return any(p.trains for p in self.plan(request, ledger, run))

    @staticmethod
    def remaining_members(ledger: Ledger, shard: int, rounds: range, subjects: tuple[str, ...]) -> dict[int, tuple[str, ...]]:
        """Round -> the shard's members in that round without ``subjects``, as the coordinator picks them."""
        return {r: tuple(m for m in ledger.members(shard, r) if m not in subjects) for r in rounds}

    def unlearn(self, request: EraseRequest, federation: Federation) -> UnlearnResult:
        start = time.perf_counter()
        run, ledger, reporter = federation.run, federation.ledger, federation.reporter
        pending = pending_erasure(ledger)
        if pending is not None and (pending["subjects"], pending["method"]) != (list(request.subjects), self.name):
            raise RunStateError(
                f"run {str(run.path)!r} has an unfinished erasure of {pending['subjects']} by method "
                f"{pending['method']!r}; complete it first by requesting exactly that erasure again"
            )
        check_request(request, ledger, resuming=pending is not None)
        self.check(run)
        previous = ledger.served()
        resumed = pending is not None
        if pending is None:
            pending = self._compute(request, federation, start)
            ledger.set_meta(JOURNAL_KEY, json.dumps(pending, sort_keys=True))  # phase 2: one transaction
            crashpoints.reached("erasure.journaled")
        else:
            reporter.message(f"completing the interrupted erasure of {', '.join(request.subjects)} from its journal")
        chains = {int(s): _decode_chain(doc) for s, doc in pending["chains"].items()}
        for shard, (base_id, rounds) in sorted(chains.items()):  # phase 3
            switch_chain(ledger, shard, base_id, rounds)
        served = export_served(run, ledger)
        crashpoints.reached("erasure.switched")
        for subject in request.subjects:
            ledger.mark_erased(subject)
        crashpoints.reached("erasure.marked")
        ledger.purge_erased()  # abandoned aggregates that depend on a subject; idempotent
        purged = sorted({c.id for subject in request.subjects for c in ledger.purged(subject)})
        ledger.set_meta(JOURNAL_KEY, "")
        cost = finished_cost(pending["cost"], start, resumed=resumed)
        full_doc = pending["full"]
        full = cost if full_doc is None else Cost(**{**full_doc, "organizations": tuple(full_doc["organizations"])})
        result = UnlearnResult(
            method=self.name, subjects=request.subjects, guarantee=self.guarantee, served_hash=served.hash,
            served_path=served.path,
            previous_served_hash=pending.get("previous_served") or (previous or {}).get("served_hash"),
            heads={s: ledger.head(s).hash for s in range(run.settings.topology.shards)},
            recomputed={int(s): tuple(r["round"] for r in doc["rounds"] if r["contributions"])
                        for s, doc in pending["chains"].items()},
            organizations=cost.organizations, cost=cost, full_retrain_cost=full,
            notes=tuple(pending.get("notes", [])) + (
                (f"purged the aggregates of {len(purged)} abandoned checkpoints that depended on the "
                 f"subjects: {purged}",) if purged else ()),
        )
        with open(run.path / "erasures.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": utc_now(), "requested_by": request.requested_by, **result.to_dict()},
                                sort_keys=True) + "\n")
        reporter.message(f"erased {', '.join(request.subjects)} with {self.name}: served model {served.hash[:16]}…")
        return result

    def _compute(self, request: EraseRequest, federation: Federation, start: float) -> dict[str, Any]:
        """Phase 1: retrain every planned round without committing; return the journal."""
        run, ledger = federation.run, federation.ledger
        plans = self.plan(request, ledger, run)
        full = None if self.name == "retrain" else estimate_full_retrain(ledger, run, request.subjects)
        needed = sorted({m for p in plans for r in p.rounds for m in p.members.get(r, ())})
        coord = federation.coordinator(needed) if needed else None
        steps = sent = aggregations = 0
        trained_rounds: set[int] = set()
        chains: dict[str, Any] = {}
        with federation.reporter.task(f"erasure ({self.name})", total=sum(len(p.rounds) for p in plans)) as advance:
            for p in sorted(plans, key=lambda p: p.shard):
                state, digest, new = ledger.get_state(p.base.hash), p.base.hash, []
                for r in p.rounds:
                    members = list(p.members.get(r, ()))
                    contributions: tuple[Contribution, ...] = ()
                    seconds = 0.0
                    if members:
                        fitted = coord.fit_round(p.shard, r, state, members)
                        state, digest = fitted.aggregate, fitted.aggregate_hash
                        contributions = tuple(fitted.contributions)
                        seconds = fitted.summary.seconds
                        steps += fitted.summary.client_steps
                        sent += fitted.summary.bytes_sent
                        aggregations += 1
                        trained_rounds.add(r)
                    new.append(NewRound(r, digest, contributions, seconds))
                    advance(1, note=f"shard {p.shard} round {r}: {len(members)} orgs")
                chains[str(p.shard)] = _encode_chain(p.base.id, new)
        cost = Cost(client_steps=steps, wall_seconds=time.perf_counter() - start, rounds=len(trained_rounds),
                    aggregations=aggregations, bytes_sent=sent, organizations=tuple(needed),
                    basis="measured during this erasure")
        notes = [f"shard {p.shard}: rolled back to round {p.base.round}, replayed rounds "
                 f"{p.base.round + 1}..{p.until}" for p in sorted(plans, key=lambda p: p.shard)]
        previous = ledger.served()
        return {"method": self.name, "subjects": list(request.subjects), "chains": chains,
                "cost": cost.to_dict(), "full": None if full is None else full.to_dict(), "notes": notes,
                "previous_served": previous["served_hash"] if previous else None}
