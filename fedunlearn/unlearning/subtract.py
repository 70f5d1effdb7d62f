"""``subtract`` and ``negate``: remove organizations by arithmetic on their stored contributions.

``subtract`` follows FedEraser (Liu et al., "FedEraser: Enabling Efficient Client-Level Data Removal
from Federated Learning Models", IWQoS 2021). For each affected shard, starting from the checkpoint
before the subject joined, the history is replayed in LoRA-factor space (FedAvg averages factors,
so that is the space the aggregates live in) without the subject::

    W'_t = W'_{t-1} + Σ_{i≠s} w'_i · D_{i,t},    D_{i,t} = U_{i,t} − W_{t-1},   w'_i = n_i / Σ_{j≠s} n_j

where ``U_{i,t}`` are the stored (encrypted) updates and the weights are renormalized over the
remaining organizations. The stored deltas were computed from models that had seen the subject; in
K of the replayed rounds (evenly spread, K = ``calibration-rounds``, 0 allowed) the remaining
organizations *calibrate* them: each trains ``calibration-epochs`` local epochs from ``W'_{t-1}``
(a ``train`` message, same seed as the original round) and the server keeps the direction of that
calibration update and, per LoRA factor, the magnitude of the stored one:
``D'_{i,t}[k] = ‖D_{i,t}[k]‖ · C_{i,t}[k] / ‖C_{i,t}[k]‖``. No client trains more than K short fits.

``negate`` is the task-vector baseline (Ilharco et al., "Editing Models with Task Arithmetic",
ICLR 2023): the subject's task vector is its weighted contributions to the aggregates,
``τ_s = Σ_t w_{s,t} D_{s,t}``, and the served adapter becomes ``θ − α τ_s``. No Flower, no client.

Both need the stored updates (``ledger.store-updates``) and read them before the subject's key is
shredded. Guarantee: ``empirical``.
"""

from __future__ import annotations

import torch

from fedunlearn.errors import RunStateError
from fedunlearn.federation import protocol
from fedunlearn.federation.topology import derive_seed
from fedunlearn.ledger import Ledger
from fedunlearn.runs import RunFolder
from fedunlearn.unlearning.approx import (
    ApproximateUnlearner,
    ApproxOptions,
    ApproxOutcome,
    Queries,
    State,
    add,
    nbytes,
    scale,
    sub,
)
from fedunlearn.unlearning.base import EraseRequest, Federation

__all__ = ["NegateUnlearner", "SubtractUnlearner", "calibration_rounds"]


def calibration_rounds(rounds: list[int], k: int) -> list[int]:
    """``k`` of ``rounds`` spread evenly, the first always included (errors compound from the start)."""
    if k <= 0 or not rounds:
        return []
    if k >= len(rounds):
        return list(rounds)
    step = len(rounds) / k
    return sorted({rounds[int(i * step)] for i in range(k)})


def _stored(ledger: Ledger, org: str, digest: str) -> State:
    if not ledger.has_state(digest, org=org):
        raise RunStateError(
            f"organization {org!r}'s update {digest[:16]}… is not stored; subtraction needs every stored update: "
            "enable ledger.store-updates for the run, or erase with sisa"
        )
    return ledger.get_state(digest, org=org)


def _rescale(stored: State, calibrated: State) -> State:
    """Per factor: the calibrated direction with the stored magnitude (FedEraser's calibration)."""
    out = {}
    for k, d in stored.items():
        c = calibrated[k]
        cn = float(c.norm())
        out[k] = c * (float(d.norm()) / cn) if cn > 0 else d.clone()
    return out


