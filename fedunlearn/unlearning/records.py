"""Record-level forgetting: an organization forgets some of its own records and stays in the federation.

``ga``, ``graddiff``, ``npo``
    The organization runs the local objective of :mod:`fedunlearn.training.forget` (gradient ascent;
    GradDiff, Liu et al. 2022; NPO with a KL term to the model before forgetting on its retained
    records, Zhang et al., COLM 2024) for ``forget-rounds`` federated rounds of ``train.forget``
    messages. Its shard's adapter takes the returned adapter; nobody else is addressed. Guarantee:
    ``empirical``.
``sisa-records``
    The exact alternative: roll the organization's shard back to round 0 and retrain it with every
    member, the organization training without the listed records (``exclude-records``). Same seeds,
    so it equals training from scratch without them. Guarantee: ``exact`` (for the records; the
    organization's other records stay, by design).

The request names one organization (``subjects``) and its record ids (``records``; an id without
``#k`` names every inserted copy). The organization stays ``active``. Forgotten ids are kept in the
ledger metadata ``forgotten-records/<org>`` (a JSON list), written when the erasure is switched in;
from then on every message that makes the organization train or compute on its records (later
training rounds, retraining for another erasure, calibration fits, influence queries, later
forgetting) carries them as ``exclude-records`` and the organization leaves them out
(:func:`~fedunlearn.federation.coordinator.forgotten_records`).
"""

from __future__ import annotations

import json
import time

from fedunlearn.errors import ConfigError, RunStateError
from fedunlearn.federation import protocol
from fedunlearn.federation.coordinator import FORGOTTEN_PREFIX, forgotten_records
from fedunlearn.federation.serving import export_served
from fedunlearn.federation.topology import derive_seed
from fedunlearn.ledger import Contribution, Ledger
from fedunlearn.runs import utc_now
from fedunlearn.unlearning.approx import ApproximateUnlearner, ApproxOptions, ApproxOutcome, Queries, nbytes
from fedunlearn.unlearning.base import Cost, EraseRequest, Federation, Unlearner, UnlearnResult
from fedunlearn.unlearning.cost import estimate_full_retrain
from fedunlearn.unlearning.replay import NewRound, switch_chain

__all__ = ["GradAscentUnlearner", "GradDiffUnlearner", "NpoUnlearner", "RecordSisaUnlearner",
           "check_record_request", "remember_forgotten"]


def check_record_request(request: EraseRequest, ledger: Ledger) -> None:
    """One active organization and at least one record id; otherwise :class:`ConfigError`."""
    if len(request.subjects) != 1 or not request.records:
        raise ConfigError(
            f"method {request.method!r} forgets records of one organization, got subjects {list(request.subjects)} "
            f"and {len(request.records)} record ids; pass one --org and --records FILE with at least one id"
        )
    org = ledger.organization(request.subjects[0])
    if org.status != "active":
        raise RunStateError(f"organization {org.name!r} was erased; its records are gone with it")


def remember_forgotten(ledger: Ledger, org: str, records: tuple[str, ...]) -> None:
    """Add ``records`` to ``org``'s forgotten ids: every later round leaves them out (see the coordinator)."""
    known = set(forgotten_records(ledger, org))
    ledger.set_meta(FORGOTTEN_PREFIX + org, json.dumps(sorted(known | set(records))))


