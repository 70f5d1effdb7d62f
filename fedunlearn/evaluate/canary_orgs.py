"""One-run audit of client-level DP with canary organizations (Andrew et al. 2024 + Steinke et al. 2023).

A run with ``dp.audit-canary-orgs = M`` has M canary organizations, each included by a keyed
Bernoulli(½) coin and, when included, adding a fixed update ``n·u_c`` along its own secret unit
direction in every round it is sampled in, through the real aggregation (clipping, noise); see
:mod:`fedunlearn.training.canaries`. The auditor holds what the server holds: the ledger's served
components (shard adapters) and their round-0 initialization. For a served model it

1. recomputes every canary's coin and direction ``u_c`` from the run secret;
2. scores canary ``c`` by ``cos(θ_s − θ_s⁰, u_c)``, the cosine between the LoRA factors' change
   since initialization of its shard ``s`` (the sum of every aggregate update served) and its
   direction — fixed before looking at the model (white-box, Andrew et al.'s statistic);
3. guesses the top ``k = ⌊M/4⌋`` "included" and the bottom ``k`` "excluded" and turns the right
   guesses into the one-run ε lower bound (:func:`~fedunlearn.evaluate.privacy.audit_one_run`).

What it audits: one organization's participation, i.e. *client-level* DP (DP-FedAvg). The bound
holds with 95% confidence whatever the model; it is compared with the ε the run's accountant
gives the canaries (the audit log's client-level DP rounds in which they were eligible: every
round from the first, so the largest ε of any organization with the same schedule). An accountant
ε below the bound is refuted, and with it every certificate whose (ε, δ) it produced.
Canaries perturb the model: a canary audit is a research run of its own, never a served one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from fedunlearn.evaluate.privacy import GUESS_FRACTION, OneRunAudit, audit_one_run
from fedunlearn.training.canaries import canary_direction, canary_norm, canary_plan, direction_seed, run_canary_key

__all__ = ["CANARY_ORGS_NOTE", "CanaryOrgAudit", "audit_canary_orgs", "canary_cosines", "served_changes"]

CANARY_ORGS_NOTE = ("each canary organization joined the run by an independent keyed Bernoulli(1/2) coin and sent "
                    "a fixed update along its own secret direction; scored by the cosine of its shard's LoRA change "
                    "since initialization with that direction (Andrew et al. 2024, one-run bound of Steinke et al. "
                    "2023); audits client-level privacy")


@dataclass(frozen=True)
class CanaryOrgAudit:
    """The one-run ε lower bound of one served model from its canary organizations.

    Attributes
    ----------
    audit : OneRunAudit
        Coins, cosine scores and the bound.
    names : tuple of str
        The M canaries, in the order of ``audit.included`` / ``audit.scores``.
    norm : float
        Norm of each canary's update.
    history : tuple of (z, q, rounds)
        The client-level DP rounds the canaries were eligible in (from the audit log); empty
        without client-level DP.
    accounted_epsilon : float or None
        The accountant's ε for the canaries at ``audit.bound.delta`` (None without client-level DP).
    """

    audit: OneRunAudit
    names: tuple[str, ...]
    norm: float
    history: tuple[tuple[float, float, int], ...] = ()
    accounted_epsilon: float | None = None

    @property
    def epsilon(self) -> float:
        return self.audit.epsilon

    @property
    def consistent(self) -> bool | None:
        """False when the accountant's ε is below the bound (refuted); None without DP accounting."""
        return None if self.accounted_epsilon is None else not self.accounted_epsilon < self.audit.epsilon

    def at_delta(self, delta: float) -> CanaryOrgAudit:
        """The same guesses, and the accountant's ε, at another δ (a certificate's)."""
        return replace(self, audit=self.audit.at_delta(delta), accounted_epsilon=_accounted(self.history, delta))

    def to_dict(self) -> dict[str, Any]:
        b = self.audit.bound
        return {"epsilon": b.epsilon, "delta": b.delta, "confidence": b.confidence, "method": "one-run-canary-orgs",
                "score": "cosine", "canaries": b.canaries, "included": int(self.audit.included.sum()),
                "guesses": b.guesses, "correct": b.correct, "norm": self.norm,
                "epsilon_accounted": self.accounted_epsilon, "consistent": self.consistent,
                "scores": {n: float(s) for n, s in zip(self.names, self.audit.scores)},
                "note": CANARY_ORGS_NOTE}


