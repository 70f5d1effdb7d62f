"""``subtract`` and ``negate``: remove organizations by arithmetic on their stored contributions.

``subtract`` follows FedEraser (Liu et al., "FedEraser: Enabling Efficient Client-Level Data Removal
from Federated Learning Models", IWQoS 2021), in ΔW space (``space=deltaw``, default). The served
model depends on an adapter only through ``ΔW = s · B A`` per module, which is linear where the LoRA
factors are not. For each affected shard, from the checkpoint before the subject joined, every
round's actual aggregate step ``A_t = ΔW(W_t) − ΔW(W_{t-1})`` has the subjects' weighted steps
``w_s D_{s,t}`` (``D_{i,t} = ΔW(U_{i,t}) − ΔW(W_{t-1})``, ``U``: stored, encrypted updates) removed
and is renormalized over the remaining weight::

    M'_t = M'_{t-1} + (A_t − Σ_s w_s D_{s,t}) / (1 − Σ_s w_s)

i.e. the kept organizations' steps with weights ``w_i / Σ_{j≠s} w_j`` plus FedAvg's factor-averaging
cross term, so that erasing nobody replays the run exactly. The stored steps were computed from
models that had seen the subject; in K of the replayed rounds (evenly spread, K =
``calibration-rounds``: by default one every ``calibration-interval`` = 2 replayed rounds, as
FedEraser's Δt; a number, 0 allowed) the remaining organizations *calibrate* them: each trains
``calibration-epochs`` local epochs from the replayed model (a ``train`` message, same seed as the
original round) and the server keeps, per module, the ΔW direction of that calibration update and
the ΔW magnitude of the stored one. The final ``M'`` is re-factorized to the adapter's rank by
truncated SVD (:func:`factorize`; the discarded share is reported). No client trains more than K
short fits.

``space=factors`` is the first version, kept for comparison: the same replay on the LoRA factors
(``W'_t = W'_{t-1} + Σ_{i≠s} w'_i (U_{i,t} − W_{t-1})``), exact after one round, but the factor
deltas of the with-subject trajectory do not compose on another trajectory (``B A`` is bilinear).

``negate`` is the task-vector baseline (Ilharco et al., "Editing Models with Task Arithmetic",
ICLR 2023): the subject's task vector is its weighted contributions to the aggregates,
``τ_s = Σ_t w_{s,t} D_{s,t}``, and the served adapter becomes ``θ − α τ_s``. No Flower, no client.

Both need the stored updates (``ledger.store-updates``) and read them before the subject's key is
shredded. Guarantee: ``empirical``.
"""

from __future__ import annotations

import torch

from fedunlearn.config import is_canary
from fedunlearn.errors import RunStateError
from fedunlearn.federation import protocol
from fedunlearn.training.canaries import canary_train_config, run_canary_key
from fedunlearn.federation.coordinator import forgotten_records
from fedunlearn.federation.topology import derive_seed
from fedunlearn.ledger import Ledger
from fedunlearn.models import delta_weights
from fedunlearn.models.delta import lora_modules
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
from fedunlearn.training.client import lora_spec
from fedunlearn.unlearning.base import EraseRequest, Federation

__all__ = ["NegateUnlearner", "SubtractUnlearner", "calibration_rounds", "factorize"]


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


def factorize(deltas: dict[str, torch.Tensor], like: State, scaling: float) -> tuple[State, float]:
    """LoRA factors of rank ``r`` (``like``'s) whose ``scaling · B A`` best approximates each ``ΔW``.

    Truncated SVD ``ΔW ≈ U_r Σ_r V_rᵀ`` (Eckart-Young: the best rank-``r`` approximation in Frobenius
    norm), split evenly: ``B = U_r √(Σ_r/s)``, ``A = √(Σ_r/s) V_rᵀ``. Returns the state and the relative
    Frobenius error ``‖ΔW − s B A‖ / ‖ΔW‖`` over all modules (what the rank-``r`` adapter cannot hold).
    """
    out: State = {}
    lost = total = 0.0
    for prefix, (a, _) in lora_modules(like).items():
        m = deltas[prefix].double()
        r = a.shape[0]
        u, sv, vh = torch.linalg.svd(m, full_matrices=False)
        root = (sv[:r] / scaling).sqrt()
        out[prefix + ".lora_A.weight"] = (root[:, None] * vh[:r]).float()
        out[prefix + ".lora_B.weight"] = (u[:, :r] * root[None, :]).float()
        lost += float((sv[r:] ** 2).sum())
        total += float((sv ** 2).sum())
    return dict(sorted(out.items())), (lost / total) ** 0.5 if total > 0 else 0.0