class _LocalForget(ApproximateUnlearner):
    """Local forgetting by the organization, over ``forget-rounds`` federated rounds."""

    level = "record"
    guarantee = "empirical"
    cost_basis = "client-steps are the organization's forgetting steps"

    def validate(self, request: EraseRequest, ledger: Ledger) -> None:
        check_record_request(request, ledger)

    def applied(self, request: EraseRequest, ledger: Ledger) -> None:
        remember_forgotten(ledger, request.subjects[0], request.records)

    def compute(self, request: EraseRequest, federation: Federation, options: ApproxOptions) -> ApproxOutcome:
        ledger, run = federation.ledger, federation.run
        org = request.subjects[0]
        shard = ledger.organization(org).shard
        queries = Queries(federation, dict(federation.coordinator([org]).nodes))
        state = ledger.get_state(ledger.head(shard).hash)
        metrics: dict[str, float] = {}
        for r in range(1, options.forget_rounds + 1):
            config = {"org": org, "method": self.name, "records": "\n".join(request.records),
                      "seed": derive_seed(run.settings.run.seed, "forget", shard, r, org),
                      "epochs": options.forget_epochs, "lr": options.forget_lr or run.settings.train.lr,
                      "beta": options.npo_beta, "retain-weight": options.retain_weight}
            earlier = sorted(set(forgotten_records(ledger, org)) - set(request.records))
            if earlier:  # forgotten before: kept out of the retain set
                config[protocol.EXCLUDE_RECORDS] = "\n".join(earlier)
            reply = queries.ask(protocol.FORGET, {org: protocol.make_content(state=state, config=config)},
                                group_id=f"forget/{self.name}/round-{r}", sizes={org: nbytes(state)})[org]
            state, metrics = reply.state, reply.metrics
        digest = ledger.put_state(state, org=org, parent=ledger.head(shard).hash)  # trained from the head
        contribution = Contribution(org=org, update_hash=digest, weight=1.0,
                                    num_examples=int(metrics["num-examples"]), metrics=metrics)
        note = (f"{org} forgot {int(metrics['num-examples'])} records with {self.name} in {options.forget_rounds} rounds: "
                f"their loss {metrics['forget-loss-before']:.3f} → {metrics['forget-loss-after']:.3f}, "
                f"its other records {metrics['retain-loss-before']:.3f} → {metrics['retain-loss-after']:.3f}")
        return ApproxOutcome(states={shard: state}, contributions={shard: [contribution]},
                             client_steps=queries.client_steps, bytes_sent=queries.bytes_sent, rounds=queries.rounds,
                             organizations=(org,), notes=[note], details={"metrics": metrics})


class GradAscentUnlearner(_LocalForget):
    """Gradient ascent on the forget set."""

    name = "ga"


class GradDiffUnlearner(_LocalForget):
    """Ascent on the forget set, descent on the retained records (Liu et al. 2022)."""

    name = "graddiff"


class NpoUnlearner(_LocalForget):
    """Negative Preference Optimization with a KL term to the model before forgetting (Zhang et al. 2024)."""

    name = "npo"


class RecordSisaUnlearner(Unlearner):
    """Exact: retrain the organization's shard from round 0, the organization without the records."""

    name = "sisa-records"
    guarantee = "exact"
    level = "record"

    def unlearn(self, request: EraseRequest, federation: Federation) -> UnlearnResult:
        start = time.perf_counter()
        run, ledger = federation.run, federation.ledger
        check_record_request(request, ledger)
        org = request.subjects[0]
        shard = ledger.organization(org).shard
        previous = ledger.served()
        full = estimate_full_retrain(ledger, run, ())
        chain = ledger.chain(shard)
        base = chain[0]
        members = {c.round: ledger.members(shard, c.round) for c in chain[1:]}
        coord = federation.coordinator(sorted({m for ms in members.values() for m in ms}))
        extra = {org: {"exclude-records": "\n".join(request.records)}}
        state, rounds, steps, sent = ledger.get_state(base.hash), [], 0, 0
        for ckpt in chain[1:]:
            who = members[ckpt.round]
            if not who:
                rounds.append(NewRound(ckpt.round, rounds[-1].hash if rounds else base.hash, ()))
                continue
            fitted = coord.fit_round(shard, ckpt.round, state, list(who), extra_config=extra)
            state = fitted.aggregate
            steps += fitted.summary.client_steps
            sent += fitted.summary.bytes_sent
            rounds.append(NewRound(ckpt.round, fitted.aggregate_hash, tuple(fitted.contributions), fitted.summary.seconds))
        switch_chain(ledger, shard, base.id, rounds)
        remember_forgotten(ledger, org, request.records)
        served = export_served(run, ledger)
        orgs = tuple(sorted({m for ms in members.values() for m in ms}))
        cost = Cost(client_steps=steps, wall_seconds=time.perf_counter() - start,
                    rounds=sum(1 for r in rounds if r.contributions), aggregations=sum(1 for r in rounds if r.contributions),
                    bytes_sent=sent, organizations=orgs, basis="measured during this erasure")
        result = UnlearnResult(
            method=self.name, subjects=request.subjects, guarantee=self.guarantee, served_hash=served.hash,
            served_path=served.path, previous_served_hash=(previous or {}).get("served_hash"),
            heads={s: ledger.head(s).hash for s in range(run.settings.topology.shards)},
            recomputed={shard: tuple(r.round for r in rounds if r.contributions)}, organizations=orgs, cost=cost,
            full_retrain_cost=full,
            notes=(f"shard {shard} retrained from round 0; {org} trained without {len(request.records)} record ids",),
        )
        with open(run.path / "erasures.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": utc_now(), "requested_by": request.requested_by,
                                 "records": len(request.records), **result.to_dict()}, sort_keys=True) + "\n")
        return result
