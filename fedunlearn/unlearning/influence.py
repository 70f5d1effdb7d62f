"""``influence``: remove organizations with one damped Newton step on each affected shard's LoRA factors.

Influence functions (Koh & Liang, "Understanding Black-box Predictions via Influence Functions",
ICML 2017) and the Newton removal update of Guo et al. ("Certified Data Removal from Machine
Learning Models", ICML 2020). A shard's adapter θ approximately minimizes ``Σ_i w_i L_i`` (``w_i``:
the organizations' shares of examples in the last round). At a minimum the remaining organizations'
gradients cancel the subject's, ``Σ_{i≠s} w_i ∇L_i(θ) = −w_s ∇L_s(θ)``, so one Newton step on the
remaining objective is

    θ' = θ + x,   (Σ_{i≠s} w_i ∇²L_i(θ) + λI) x = g,   g = w_s ∇L_s(θ).

Solvers (``--option solver=``):

``local`` (default)
    GIANT (Wang, Roosta, Xu & Mahoney, NeurIPS 2018): one round of ``query.solve``. The server sends
    ``θ`` and ``g``; each remaining organization solves ``(c·C_i + λI) x_i = g`` by CG on its own
    records (``c = Σ_{i≠s} w_i``) and the server averages ``x = Σ (w_i / c) x_i``. It assumes the
    organizations' curvatures are alike (data roughly i.i.d. across them): the average of local
    inverses stands for the inverse of the average, exactly so when the ``C_i`` are equal, and the
    gap grows with their heterogeneity (GIANT's analysis bounds it through the local Hessians'
    concentration). The local curvature ``C_i`` is the empirical Fisher of the per-record losses
    (``curvature=fisher``, default: positive semi-definite, one backward pass per record, then CG
    iterations cost no model passes) or the exact Hessian (``curvature=hessian``: two passes per
    local product; the loss is not convex and CG stops at negative curvature). Cost: one round and
    about one epoch of local work per remaining organization, instead of one round per product.
``cg``, ``lissa``
    Conjugate gradients or LiSSA (:mod:`fedunlearn.training.solvers`) on the exact federated
    Hessian: every product is one federated round of ``query.hvp``; each remaining organization
    multiplies on its own data and the server sums ``w_i H_i v``.

``λ`` (``damping``) sets how far the step goes in the directions the remaining organizations' data
do not constrain (there ``x ≈ g / λ``); measured on ``benchmarks/bench_approx.py``, λ = 1 barely
moves a memorized canary and λ ≤ 0.2 removes it at a clear utility cost, so the default λ = 0.3 is a
compromise for that scenario, not a law: λ is in the units of the loss curvature and must be tuned
per model (see benchmarks/results/approx.md). ``step-scale`` multiplies the step.

``g`` comes from the subject
(``query.grad``) when it still takes part. Otherwise it is reconstructed from the subject's last
stored update ``U_s`` (sent from ``W``, ``k`` local steps at step size ``η``):
``∇L_s(θ) ≈ (W − U_s) / (k η)``. That assumes plain gradient descent with a gradient constant over
the local fit and equal at ``W`` and θ; under AdamW the update is the gradient rescaled per
coordinate, so the reconstruction has the right signs but not the right magnitudes.

Reported (``details`` in ``erasures.jsonl``): the solver's relative residual, its iterations and why
it stopped, and ``‖∇L_R‖`` of the remaining objective before and after the step.

Guarantee: ``empirical``. With ``noise-epsilon`` set, Gaussian noise scaled by
:func:`~fedunlearn.certify.removal_noise` is added, but the loss is not convex, so the (ε, δ) bound's
assumptions do not hold and the guarantee stays ``empirical``.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from fedunlearn.certify.removal import removal_noise
from fedunlearn.config import is_canary
from fedunlearn.errors import FederationError, RunStateError
from fedunlearn.federation import protocol
from fedunlearn.federation.coordinator import forgotten_records
from fedunlearn.federation.nodes import discover
from fedunlearn.federation.topology import derive_seed
from fedunlearn.ledger import Ledger
from fedunlearn.unlearning.approx import (
    ApproximateUnlearner,
    ApproxOptions,
    ApproxOutcome,
    Queries,
    State,
    add,
    nbytes,
    scale,
    shard_weights,
    sub,
)
from fedunlearn.unlearning.base import EraseRequest, Federation
from fedunlearn.training.solvers import SolveResult, norm, solve

__all__ = ["InfluenceUnlearner", "stored_gradient"]


def stored_gradient(ledger: Ledger, shard: int, org: str, lr: float) -> State:
    """``(W − U) / (k η)`` from ``org``'s last stored update on ``shard``'s head chain (see module doc)."""
    chain = ledger.chain(shard)
    for i in range(len(chain) - 1, 0, -1):
        for c in ledger.contributions(chain[i].id):
            if c.org == org:
                update = ledger.get_state(c.update_hash, org=org)
                start = ledger.get_state(chain[i - 1].hash)
                steps = max(int(c.metrics.get("steps", 1)), 1)
                return scale(1.0 / (lr * steps), sub(start, update))
    raise RunStateError(f"organization {org!r} has no stored update on shard {shard}'s chain; use gradient='subject'")


class InfluenceUnlearner(ApproximateUnlearner):
    """One damped Newton step per affected shard, with federated gradients and HVPs."""

    name = "influence"
    guarantee = "empirical"
    cost_basis = "client-steps count local batches (an HVP counts 2: double backward)"

    def compute(self, request: EraseRequest, federation: Federation, options: ApproxOptions) -> ApproxOutcome:
        ledger, run = federation.ledger, federation.run
        subjects = set(request.subjects)
        shards = self.affected_shards(ledger, request.subjects)
        active = {o.name for o in ledger.organizations() if o.status == "active"}
        weights = {s: shard_weights(ledger, s) for s in shards}
        # canary organizations of a client-level audit hold no data: no loss, no gradient, no curvature
        remaining = {s: sorted(o for o in weights[s] if o not in subjects and o in active and not is_canary(o))
                     for s in shards}
        coord = federation.coordinator(sorted({o for s in shards for o in remaining[s]}))
        source = self._gradient_source(federation, sorted(subjects), options)
        queries = Queries(federation, dict(coord.nodes) | source.get("nodes", {}))
        outcome = ApproxOutcome(states={})
        for shard in shards:
            theta = ledger.get_state(ledger.head(shard).hash)
            w, orgs = weights[shard], remaining[shard]
            here = sorted(o for o in w if o in subjects)
            if not orgs:  # nobody left to compute curvature: the shard keeps no data, start over
                raise RunStateError(f"shard {shard} would keep no organization after erasing {here}; use sisa")
            if source["kind"] == "subject":  # all its records, those it forgot before included: all go
                replies = queries.ask(protocol.QUERY_GRAD, {o: protocol.make_content(state=theta) for o in here},
                                      group_id=f"influence/shard-{shard}/grad-subject",
                                      sizes={o: nbytes(theta) for o in here})
                g = {k: sum(w[o] * replies[o].state[k] for o in here) for k in theta}
            else:
                g = {k: torch.zeros_like(v) for k, v in theta.items()}
                for o in here:
                    g = add(g, scale(w[o], stored_gradient(ledger, shard, o, run.settings.train.lr)))
            kept = sum(w[o] for o in orgs)
            exclude = {o: forgotten_records(ledger, o) for o in orgs}

            def config(o: str, **extra) -> dict:
                return {**extra, protocol.EXCLUDE_RECORDS: "\n".join(exclude[o])} if exclude[o] else extra

            def grad_remaining(state: State, tag: str) -> State:
                rep = queries.ask(protocol.QUERY_GRAD, {o: protocol.make_content(state=state, config=config(o))
                                                        for o in orgs},
                                  group_id=f"influence/shard-{shard}/grad-{tag}", sizes={o: nbytes(state) for o in orgs})
                return {k: sum(w[o] * rep[o].state[k] for o in orgs) / kept for k in state}

            calls = [0]

            def hvp(v: State) -> State:
                calls[0] += 1
                payload = {**theta, **{protocol.VECTOR_PREFIX + k: t for k, t in v.items()}}
                rep = queries.ask(protocol.QUERY_HVP, {o: protocol.make_content(state=payload, config=config(o))
                                                       for o in orgs},
                                  group_id=f"influence/shard-{shard}/hvp-{calls[0]}", passes=2,
                                  sizes={o: nbytes(payload) for o in orgs})
                return {k: sum(w[o] * rep[o].state[k] for o in orgs) for k in v}

            if options.solver == "local":
                sol, grad_before = self._giant(queries, shard, theta, g, orgs, w, kept, options, config)
            else:
                grad_before = norm(grad_remaining(theta, "before"))
                sol = solve(options.solver, hvp, g, damping=options.damping, iterations=options.iterations,
                            scale=options.lissa_scale, tol=options.tolerance)
            sol = replace(sol, x=scale(options.step_scale, sol.x)) if options.step_scale != 1.0 else sol
            new = add(theta, sol.x)
            grad_after = norm(grad_remaining(new, "after"))
            detail = {"shard": shard, "subjects": here, "gradient_source": source["kind"], "solver": options.solver,
                      "curvature": options.curvature if options.solver == "local" else "hessian",
                      "damping": options.damping, "step_scale": options.step_scale,
                      "residual": sol.residual, "iterations": sol.iterations, "stopped": sol.stopped,
                      "g_norm": norm(g), "step_norm": norm(sol.x), "remaining_grad_norm_before": grad_before,
                      "remaining_grad_norm_after": grad_after}
            if options.noise_epsilon > 0:
                noise = removal_noise(epsilon=options.noise_epsilon, delta=options.noise_delta,
                                      gradient_residual=grad_after, strong_convexity=max(options.damping, 1e-12))
                gen = torch.Generator().manual_seed(derive_seed(run.settings.run.seed, "influence-noise", shard))
                new = {k: v + noise.sigma * torch.randn(v.shape, generator=gen) for k, v in new.items()}
                detail.update(noise_sigma=noise.sigma, noise_assumptions=list(noise.assumptions))
            outcome.states[shard] = new
            outcome.details.setdefault("shards", []).append(detail)
            outcome.notes.append(
                f"shard {shard}: {self._describe(options)} {sol.iterations} iterations, residual {sol.residual:.2e} "
                f"({sol.stopped}); "
                f"‖∇L_remaining‖ {grad_before:.3g} → {grad_after:.3g}; gradient from {source['kind']}"
            )
        outcome.client_steps, outcome.bytes_sent, outcome.rounds = queries.client_steps, queries.bytes_sent, queries.rounds
        outcome.organizations = tuple(sorted(queries.organizations - subjects))
        if source["kind"] == "subject":
            outcome.notes.append(f"the subjects {sorted(subjects)} answered query.grad (and were not sent anything else)")
        return outcome

    @staticmethod
    def _describe(options: ApproxOptions) -> str:
        if options.solver == "local":
            return f"local {options.curvature} CG (GIANT, one round),"
        return f"federated {options.solver} (one round per HVP),"

    @staticmethod
    def _giant(queries: Queries, shard: int, theta: State, g: State, orgs: list[str], w: dict[str, float],
               kept: float, options: ApproxOptions, config) -> tuple[SolveResult, float]:
        """One ``query.solve`` round: x = Σ (w_i / kept) x_i with (kept·C_i + λI) x_i = g on each org's data.

        Each remaining organization states the system with its own curvature ``C_i`` scaled to the
        remaining objective's weight ``kept = Σ_{i≠s} w_i``, so that with identical ``C_i`` the average
        is the exact solution of ``(Σ_{i≠s} w_i C_i + λI) x = g`` (GIANT's harmonic-vs-arithmetic mean
        gap is the approximation otherwise). Also returns ``‖∇L_R(θ)‖`` from the gradients the
        organizations send with their solutions. The reported residual is the weighted mean of the
        local residuals (the global one would cost one more round of HVPs).
        """
        payload = {**theta, **{protocol.VECTOR_PREFIX + k: t for k, t in g.items()}}
        cfg = {"curvature": options.curvature, "damping": options.damping, "iterations": options.iterations,
               "tolerance": options.tolerance, "hessian-scale": kept, "solver": "cg"}
        rep = queries.ask(protocol.QUERY_SOLVE, {o: protocol.make_content(state=payload, config=config(o, **cfg))
                                                 for o in orgs},
                          group_id=f"influence/shard-{shard}/solve", sizes={o: nbytes(payload) for o in orgs},
                          passes=1)
        x = {k: sum(w[o] * rep[o].state[k] for o in orgs) / kept for k in g}
        grad = {k: sum(w[o] * rep[o].state[protocol.GRADIENT_PREFIX + k] for o in orgs) / kept for k in g}
        residual = sum(w[o] * rep[o].metrics["residual"] for o in orgs) / kept
        iterations = max(int(rep[o].metrics["iterations"]) for o in orgs)
        return SolveResult(x=x, iterations=iterations, residual=residual, converged=residual <= options.tolerance,
                           stopped="tolerance" if residual <= options.tolerance else "iterations"), norm(grad)

    @staticmethod
    def _gradient_source(federation: Federation, subjects: list[str], options: ApproxOptions) -> dict:
        """``{"kind": "subject", "nodes": ...}`` when the subjects answer, else ``{"kind": "stored"}``."""
        if options.gradient == "stored":
            return {"kind": "stored"}
        timeout = federation.run.settings.run.discovery_timeout
        if options.gradient == "auto":
            timeout = min(timeout, 5.0)
        try:
            return {"kind": "subject", "nodes": discover(federation.grid, subjects, timeout=timeout)}
        except FederationError:
            if options.gradient == "subject":
                raise
            return {"kind": "stored"}