def _accounted(history: tuple[tuple[float, float, int], ...], delta: float) -> float | None:
    if not history:
        return None
    if delta <= 0:  # the Gaussian mechanism is no (ε, 0)-DP for any finite ε
        return math.inf
    from fedunlearn.certify.accounting import account

    return float(account(list(history), delta).epsilon)


def served_changes(ledger: Any, served_hash: str) -> dict[int, dict[str, torch.Tensor]] | None:
    """Shard -> LoRA change since round 0 of each component of served model ``served_hash``.

    None when the ledger does not hold that model (never served, or purged with an erased
    organization's data).
    """
    rows = [r for r in ledger.served_history() if r["served_hash"] == served_hash]
    if not rows or rows[-1]["purged"]:
        return None
    out: dict[int, dict[str, torch.Tensor]] = {}
    for cid in rows[-1]["components"]:
        node = ledger.checkpoint(cid)
        root = node
        while root.parent_id:
            root = ledger.checkpoint(root.parent_id)
        head, init = ledger.get_state(node.hash), ledger.get_state(root.hash)
        out[node.shard] = {k: head[k].float() - init[k].float() for k in head}
    return out


def canary_cosines(changes: Mapping[int, Mapping[str, torch.Tensor]], seeds: Mapping[str, str],
                   shards: Mapping[str, int]) -> dict[str, float]:
    """cos(change of its shard, its direction) per canary; 0 for a canary whose shard is not served."""
    out: dict[str, float] = {}
    for name, seed in seeds.items():
        delta = changes.get(shards[name])
        if delta is None:
            out[name] = 0.0
            continue
        u = canary_direction(seed, delta)
        dot = sum(float((delta[k] * u[k]).sum()) for k in delta)
        norm = math.sqrt(sum(float((d * d).sum()) for d in delta.values()))
        out[name] = dot / norm if norm > 0 else 0.0
    return out


def _canary_history(run: Any, names: list[str]) -> tuple[tuple[float, float, int], ...]:
    """The client-level DP rounds (z, q, 1) the included canaries were eligible in, the largest account."""
    from fedunlearn.certify.budget import client_history
    from fedunlearn.certify.runaudit import AUDIT_FILE, RunAudit

    if not run.settings.dp.client_level or not names or not (run.path / AUDIT_FILE).is_file():
        return ()
    with RunAudit.open(run.path) as log:
        events = log.events("round-commit")
        histories = [client_history(events, log.subject(n)) for n in names]
    return tuple(tuple(step) for step in max(histories, key=len))  # type: ignore[misc]


def audit_canary_orgs(run: Any, ledger: Any, served_hash: str, *, delta: float = 0.0, confidence: float = 0.95,
                      guess_fraction: float = GUESS_FRACTION) -> CanaryOrgAudit | None:
    """The canary-organization audit of served model ``served_hash`` of ``run``.

    Parameters
    ----------
    run : RunFolder
    ledger : Ledger
        The run's ledger, open.
    served_hash : str
    delta, confidence, guess_fraction
        As in :func:`~fedunlearn.evaluate.privacy.audit_one_run`.

    Returns
    -------
    CanaryOrgAudit or None
        None when the run has fewer than 4 canary organizations or the model cannot be rebuilt.
    """
    settings = run.settings
    if settings.dp.audit_canary_orgs < 4:
        return None
    changes = served_changes(ledger, served_hash)
    if changes is None:
        return None
    key = run_canary_key(run.path)
    plan = canary_plan(settings, key)
    scores = canary_cosines(changes, {n: direction_seed(key, n) for n in plan.names}, plan.shards)
    one_run = audit_one_run(np.array([plan.included[n] for n in plan.names]),
                            np.array([scores[n] for n in plan.names]), delta=delta, confidence=confidence,
                            guess_fraction=guess_fraction)
    history = _canary_history(run, plan.members)
    return CanaryOrgAudit(audit=one_run, names=plan.names, norm=canary_norm(settings), history=history,
                          accounted_epsilon=_accounted(history, delta))
