"""Server-side round orchestration: FedAvg per shard, every step committed to the ledger.

One round of one shard:

1. members = organizations of the shard that have joined by this round and are not erased;
2. each gets a ``train`` message with the shard's current adapter and a seed derived from
   (run seed, shard, round, organization), so a replay of the same round is bit-identical;
3. each reply's adapter is stored encrypted under its organization's key, the FedAvg aggregate
   (weights = num-examples) is stored, and the round is committed in one ledger transaction.

A shard with no members in a round commits a carry-over checkpoint (same adapter, no
contributions), so every shard's checkpoint chain has one entry per round. Training resumes from
each shard's head, so a run stopped mid-round loses only that round.

DP budget (``dp.max-epsilon``): an organization whose next round would exceed it stops training,
either predicted here from the audit log before the round, or refused by the organization itself
(a "budget exhausted" reply, no update). It is recorded (ledger meta ``budget-exhausted/<org>``,
the audit log, ``metrics.jsonl``) and is no member of later rounds (:meth:`Ledger.members`); when
no organization can train any more, training stops and the run exports the last committed model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from flwr.serverapp import Grid

from fedunlearn import interrupt
from fedunlearn.certify.budget import over_budget, record_history
from fedunlearn.certify.runaudit import RunAudit, dp_secret
from fedunlearn.errors import FederationError, FedUnlearnError
from fedunlearn.federation.inbox import REPLY_KEY, queue
from fedunlearn.config import is_canary
from fedunlearn.federation import protocol
from fedunlearn.training.canaries import canary_plan, canary_train_config, run_canary_key
from fedunlearn.federation.dpfedavg import dp_fedavg, keyed_generator, poisson_sample
from fedunlearn.federation.faults import check_quorum, collect_train_replies
from fedunlearn.federation.nodes import discover, exchange_partial
from fedunlearn.federation.serving import export_served
from fedunlearn.federation.topology import Topology, derive_seed
from fedunlearn.ledger import Contribution, Ledger
from fedunlearn.ledger.store import BUDGET_STOP_PREFIX, ROUND_SECONDS_PREFIX
from fedunlearn.ledger.tensors import state_sha256
from fedunlearn.models import average_states, get_lora_state, load_base_model, pick_device, wrap_lora
from fedunlearn.progress import LogReporter, Reporter
from fedunlearn.runs import RunFolder, utc_now
from fedunlearn.training.client import lora_spec

__all__ = ["Coordinator", "FORGOTTEN_PREFIX", "FittedRound", "RoundSummary", "forgotten_records", "initial_state"]

FORGOTTEN_PREFIX = "forgotten-records/"
"""Ledger metadata key prefix: ``forgotten-records/<org>`` holds the JSON list of record ids it forgot."""


def forgotten_records(ledger: Ledger, org: str) -> list[str]:
    """Record ids ``org`` forgot (record-level erasure); every later round sends them as ``exclude-records``."""
    return sorted(json.loads(ledger.meta.get(FORGOTTEN_PREFIX + org, "") or "[]"))


def initial_state(run: RunFolder, shard: int) -> dict[str, torch.Tensor]:
    """The shard's round-0 adapter: peft's LoRA init (B = 0) seeded by (run seed, shard)."""
    base = load_base_model(run.base_model, device=pick_device("cpu"))
    model = wrap_lora(base, lora_spec(run.settings), seed=derive_seed(run.settings.run.seed, "init", shard))
    return get_lora_state(model)


@dataclass
class RoundSummary:
    """What one round of one shard did."""

    shard: int
    round: int
    members: list[str]
    train_loss: dict[str, float] = field(default_factory=dict)
    train_loss_first: dict[str, float] = field(default_factory=dict)
    eval_loss: dict[str, float] = field(default_factory=dict)
    client_steps: int = 0
    seconds: float = 0.0
    client_seconds: float = 0.0
    bytes_sent: int = 0
    absent: dict[str, str] = field(default_factory=dict)  # members without a reply (see federation.faults)
    rejected: dict[str, str] = field(default_factory=dict)  # members whose update was rejected
    exhausted: dict[str, str] = field(default_factory=dict)  # members that refused: DP budget spent


@dataclass
class FittedRound:
    """A trained but uncommitted round: the stored aggregate and what went into it."""

    aggregate: dict[str, torch.Tensor]
    aggregate_hash: str
    contributions: list[Contribution]
    summary: RoundSummary


def _nbytes(state: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class Coordinator:
    """Drives federated training of a run over a Flower grid."""

    def __init__(self, grid: Grid, run: RunFolder, ledger: Ledger, *, reporter: Reporter | None = None,
                 audit: RunAudit | None = None) -> None:
        self.audit = audit  # the run's signed audit log (fedunlearn.certify.RunAudit); None = none
        self.grid = grid
        self.run = run
        self.ledger = ledger
        self.settings = run.settings
        self.topology = Topology.from_settings(run.settings)
        self.reporter = reporter or LogReporter()
        self.nodes: dict[str, int] = {}
        self.summaries: list[RoundSummary] = []

    # -- set-up -----------------------------------------------------------------------------
    def enrol(self) -> None:
        """Register every organization (shard, join round) in the ledger; idempotent on resume.

        Erased organizations are skipped: they stay erased and are never addressed again.
        """
        self.topology.record_sampling(self.ledger)  # topology.sample-fraction: who trains each round
        erased = {o.name for o in self.ledger.organizations() if o.status == "erased"}
        for org in self.settings.organizations:
            if org.name in erased:
                continue
            self.ledger.register_organization(
                org.name, shard=self.topology.shard_of(org.name), join_round=org.join_round
            )
        if self.settings.dp.audit_canary_orgs:  # the included canaries of the client-level audit; the others never
            plan = canary_plan(self.settings, run_canary_key(self.run.path))
            for name in plan.members:
                self.ledger.register_organization(name, shard=plan.shards[name], join_round=1)
        if self.audit is not None:  # keyed hashes + RUN_DIR/org-keys/<org>.pub when present
            self.audit.enrol_from_folder((o.name, o.shard, o.join_round) for o in self.ledger.organizations()
                                         if o.status == "active")

    def connect(self, organizations: Sequence[str] | None = None) -> dict[str, int]:
        """Map organizations' names (default: every active one) to node ids; check their data.

        The first time an organization connects, the fingerprint of its records is kept in the
        ledger; later connections (a resumed run, an erasure that retrains) must present the same
        fingerprint, else FederationError: training on other data would silently break the
        run's lineage and every exactness claim.
        """
        wanted = list(organizations) if organizations is not None else [
            o.name for o in self.ledger.organizations() if o.status == "active"]
        self.reporter.message(f"waiting for {len(wanted)} organizations to connect: {', '.join(wanted)}")
        prints: dict[str, str] = {}
        self.nodes = discover(self.grid, wanted, timeout=self.settings.run.discovery_timeout, fingerprints=prints)
        meta = self.ledger.meta
        logged = {}
        if self.audit is not None:
            from fedunlearn.certify.binding import logged_fingerprints

            logged = logged_fingerprints(e for _, e in self.audit.events("data-fingerprint"))
        changed = []
        for org, fp in sorted(prints.items()):
            if not fp:
                continue
            key = f"data-sha256/{org}"
            first = meta.get(key) or (logged.get(self.audit.subject(org)) if self.audit is not None else None)
            if first is None:  # the first connection: logged (signed) first, then kept in the ledger
                if self.audit is not None:
                    self.audit.append({"type": "data-fingerprint", "org": self.audit.subject(org), "sha256": fp})
                self.ledger.set_meta(key, fp)
            elif first != fp:
                changed.append(f"{org} (trained on {first[:12]}…, now {fp[:12]}…)")
            elif key not in meta:  # logged by a process killed before it stored it
                self.ledger.set_meta(key, fp)
        if changed:
            raise FederationError(
                f"organizations' data differ from the data they trained on: {'; '.join(changed)}. "
                "Point their nodes at the original data (node config data=..., or the run's data.dir); "
                "a run whose data lives on the organizations' own nodes must be resumed or erased on "
                "that deployment (fedunlearn deploy run ... -c run.workflow=\"erase\")"
            )
        return self.nodes

    def initialize(self) -> None:
        """Commit each shard's round-0 adapter unless it exists already."""
        for shard in range(self.topology.shards):
            if self.ledger.head(shard) is None:
                state = initial_state(self.run, shard)
                digest = self.ledger.put_state(state)
                self.ledger.commit_round(shard=shard, round=0, aggregate_hash=digest, contributions=[], parent_id=None)
        if self.audit is not None:
            self.audit.sync(self.ledger, self.settings.dp)

    # -- training ---------------------------------------------------------------------------
    def train_round(self, shard: int, rnd: int, *, members: list[str] | None = None) -> RoundSummary:
        """Run round ``rnd`` of ``shard`` with ``members`` (default: the ledger's members)."""
        start = time.perf_counter()
        head = self.ledger.head(shard)
        members = self.ledger.members(shard, rnd) if members is None else members
        summary = RoundSummary(shard=shard, round=rnd, members=list(members))
        if not members:
            self.ledger.commit_round(shard=shard, round=rnd, aggregate_hash=head.hash, contributions=[], parent_id=head.id)
            return summary
        fitted = self.fit_round(shard, rnd, self.ledger.get_state(head.hash), list(members))
        ckpt = self.ledger.commit_round(shard=shard, round=rnd, aggregate_hash=fitted.aggregate_hash,
                                        contributions=fitted.contributions, parent_id=head.id)
        summary = fitted.summary
        # the round's own wall time (fit, transport, aggregation, storage): the basis of every
        # full-retraining estimate (unlearning.cost.estimate_full_retrain)
        self.ledger.set_meta(ROUND_SECONDS_PREFIX + str(ckpt.id), repr(round(summary.seconds, 6)))
        if summary.absent or summary.rejected:  # the round committed without them: say so in the ledger
            self.ledger.set_meta(f"round-absent/{ckpt.id}", json.dumps(
                {"shard": shard, "round": rnd, "absent": summary.absent, "rejected": summary.rejected}, sort_keys=True))
        summary.seconds = time.perf_counter() - start
        return summary

    def fit_round(self, shard: int, rnd: int, state: Mapping[str, torch.Tensor], members: list[str],
                  *, extra_config: Mapping[str, Mapping[str, object]] | None = None) -> FittedRound:
        """Train round ``rnd`` of ``shard`` from ``state`` with ``members``, without committing it.

        ``extra_config[org]`` is merged into that organization's train instructions (e.g.
        ``exclude-records`` for a record-level SISA retrain).

        The members' updates (encrypted) and the aggregate are stored as blobs, which are harmless
        orphans until a commit references them. :meth:`train_round` commits the result at once;
        an erasure collects whole retrained chains first and switches heads only at the end.
        """
        start = time.perf_counter()
        eligible = len(members)
        dp_key = dp_secret(self.run.path) if self.settings.dp.client_level else None
        if self.settings.dp.client_level:  # DP-FedAvg: a secret Poisson sample, keyed so a retrain replays it
            members = poisson_sample(members, self.settings.dp.client_sample_rate, key=dp_key, shard=shard, rnd=rnd)
        summary = RoundSummary(shard=shard, round=rnd, members=list(members))
        t = self.settings.train
        contents = {}
        dp = self.settings.dp  # record-level budget: each organization checks its cumulative ε, so send the log's
        events = self.audit.events("round-commit") if dp.record_level and dp.max_epsilon > 0 and self.audit else None
        canary_key = b""
        for org in members:
            config = {"round": rnd, "shard": shard, "org": org,
                      "seed": derive_seed(self.settings.run.seed, "train", shard, rnd, org),
                      "epochs": t.local_epochs, "lr": t.lr, "batch-size": t.batch_size,
                      **dict((extra_config or {}).get(org, {}))}
            # records the organization forgot stay out of every later round (training and retraining)
            exclude = set(forgotten_records(self.ledger, org)) | {i for i in str(
                config.get(protocol.EXCLUDE_RECORDS, "")).split("\n") if i}
            if exclude:
                config[protocol.EXCLUDE_RECORDS] = "\n".join(sorted(exclude))
            if events is not None:
                config.update(protocol.dp_history_config(record_history(events, self.audit.subject(org))))
            if is_canary(org):  # its keyed update direction and norm (federation.canaries); the key read once
                canary_key = canary_key or run_canary_key(self.run.path)
                config.update(canary_train_config(canary_key, org, self.settings))
            contents[org] = protocol.make_content(state=state, config=config)
        collected = collect_train_replies(self.grid, {o: self.nodes[o] for o in members}, contents, sent=state,
                                          settings=self.settings, group_id=f"shard-{shard}/round-{rnd}")
        replies, summary.absent, summary.rejected = collected.replies, collected.absent, collected.rejected
        for kind, orgs in (("dropout", summary.absent), ("rejected", summary.rejected)):
            for org, why in orgs.items():
                self.reporter.message(f"round {rnd} shard {shard}: {org} {kind}: {why}")
                self.run.append_metrics({"time": utc_now(), "round": rnd, "shard": shard, "org": org, "kind": kind,
                                         "reason": why, "attempts": collected.attempts})
        for org, reply in collected.exhausted.items():  # refused before training: out from the next round
            summary.exhausted[org] = str(reply.budget_refusal)
            self._budget_spent(org, shard=shard, rnd=rnd, from_round=rnd + 1, by="organization", level="record",
                               epsilon=reply.metrics.get("dp-epsilon-predicted", float("inf")),
                               reason=str(reply.budget_refusal))
        trainable = len(members) - len(collected.exhausted)
        if trainable:  # an empty DP-FedAvg sample is a valid round: the aggregate is the noise alone
            check_quorum(collected, trainable, self.settings, group_id=f"shard-{shard}/round-{rnd}")
        states, weights, contributions = [], [], []
        parent = state_sha256(state)  # each update's key is bound to the aggregate it was trained from
        for org in (m for m in members if m in replies):  # fixed order: aggregation is deterministic
            reply = replies[org]
            n = int(reply.metrics["num-examples"])
            digest = self.ledger.put_state(reply.state, org=org, parent=parent)
            contributions.append(Contribution(org=org, update_hash=digest, weight=float(n), num_examples=n,
                                              metrics=reply.metrics))
            states.append(reply.state)
            weights.append(float(n))
            summary.train_loss[org] = reply.metrics.get("train-loss", float("nan"))
            summary.train_loss_first[org] = reply.metrics.get("train-loss-first", float("nan"))
            summary.client_steps += int(reply.metrics.get("steps", 0))
            summary.client_seconds = max(summary.client_seconds, reply.metrics.get("seconds", 0.0))
            summary.bytes_sent += 2 * _nbytes(reply.state)
        total = sum(weights)
        contributions = [Contribution(org=c.org, update_hash=c.update_hash, weight=c.weight / total,
                                      num_examples=c.num_examples, metrics=c.metrics) for c in contributions]
        if self.settings.dp.client_level:  # clipped deltas, noise z*C, fixed denominator q*|eligible|
            dp_round = dp_fedavg(state, states, eligible=eligible, dp=self.settings.dp,
                                 rng=keyed_generator(dp_key, shard=shard, rnd=rnd))
            aggregate = dp_round.state
            contributions = [replace(c, weight=1.0 / (dp_round.sample_rate * eligible)) for c in contributions]
        elif states:
            aggregate = average_states(states, weights)
        else:  # every member refused over its DP budget: a carry-over (same adapter, no contributions)
            aggregate = {k: v.clone() for k, v in state.items()}
        digest = self.ledger.put_state(aggregate)
        summary.seconds = time.perf_counter() - start
        return FittedRound(aggregate=aggregate, aggregate_hash=digest, contributions=contributions, summary=summary)

    def evaluate(self, rnd: int) -> dict[str, float]:
        """Each active organization evaluates its shard's current adapter on its own holdout."""
        active = [o for o in self.ledger.organizations()  # canary organizations have no holdout
                  if o.status == "active" and o.join_round <= rnd and not is_canary(o.name)]
        if self.topology.sample_fraction < 1.0:  # sampled rounds are evaluated by the round's sample only
            sampled = {m for s in range(self.topology.shards) for m in self.ledger.members(s, rnd)}
            active = [o for o in active if o.name in sampled]
        heads = {s: self.ledger.get_state(self.ledger.head(s).hash) for s in {o.shard for o in active}}
        contents = {o.name: protocol.make_content(state=heads[o.shard], config={"round": rnd, "shard": o.shard})
                    for o in active}
        replies, failed = exchange_partial(self.grid, {o.name: self.nodes[o.name] for o in active}, contents,
                                           message_type=protocol.EVALUATE, group_id=f"eval/round-{rnd}",
                                           timeout=self.settings.run.round_timeout, expect_state=False)
        for org, why in failed.items():  # evaluation is advisory: a missing one is logged, not fatal
            self.reporter.message(f"round {rnd}: no evaluation from {org}: {why}")
            self.run.append_metrics({"time": utc_now(), "round": rnd, "org": org, "kind": "evaluate-missing",
                                     "reason": why})
        for org, r in replies.items():  # an organization's own erasure request, carried by its reply
            if r.config.get(REPLY_KEY):
                try:
                    queue(self.run.path, str(r.config[REPLY_KEY]), via=f"node of {org}")
                    self.reporter.message(f"round {rnd}: {org}'s node handed over an erasure request (queued)")
                except FedUnlearnError as exc:  # unreadable or a duplicate: said, and the round goes on
                    self.reporter.message(f"round {rnd}: the erasure request from {org}'s node was not queued: {exc}")
        losses = {org: r.metrics["eval-loss"] for org, r in replies.items()}
        for org, r in replies.items():
            self.run.append_metrics({"time": utc_now(), "round": rnd, "org": org, "kind": "evaluate",
                                     **{k: v for k, v in r.metrics.items()}})
        return losses

    def train(self, *, until: int | None = None,
              between_rounds: Callable[[int], None] | None = None) -> list[RoundSummary]:
        """Train every shard up to round ``until`` (default: train.rounds), resuming from the heads.

        ``between_rounds(r)`` runs before round ``r``, once at the start, before anything is
        trained, and once after the last round (``r = until + 1``): where live erasure requests are
        applied (:mod:`fedunlearn.unlearning.live`).
        """
        until = until or self.settings.train.rounds
        self._evaluate_last_if_missing()
        first = min(self.ledger.head(s).round for s in range(self.topology.shards)) + 1
        if between_rounds is not None:  # a restart completes what is pending before training goes on
            between_rounds(first)
        todo = [(s, r) for r in range(1, until + 1) for s in range(self.topology.shards)
                if self.ledger.head(s).round < r]
        if not todo:
            self.reporter.message("every shard is already trained to the last round; nothing to do")
            return []
        done_before = self.topology.shards * until - len(todo)
        with self.reporter.task("federated training", total=len(todo) + done_before) as advance:
            advance(done_before)
            for r in sorted({r for _, r in todo}):
                if between_rounds is not None and r != first:
                    between_rounds(r)
                self._stop_over_budget(r)
                if not self._anyone_can_train(r):
                    self._report_budget_stop(r)
                    break
                round_summaries = []
                for s in sorted(s for s, rr in todo if rr == r):
                    summary = self.train_round(s, r)
                    if self.audit is not None:  # round-commit event + signed checkpoint
                        self.audit.sync(self.ledger, self.settings.dp)
                    round_summaries.append(summary)
                    self.summaries.append(summary)
                    mean = (sum(summary.train_loss.values()) / len(summary.train_loss)) if summary.train_loss else float("nan")
                    advance(1, note=f"round {r} shard {s}: {len(summary.members)} orgs, train loss {mean:.3f}")
                losses = self.evaluate(r)
                for summary in round_summaries:
                    summary.eval_loss = {o: losses[o] for o in summary.members if o in losses}
                interrupt.check(f"after round {r} (committed)")
        if between_rounds is not None:  # requests that came with the last round's replies: before the run ends,
            between_rounds(until + 1)  # not at some later resume (they have a deadline)
        return self.summaries

    def _evaluate_last_if_missing(self) -> None:
        """A process killed after a round's commit but before its evaluation: evaluate it now.

        Only the last committed round can be: its adapters are still the heads (an earlier round's
        are not, and a kill leaves at most one round unevaluated).
        """
        last = min(self.ledger.head(s).round for s in range(self.topology.shards))
        if last < 1 or max(self.ledger.head(s).round for s in range(self.topology.shards)) != last:
            return  # no round yet, or a round interrupted between shards: it is retrained and evaluated
        evaluated = {row.get("round") for row in self.run.read_metrics() if row.get("kind") in ("evaluate",
                                                                                               "evaluate-missing")}
        if last not in evaluated:
            self.reporter.message(f"round {last} was committed but not evaluated (the process stopped): evaluating it")
            self.evaluate(last)

    def export(self):
        """Combine the shard heads into the served model and export it (see serving.export_served)."""
        served = export_served(self.run, self.ledger)
        if self.audit is not None:
            self.audit.log_export(served.hash, [served.path, *served.shard_paths.values()])
            self.audit.checkpoint()
        return served

    # -- DP budget ------------------------------------------------------------------------------
    def _budget_spent(self, org: str, *, shard: int, rnd: int, from_round: int, by: str, level: str,
                      epsilon: float, reason: str) -> None:
        """Record that ``org`` trains no round from ``from_round`` on (ledger, metrics, audit log); idempotent."""
        key = BUDGET_STOP_PREFIX + org
        if key in self.ledger.meta:  # already stopped: the first record stands
            return
        eps = min(float(epsilon), 1e300)
        self.ledger.set_meta(key, json.dumps({"from_round": from_round, "round": rnd, "shard": shard, "by": by,
                                              "level": level, "epsilon": eps, "reason": reason}, sort_keys=True))
        self.reporter.message(f"round {rnd} shard {shard}: {org} trains no further round, its DP budget is spent "
                              f"({by}): {reason}")
        self.run.append_metrics({"time": utc_now(), "round": rnd, "shard": shard, "org": org,
                                 "kind": "budget-exhausted", "by": by, "level": level, "epsilon": eps,
                                 "from-round": from_round, "reason": reason})
        if self.audit is not None:
            self.audit.log_budget_exhausted(org, shard=shard, round=rnd, from_round=from_round, by=by, level=level,
                                            epsilon=eps, max_epsilon=self.settings.dp.max_epsilon,
                                            delta=self.settings.dp.delta)

    def _stop_over_budget(self, rnd: int) -> None:
        """Stop the organizations whom round ``rnd`` would take over ``dp.max-epsilon`` (predicted from the log)."""
        dp = self.settings.dp
        if self.audit is None or dp.max_epsilon <= 0 or not dp.enabled:
            return
        shard_of = {o.name: o.shard for o in self.ledger.organizations()}
        eligible = [m for s in range(self.topology.shards) for m in self.ledger.members(s, rnd)]
        for org, check in over_budget(self.audit, eligible, dp).items():
            self._budget_spent(org, shard=shard_of[org], rnd=rnd, from_round=rnd, by="coordinator",
                               level=check.level, epsilon=check.epsilon, reason=check.reason)

    def _spent(self) -> dict[str, dict]:
        """Organizations whose DP budget is spent -> their record (see :meth:`_budget_spent`)."""
        return {k[len(BUDGET_STOP_PREFIX):]: json.loads(v) for k, v in self.ledger.meta.items()
                if k.startswith(BUDGET_STOP_PREFIX)}

    def _anyone_can_train(self, rnd: int) -> bool:
        """Whether some active organization's DP budget is not spent by round ``rnd``."""
        spent = self._spent()
        return any(not (o.name in spent and spent[o.name]["from_round"] <= rnd)  # canaries alone train nothing
                   for o in self.ledger.organizations() if o.status == "active" and not is_canary(o.name))

    def _trained_rounds(self) -> list[int]:
        return [ck.round for s in range(self.topology.shards) for ck in self.ledger.chain(s)
                if ck.round and self.ledger.contributions(ck.id)]

    def trained(self) -> bool:
        """Whether any committed round has a contribution (else there is no model to export)."""
        return bool(self._trained_rounds())

    def _report_budget_stop(self, rnd: int) -> None:
        """Say why training stopped before round ``rnd`` and which model the run exports."""
        trained = self._trained_rounds()
        budget = f"dp.max-epsilon = {self.settings.dp.max_epsilon:g}"
        if trained:
            self.reporter.message(f"training stops before round {rnd}: every organization's DP budget ({budget}) "
                                  f"is spent; the run exports the last committed model (trained up to round "
                                  f"{max(trained)})")
        else:
            self.reporter.message(f"no round was trained: every organization refused its first round, which alone "
                                  f"would exceed {budget}; there is no model to export. Raise dp.max-epsilon or "
                                  "dp.noise-multiplier, or train fewer local epochs, in a new run")
