"""Shared engine of the approximate methods (``influence``, ``subtract``, ``negate``, record-level).

An approximate erasure does not rebuild the lineage: it computes a new adapter for each affected
shard from the current head and commits it as one more checkpoint on top of it (round ``head + 1``).
The old chain stays its ancestry, so :meth:`~fedunlearn.ledger.Ledger.dependents` still names the
subject: the lineage never claims an absence that an approximate method cannot prove. The subject is
then marked erased (its stored updates crypto-shredded) and the served model re-exported.

Like the exact methods (:mod:`fedunlearn.unlearning.replay`) it works in three phases, so that an
erasure killed at any point leaves a consistent run that the same request, made again, completes:

1. **compute** — the new adapters are computed (queries, calibration fits) and stored as blobs;
   nothing is committed, the previous model stays served; a kill here loses only the work.
2. **journal** — the new checkpoints (parent, round, hash, contributions), cost and report are
   written to the ledger metadata ``erasure.pending`` in one transaction.
3. **switch** — each new checkpoint is committed (skipped when already there), the served model is
   re-exported, the subjects are marked erased (keys shredded) or the forgotten record ids are
   stored, abandoned aggregates are purged and the journal is cleared; every step is idempotent,
   so a second call completes it from the journal without Flower.

Method parameters travel in :attr:`EraseRequest.options <fedunlearn.unlearning.EraseRequest>` and
are validated into :class:`ApproxOptions`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedunlearn.errors import ConfigError, RunStateError
from fedunlearn.federation import protocol
from fedunlearn.federation.nodes import exchange
from fedunlearn.federation.serving import export_served
from fedunlearn import crashpoints
from fedunlearn.ledger import Contribution, Ledger
from fedunlearn.runs import RunFolder, utc_now
from fedunlearn.unlearning.base import Cost, EraseRequest, Federation, Unlearner, UnlearnResult, check_request
from fedunlearn.unlearning.cost import estimate_full_retrain, finished_cost
from fedunlearn.unlearning.replay import JOURNAL_KEY, pending_erasure

__all__ = ["ApproxOptions", "ApproxOutcome", "ApproximateUnlearner", "Queries", "add", "nbytes", "scale", "shard_weights", "sub"]

State = dict[str, torch.Tensor]


#: ``calibration-rounds=auto`` calibrates at least this many rounds (the K tuned on 5-round runs).
AUTO_MIN_CALIBRATIONS = 3


@dataclass(frozen=True)
class ApproxOptions:
    """Parameters of the approximate methods (``EraseRequest.options`` keys, ``-`` or ``_`` alike).

    Attributes
    ----------
    solver, curvature, damping, iterations, lissa_scale, tolerance, step_scale
        ``influence``: ``"local"`` (GIANT: each remaining organization solves the system with its own
        curvature in one ``query.solve`` round and the server averages), ``"cg"`` or ``"lissa"`` (one
        federated round of ``query.hvp`` per product); the local curvature (``"fisher"`` or
        ``"hessian"``; federated solvers always use the Hessian); λ of ``(H + λI) x = g``; products
        (CG iterations) at most; LiSSA's scale ``s``; relative residual to stop at; the factor ``s``
        of the applied step ``θ + s x``.
    gradient
        ``influence``: where the subject's gradient comes from: ``"subject"`` (it answers
        ``query.grad``), ``"stored"`` (reconstructed from its last stored update) or ``"auto"``.
    noise_epsilon, noise_delta
        ``influence``: Gaussian noise on the result for this (ε, δ) (:func:`~fedunlearn.certify.removal_noise`);
        ``noise_epsilon = 0`` adds none.
    calibration_rounds, calibration_interval, calibration_epochs, space
        ``subtract``: K replayed rounds calibrated by the remaining organizations: ``"auto"`` (one
        every ``calibration_interval`` replayed rounds, FedEraser's Δt, and at least 3, the value
        tuned on short runs: K = min(R, max(3, ⌈R/Δt⌉)), so calibration keeps up with longer
        training) or a number (0 = pure subtraction); the local
        epochs of each calibration fit (FedEraser uses half the original), and where the history is
        replayed: ``"deltaw"`` (ΔW = s·B A, re-factorized by truncated SVD)
        or ``"factors"`` (LoRA-factor space, the first version, kept for comparison).
    negate_scale
        ``negate``: α in ``θ − α τ_subject``.
    forget_rounds, forget_epochs, forget_lr, npo_beta, retain_weight
        Record-level methods: federated rounds of local forgetting, passes over the forget set per
        round, AdamW step (0 = ``train.lr``), NPO's β, γ of the retain term.
    """

    solver: str = "local"
    curvature: str = "fisher"
    damping: float = 0.3
    iterations: int = 10
    lissa_scale: float = 10.0
    tolerance: float = 1e-3
    step_scale: float = 1.0
    gradient: str = "auto"
    noise_epsilon: float = 0.0
    noise_delta: float = 1e-5
    calibration_rounds: str = "auto"
    calibration_interval: int = 2
    calibration_epochs: int = 1
    space: str = "deltaw"
    negate_scale: float = 1.0
    forget_rounds: int = 1
    forget_epochs: int = 10
    forget_lr: float = 0.0
    npo_beta: float = 0.1
    retain_weight: float = 1.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (int, float)) and (not math.isfinite(v) or v < 0):
                raise ConfigError(f"option {f.name} = {v!r}: expected a finite number >= 0")
        if self.solver not in ("local", "cg", "lissa"):
            raise ConfigError(f"option solver = {self.solver!r}: expected 'local', 'cg' or 'lissa'")
        if self.space not in ("deltaw", "factors"):
            raise ConfigError(f"option space = {self.space!r}: expected 'deltaw' or 'factors'")
        if self.curvature not in ("fisher", "hessian"):
            raise ConfigError(f"option curvature = {self.curvature!r}: expected 'fisher' or 'hessian'")
        if self.gradient not in ("auto", "subject", "stored"):
            raise ConfigError(f"option gradient = {self.gradient!r}: expected 'auto', 'subject' or 'stored'")
        if (self.iterations < 1 or self.forget_rounds < 1 or self.forget_epochs < 1 or self.calibration_epochs < 1
                or self.calibration_interval < 1):
            raise ConfigError("options iterations, forget-rounds, forget-epochs, calibration-epochs and "
                              "calibration-interval must be >= 1")
        if self.calibration_rounds != "auto" and not str(self.calibration_rounds).isdigit():
            raise ConfigError(f"option calibration-rounds = {self.calibration_rounds!r}: expected 'auto' (one every "
                              "calibration-interval replayed rounds) or a whole number >= 0 (0 = no calibration)")

    def calibration_count(self, replayed: int) -> int:
        """K for a replay of ``replayed`` rounds: ``min(R, max(3, ⌈R / calibration_interval⌉))`` when ``"auto"``."""
        if self.calibration_rounds == "auto":
            return min(replayed, max(AUTO_MIN_CALIBRATIONS, -(-replayed // self.calibration_interval)))
        return int(self.calibration_rounds)

    @classmethod
    def from_request(cls, request: EraseRequest) -> ApproxOptions:
        """Validate ``request.options``; an unknown key lists the valid ones."""
        valid = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in request.options:
            name = key.replace("-", "_")
            if name not in valid:
                raise ConfigError(f"erase option {key!r} is unknown: expected one of "
                                  f"{sorted(n.replace('_', '-') for n in valid)}")
            kind = type(valid[name].default)
            try:
                values[name] = kind(value)
            except (TypeError, ValueError):
                raise ConfigError(f"erase option {key} = {value!r}: expected a {kind.__name__}") from None
        return cls(**values)


def add(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> State:
    return {k: a[k] + b[k] for k in a}


def sub(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> State:
    return {k: a[k] - b[k] for k in a}


def scale(c: float, a: Mapping[str, torch.Tensor]) -> State:
    return {k: c * v for k, v in a.items()}


def nbytes(state: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


@dataclass
class Queries:
    """Counts what federated queries cost, for :class:`Cost`; sends through ``exchange``."""

    federation: Federation
    nodes: dict[str, int]
    batch_size: int = 32
    client_steps: int = 0
    bytes_sent: int = 0
    rounds: int = 0
    organizations: set[str] = field(default_factory=set)

    def ask(self, message_type: str, contents: Mapping[str, Any], *, group_id: str, passes: int = 1,
            sizes: Mapping[str, int] | None = None) -> dict[str, protocol.Reply]:
        """One federated round; ``passes`` forward-backward passes per batch (an HVP is about 2)."""
        timeout = self.federation.run.settings.run.round_timeout
        replies = exchange(self.federation.grid, {o: self.nodes[o] for o in contents}, contents,
                           message_type=message_type, group_id=group_id, timeout=timeout, expect_state=True)
        self.rounds += 1
        for org, reply in replies.items():
            n = int(reply.metrics.get("num-examples", 0))
            self.client_steps += int(reply.metrics.get("steps", 0)) or passes * math.ceil(n / self.batch_size)
            self.bytes_sent += (sizes or {}).get(org, 0) + nbytes(reply.state or {})
            self.organizations.add(org)
        return replies


@dataclass
class ApproxOutcome:
    """What :meth:`ApproximateUnlearner.compute` produced: new shard states and how."""

    states: dict[int, State]
    contributions: dict[int, list[Contribution]] = field(default_factory=dict)
    client_steps: int = 0
    bytes_sent: int = 0
    rounds: int = 0
    organizations: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    guarantee: str | None = None


class ApproximateUnlearner(Unlearner):
    """Template: subclasses give :meth:`compute`; :meth:`unlearn` commits, exports and marks erased."""

    guarantee = "empirical"

    @abstractmethod
    def compute(self, request: EraseRequest, federation: Federation, options: ApproxOptions) -> ApproxOutcome:
        """New adapters for the affected shards (nothing committed yet)."""

    def validate(self, request: EraseRequest, ledger: Ledger) -> None:
        check_request(request, ledger)

    def affected_shards(self, ledger: Ledger, subjects: Sequence[str]) -> list[int]:
        return sorted({d.shard for s in subjects for d in ledger.dependents(s)})

    def needs_grid(self, request: EraseRequest, ledger: Ledger, run: RunFolder) -> bool:
        """No Flower to complete a journaled erasure of the same request; else :meth:`needs_flower`."""
        pending = pending_erasure(ledger)
        if pending is not None and _same_request(pending, request):
            return False
        return self.needs_flower(request, ledger, run)

    def needs_flower(self, request: EraseRequest, ledger: Ledger, run: RunFolder) -> bool:
        """Whether computing the new adapters needs Flower (queries or training); default yes."""
        return True

    def applied(self, request: EraseRequest, ledger: Ledger) -> None:
        """Ledger changes of the switch phase besides heads and statuses (idempotent); default none."""

    def unlearn(self, request: EraseRequest, federation: Federation) -> UnlearnResult:
        """Compute, journal, switch (see the module doc); a second call completes a killed erasure."""
        start = time.perf_counter()
        run, ledger = federation.run, federation.ledger
        pending = pending_erasure(ledger)
        if pending is not None and not _same_request(pending, request):
            raise RunStateError(
                f"run {str(run.path)!r} has an unfinished erasure of {pending['subjects']} by method "
                f"{pending['method']!r}; complete it first by requesting exactly that erasure again"
            )
        resumed = pending is not None
        if pending is None:
            pending = self._compute(request, federation, start)
            ledger.set_meta(JOURNAL_KEY, json.dumps(pending, sort_keys=True))  # one transaction
            crashpoints.reached("erasure.journaled")
        else:
            federation.reporter.message(f"completing the interrupted {self.name} erasure from its journal")
            if self.level == "organization":
                check_request(request, ledger, resuming=True)
        recomputed = {}
        for key, doc in sorted(pending["shards"].items()):  # switch: idempotent
            shard = int(key)
            head = ledger.head(shard)
            if head.id == doc["parent"]:
                contributions = [Contribution(**c) for c in doc["contributions"]]
                ledger.commit_round(shard=shard, round=doc["round"], aggregate_hash=doc["hash"],
                                    contributions=contributions, parent_id=doc["parent"])
            elif (head.parent_id, head.round, head.hash) != (doc["parent"], doc["round"], doc["hash"]):
                raise RunStateError(
                    f"shard {shard}'s head (checkpoint {head.id}) is neither the erasure's parent "
                    f"{doc['parent']} nor its new checkpoint: the ledger changed after the erasure was "
                    f"journaled. Restore the run folder from a backup, or clear the ledger meta key "
                    f"{JOURNAL_KEY!r} and request the erasure again"
                )
            recomputed[shard] = (doc["round"],)
        served = export_served(run, ledger)
        crashpoints.reached("erasure.switched")
        self.applied(request, ledger)
        if self.level == "organization":
            for subject in request.subjects:
                ledger.mark_erased(subject)
            crashpoints.reached("erasure.marked")
            # Only abandoned checkpoints are purged: this method's head chain keeps the subjects'
            # contributions by construction (see Ledger.purge_dependents), hence "empirical".
            ledger.purge_erased()
        ledger.set_meta(JOURNAL_KEY, "")
        cost = finished_cost(pending["cost"], start, resumed=resumed)
        full = Cost(**{**pending["full"], "organizations": tuple(pending["full"]["organizations"])})
        result = UnlearnResult(
            method=self.name, subjects=request.subjects, guarantee=pending["guarantee"],
            served_hash=served.hash, served_path=served.path, previous_served_hash=pending["previous_served"],
            heads={s: ledger.head(s).hash for s in range(run.settings.topology.shards)},
            recomputed=recomputed, organizations=cost.organizations, cost=cost, full_retrain_cost=full,
            notes=tuple(pending["notes"]),
        )
        record = {"time": utc_now(), "requested_by": request.requested_by, "options": dict(request.options),
                  "records": len(request.records), "details": pending["details"], **result.to_dict()}
        with open(run.path / "erasures.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        federation.reporter.message(f"{self.name}: served model {served.hash[:16]}… ({result.guarantee})")
        self.details = pending["details"]  # for callers that want residuals etc. (benchmarks, tests)
        return result

    def _compute(self, request: EraseRequest, federation: Federation, start: float) -> dict[str, Any]:
        """Phase 1: the new adapters, stored as blobs but not committed; return the journal."""
        run, ledger = federation.run, federation.ledger
        options = ApproxOptions.from_request(request)
        self.validate(request, ledger)
        self.check(run)
        previous = ledger.served()
        full = estimate_full_retrain(ledger, run, request.subjects if self.level == "organization" else ())
        outcome = self.compute(request, federation, options)
        shards = {}
        for shard, state in sorted(outcome.states.items()):
            head = ledger.head(shard)
            shards[str(shard)] = {"parent": head.id, "round": head.round + 1, "hash": ledger.put_state(state),
                                  "contributions": [dataclasses.asdict(c) for c in outcome.contributions.get(shard, [])]}
        cost = Cost(client_steps=outcome.client_steps, wall_seconds=time.perf_counter() - start,
                    rounds=outcome.rounds, aggregations=len(outcome.states), bytes_sent=outcome.bytes_sent,
                    organizations=tuple(sorted(outcome.organizations)),
                    basis=f"measured during this erasure; {self.cost_basis}")
        return {"kind": "approximate", "method": self.name, "subjects": list(request.subjects),
                "records": list(request.records), "shards": shards, "cost": cost.to_dict(), "full": full.to_dict(),
                "notes": outcome.notes, "details": json.loads(json.dumps(outcome.details, default=str)),
                "guarantee": outcome.guarantee or self.guarantee,
                "previous_served": (previous or {}).get("served_hash")}

    cost_basis: str = "client-steps count local batches processed"


def _same_request(pending: Mapping[str, Any], request: EraseRequest) -> bool:
    return (pending["method"], pending["subjects"], pending.get("records", [])) == (
        request.method, list(request.subjects), list(request.records))


def shard_weights(ledger: Ledger, shard: int) -> dict[str, float]:
    """Each contributor's share of examples in the shard's last round that had contributions."""
    for ckpt in reversed(ledger.chain(shard)):
        contribs = ledger.contributions(ckpt.id)
        if contribs:
            total = sum(c.num_examples for c in contribs)
            return {c.org: c.num_examples / total for c in contribs}
    return {}