def _dw_rescale(stored: dict[str, torch.Tensor], calibrated: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per module: the calibrated ΔW direction with the stored ΔW magnitude (FedEraser's calibration)."""
    out = {}
    for k, d in stored.items():
        cn = float(calibrated[k].norm())
        out[k] = calibrated[k] * (float(d.norm()) / cn) if cn > 0 else d.clone()
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

    def needs_flower(self, request: EraseRequest, ledger: Ledger, run: RunFolder) -> bool:
        return ApproxOptions.from_request(request).calibration_count(1) > 0  # any calibration at all

    def validate(self, request: EraseRequest, ledger: Ledger) -> None:
        """Also refuse a shard whose history holds an organization erased before: subtraction replays
        every stored update of the shard, and that organization's were shredded with its key."""
        super().validate(request, ledger)
        for subject in request.subjects:
            shard = ledger.organization(subject).shard
            shredded = sorted({c.org for ck in ledger.chain(shard)[1:] for c in ledger.contributions(ck.id)
                               if c.org not in request.subjects and ledger.organization(c.org).status == "erased"})
            if shredded:
                raise RunStateError(
                    f"{self.name} replays shard {shard}'s stored updates, but those of {shredded} (erased earlier, "
                    f"approximately) were shredded with their keys; erase {subject!r} with sisa or retrain (exact, "
                    "and they also remove what the earlier erasure left), or with influence or negate"
                )

    def compute(self, request: EraseRequest, federation: Federation, options: ApproxOptions) -> ApproxOutcome:
        ledger, run = federation.ledger, federation.run
        subjects = set(request.subjects)
        outcome = ApproxOutcome(states={})
        plans = {}
        for shard in self.affected_shards(ledger, request.subjects):
            base = min((ledger.checkpoint_before_join(shard, s) for s in subjects), key=lambda c: c.round)
            chain = [c for c in ledger.chain(shard) if c.round > base.round]
            plans[shard] = (base, chain, calibration_rounds([c.round for c in chain],
                                                            options.calibration_count(len(chain))))
        needed = sorted({c.org for _, chain, cal in plans.values() for ck in chain if ck.round in cal
                         for c in ledger.contributions(ck.id) if c.org not in subjects})
        queries = Queries(federation, dict(federation.coordinator(needed).nodes) if needed else {})
        replay = self._replay_deltaw if options.space == "deltaw" else self._replay_factors
        for shard, (base, chain, calibrated) in sorted(plans.items()):
            state, detail = replay(ledger, run, shard, base, chain, calibrated, subjects, options, queries)
            outcome.states[shard] = state
            outcome.notes.append(f"shard {shard}: replayed rounds {chain[0].round}..{chain[-1].round} without "
                                 f"{sorted(subjects)} in {options.space} space; calibrated rounds {calibrated or 'none'}"
                                 + (f"; rank-{detail['rank']} re-factorization keeps all but "
                                    f"{detail['truncation_error']:.1%} of ΔW" if "rank" in detail else ""))
            outcome.details.setdefault("shards", []).append({"shard": shard, "base_round": base.round,
                                                             "calibrated_rounds": calibrated, **detail})
        outcome.client_steps, outcome.bytes_sent, outcome.rounds = queries.client_steps, queries.bytes_sent, queries.rounds
        outcome.organizations = tuple(sorted(queries.organizations))
        return outcome

    @staticmethod
    def _calibrate(queries: Queries, run: RunFolder, ledger: Ledger, shard: int, rnd: int, state: State,
                   orgs: list[str], options: ApproxOptions) -> dict[str, State]:
        """The kept organizations train ``calibration-epochs`` from ``state``; their new adapters."""
        t = run.settings.train
        contents = {}
        key = run_canary_key(run.path) if any(is_canary(o) for o in orgs) else b""  # read once, not per canary
        for o in orgs:
            config = {"round": rnd, "shard": shard, "org": o, "epochs": options.calibration_epochs,
                      "seed": derive_seed(run.settings.run.seed, "train", shard, rnd, o),
                      "lr": t.lr, "batch-size": t.batch_size}
            if forgotten_records(ledger, o):
                config[protocol.EXCLUDE_RECORDS] = "\n".join(forgotten_records(ledger, o))
            if is_canary(o):  # a canary of the client-level audit answers with its keyed update, as in training
                config.update(canary_train_config(key, o, run.settings))
            contents[o] = protocol.make_content(state=state, config=config)
        replies = queries.ask(protocol.TRAIN, contents, group_id=f"subtract/shard-{shard}/round-{rnd}",
                              sizes={o: nbytes(state) for o in orgs})
        return {o: replies[o].state for o in orgs}

    def _replay_deltaw(self, ledger, run, shard, base, chain, calibrated, subjects, options, queries):
        """Replay in ΔW space: ``M'_t = M'_{t-1} + (A_t − Σ_s w_s D_s) / (1 − Σ_s w_s)`` per round.

        ``A_t = ΔW(W_t) − ΔW(W_{t-1})`` is the aggregate's actual step and ``D_i = ΔW(U_i) − ΔW(W_{t-1})``
        organization i's; removing the subjects' weighted steps and renormalizing leaves the kept
        organizations' steps with weights ``w_i / Σ_{j≠s} w_j`` plus FedAvg's factor-averaging cross
        term (so erasing nobody replays the run exactly). A calibrated round replaces the kept steps
        by the calibration fits' ΔW directions with the stored ΔW magnitudes. The result is
        re-factorized to the adapter's rank by truncated SVD (:func:`factorize`).
        """
        s = lora_spec(run.settings).scaling
        prev_old = ledger.get_state(base.hash)
        prev_dw = delta_weights(prev_old, s)
        m = {k: v.double() for k, v in prev_dw.items()}
        for ckpt in chain:
            contribs = ledger.contributions(ckpt.id)
            new_dw = delta_weights(ledger.get_state(ckpt.hash), s)
            gone = [c for c in contribs if c.org in subjects]
            kept = [c for c in contribs if c.org not in subjects]
            if not contribs:
                step = {k: new_dw[k].double() - prev_dw[k].double() for k in m}
            elif not kept:
                step = {k: torch.zeros_like(v) for k, v in m.items()}
            else:
                dws = {c.org: delta_weights(_stored(ledger, c.org, c.update_hash), s) for c in contribs}
                d = {o: {k: dw[k].double() - prev_dw[k].double() for k in m} for o, dw in dws.items()}
                total = sum(c.num_examples for c in contribs)
                if ckpt.round in calibrated:
                    sent, _ = factorize(m, prev_old, s)
                    sent_dw = delta_weights(sent, s)
                    states = self._calibrate(queries, run, ledger, shard, ckpt.round, sent, [c.org for c in kept], options)
                    kept_total = sum(c.num_examples for c in kept)
                    step = {k: torch.zeros_like(v) for k, v in m.items()}
                    for c in kept:
                        cal = {k: delta_weights(states[c.org], s)[k].double() - sent_dw[k].double() for k in m}
                        step = {k: step[k] + (c.num_examples / kept_total) * v
                                for k, v in _dw_rescale(d[c.org], cal).items()}
                else:
                    w_gone = sum(c.num_examples for c in gone) / total
                    agg = {k: new_dw[k].double() - prev_dw[k].double() for k in m}
                    for c in gone:
                        agg = {k: agg[k] - (c.num_examples / total) * d[c.org][k] for k in m}
                    step = {k: v / (1.0 - w_gone) for k, v in agg.items()}
            m = {k: m[k] + step[k] for k in m}
            prev_old, prev_dw = ledger.get_state(ckpt.hash), new_dw
        state, error = factorize(m, prev_old, s)
        return state, {"space": "deltaw", "rank": run.settings.lora.r, "truncation_error": error}

    def _replay_factors(self, ledger, run, shard, base, chain, calibrated, subjects, options, queries):
        """The first version, kept for comparison: replay in LoRA-factor space (the aggregates' space).

        ``W'_t = W'_{t-1} + Σ_{i≠s} w'_i (U_{i,t} − W_{t-1})``; after one round it equals retraining
        exactly, but over several rounds the factor deltas of the with-subject trajectory do not
        compose on another trajectory (``B A`` is bilinear), see benchmarks/results/approx.md.
        """
        previous_old = ledger.get_state(base.hash)  # W_{t-1}
        state = previous_old  # W'_{t-1}
        for ckpt in chain:
            kept = [c for c in ledger.contributions(ckpt.id) if c.org not in subjects]
            if kept:
                total = sum(c.num_examples for c in kept)
                deltas = {c.org: sub(_stored(ledger, c.org, c.update_hash), previous_old) for c in kept}
                if ckpt.round in calibrated:
                    states = self._calibrate(queries, run, ledger, shard, ckpt.round, state, [c.org for c in kept], options)
                    deltas = {o: _rescale(d, sub(states[o], state)) for o, d in deltas.items()}
                step = {k: torch.zeros_like(v) for k, v in state.items()}
                for c in kept:
                    step = add(step, scale(c.num_examples / total, deltas[c.org]))
                state = add(state, step)
            previous_old = ledger.get_state(ckpt.hash)
        return state, {"space": "factors"}


class NegateUnlearner(ApproximateUnlearner):
    """Task-vector negation: ``θ − α τ_subject`` (Ilharco et al. 2023); no Flower."""

    name = "negate"
    guarantee = "empirical"
    cost_basis = "no client work; server arithmetic on stored updates"

    def supports(self, run: RunFolder) -> str | None:
        return SubtractUnlearner().supports(run)

    def needs_flower(self, request: EraseRequest, ledger: Ledger, run: RunFolder) -> bool:
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