class SubtractUnlearner(ApproximateUnlearner):
    """FedEraser-style: replay the shard's history without the subject, K rounds calibrated."""

    name = "subtract"
    guarantee = "empirical"
    cost_basis = "client-steps are the calibration fits' optimizer steps"

    def supports(self, run: RunFolder) -> str | None:
        if not run.settings.ledger.store_updates:
            return "the run did not store client updates (ledger.store-updates = false); use sisa"
        return None

    def needs_grid(self, request: EraseRequest, ledger: Ledger, run: RunFolder) -> bool:
        return ApproxOptions.from_request(request).calibration_rounds > 0

    def compute(self, request: EraseRequest, federation: Federation, options: ApproxOptions) -> ApproxOutcome:
        ledger, run = federation.ledger, federation.run
        subjects = set(request.subjects)
        t = run.settings.train
        outcome = ApproxOutcome(states={})
        plans = {}
        for shard in self.affected_shards(ledger, request.subjects):
            base = min((ledger.checkpoint_before_join(shard, s) for s in subjects), key=lambda c: c.round)
            chain = [c for c in ledger.chain(shard) if c.round > base.round]
            plans[shard] = (base, chain, calibration_rounds([c.round for c in chain], options.calibration_rounds))
        needed = sorted({c.org for _, chain, cal in plans.values() for ck in chain if ck.round in cal
                         for c in ledger.contributions(ck.id) if c.org not in subjects})
        queries = Queries(federation, dict(federation.coordinator(needed).nodes) if needed else {})
        for shard, (base, chain, calibrated) in sorted(plans.items()):
            previous_old = ledger.get_state(base.hash)  # W_{t-1}
            state = previous_old  # W'_{t-1}
            for ckpt in chain:
                kept = [c for c in ledger.contributions(ckpt.id) if c.org not in subjects]
                if kept:
                    total = sum(c.num_examples for c in kept)
                    deltas = {c.org: sub(_stored(ledger, c.org, c.update_hash), previous_old) for c in kept}
                    if ckpt.round in calibrated:
                        contents = {c.org: protocol.make_content(state=state, config={
                            "round": ckpt.round, "shard": shard, "org": c.org, "epochs": options.calibration_epochs,
                            "seed": derive_seed(run.settings.run.seed, "train", shard, ckpt.round, c.org),
                            "lr": t.lr, "batch-size": t.batch_size}) for c in kept}
                        replies = queries.ask(protocol.TRAIN, contents, group_id=f"subtract/shard-{shard}/round-{ckpt.round}",
                                              sizes={c.org: nbytes(state) for c in kept})
                        deltas = {o: _rescale(d, sub(replies[o].state, state)) for o, d in deltas.items()}
                    step = {k: torch.zeros_like(v) for k, v in state.items()}
                    for c in kept:
                        step = add(step, scale(c.num_examples / total, deltas[c.org]))
                    state = add(state, step)
                previous_old = ledger.get_state(ckpt.hash)
            outcome.states[shard] = state
            outcome.notes.append(f"shard {shard}: replayed rounds {chain[0].round}..{chain[-1].round} without "
                                 f"{sorted(subjects)}; calibrated rounds {calibrated or 'none'}")
            outcome.details.setdefault("shards", []).append({"shard": shard, "base_round": base.round,
                                                             "calibrated_rounds": calibrated})
        outcome.client_steps, outcome.bytes_sent, outcome.rounds = queries.client_steps, queries.bytes_sent, queries.rounds
        outcome.organizations = tuple(sorted(queries.organizations))
        return outcome


class NegateUnlearner(ApproximateUnlearner):
    """Task-vector negation: ``θ − α τ_subject`` (Ilharco et al. 2023); no Flower."""

    name = "negate"
    guarantee = "empirical"
    cost_basis = "no client work; server arithmetic on stored updates"

    def supports(self, run: RunFolder) -> str | None:
        return SubtractUnlearner().supports(run)

    def needs_grid(self, request: EraseRequest, ledger: Ledger, run: RunFolder) -> bool:
        return False

    def compute(self, request: EraseRequest, federation: Federation, options: ApproxOptions) -> ApproxOutcome:
        ledger = federation.ledger
        outcome = ApproxOutcome(states={})
        for shard in self.affected_shards(ledger, request.subjects):
            chain = ledger.chain(shard)
            head = ledger.get_state(chain[-1].hash)
            tau = {k: torch.zeros_like(v) for k, v in head.items()}
            for prev, ckpt in zip(chain, chain[1:]):
                mine = [c for c in ledger.contributions(ckpt.id) if c.org in request.subjects]
                if mine:
                    start = ledger.get_state(prev.hash)
                    for c in mine:
                        tau = add(tau, scale(c.weight, sub(_stored(ledger, c.org, c.update_hash), start)))
            outcome.states[shard] = sub(head, scale(options.negate_scale, tau))
            outcome.notes.append(f"shard {shard}: subtracted α = {options.negate_scale:g} times the subjects' task vector")
        return outcome
