"""What a round does when organizations fail: the dropout policy and the update screen.

Policy (one round of one shard, ``run.retries`` = R, ``run.min-fraction`` = f):

1. every member gets its ``train`` message; replies are validated (``protocol.parse_reply``:
   an error reply, a missing adapter, NaN/Inf values) and screened (:func:`update_norm`: the L2
   norm of the update's delta from the sent adapter must not exceed ``train.max-update-norm``);
2. a member that did not reply in ``run.round-timeout`` or replied with an error is asked again,
   up to R times, with the same message (same seed: a late reply is the same update);
   a *rejected* update (non-finite, or over the norm bound) is never asked again;
3. the round commits with the members that replied when they are at least ``f`` of the members
   (``ceil(f * members)``, at least one); otherwise FederationError, nothing is committed, and
   the run resumes from the last committed round when started again.

Absent and rejected members are recorded: in the round's summary, in ``RUN_DIR/metrics.jsonl``
(``kind = "dropout"`` / ``"rejected"``) and in the ledger's metadata under
``round-absent/<checkpoint id>``. They stay members: the next round addresses them again.
With the default ``f = 1.0`` a round never commits without a member (exact replay).

A member that refuses the round because its DP budget is spent (a well-formed ``train`` reply
without an adapter, see :func:`fedunlearn.federation.protocol.budget_refusal_content`) is neither
absent nor rejected: it is listed in ``exhausted``, never asked again, and does not count
towards the quorum (the coordinator stops addressing it, see ``Coordinator.fit_round``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from flwr.serverapp import Grid

from fedunlearn.config import Settings
from fedunlearn.errors import FederationError
from fedunlearn.federation import protocol
from fedunlearn.federation.nodes import exchange_partial

__all__ = ["RoundReplies", "check_quorum", "collect_train_replies", "quorum", "update_norm"]


def update_norm(update: Mapping[str, torch.Tensor], sent: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of ``update - sent`` over every tensor (a key missing from ``sent`` counts as zero)."""
    total = 0.0
    for key, tensor in update.items():
        ref = sent.get(key)
        delta = tensor.double() - (ref.double() if ref is not None else 0.0)
        total += float(delta.pow(2).sum())
    return math.sqrt(total)


def quorum(members: int, min_fraction: float) -> int:
    """How many of ``members`` must reply for a round to commit (at least one)."""
    return max(1, math.ceil(min_fraction * members - 1e-9))


@dataclass
class RoundReplies:
    """The valid replies of a round, and who is missing and why."""

    replies: dict[str, protocol.Reply]
    absent: dict[str, str] = field(default_factory=dict)  # no reply or an error reply, after retries
    rejected: dict[str, str] = field(default_factory=dict)  # invalid or out-of-bound updates
    exhausted: dict[str, protocol.Reply] = field(default_factory=dict)  # refused: DP budget spent
    attempts: int = 1

    @property
    def missing(self) -> dict[str, str]:
        return {**self.absent, **self.rejected}


def _rejected(reason: str) -> bool:
    return "non-finite" in reason or "lacks a positive" in reason or "carries no 'arrays'" in reason


def collect_train_replies(grid: Grid, nodes: Mapping[str, int], contents: Mapping[str, object], *,
                          sent: Mapping[str, torch.Tensor], settings: Settings, group_id: str) -> RoundReplies:
    """Send the round's ``train`` messages, screen the replies and retry the absent members.

    Returns the accepted replies and who is missing and why; :func:`check_quorum` then decides
    whether the round may commit.
    """
    run, bound = settings.run, settings.train.max_update_norm
    result = RoundReplies(replies={})
    todo = dict(contents)
    for attempt in range(run.retries + 1):
        result.attempts = attempt + 1
        got, failed = exchange_partial(grid, nodes, todo, message_type=protocol.TRAIN, group_id=group_id,
                                       timeout=run.round_timeout, expect_state=True)
        for org, reply in got.items():
            if reply.budget_refusal is not None:  # refused before training: not an update, not a fault
                result.exhausted[org] = reply
                continue
            norm = update_norm(reply.state, sent)
            if bound > 0 and norm > bound:
                result.rejected[org] = (f"update norm {norm:.4g} exceeds train.max-update-norm = {bound:g}: rejected")
            else:
                result.replies[org] = reply
        for org, why in failed.items():
            if _rejected(why):
                result.rejected[org] = why
        todo = {org: todo[org] for org in failed if org not in result.rejected}
        result.absent = {org: failed[org] for org in todo}
        if not todo:
            break
    return result


def check_quorum(result: RoundReplies, members: int, settings: Settings, *, group_id: str) -> None:
    """Raise FederationError when fewer than ``quorum(members, run.min-fraction)`` updates were accepted."""
    run = settings.run
    need = quorum(members, run.min_fraction)
    if len(result.replies) < need:
        detail = "; ".join(f"{org}: {why}" for org, why in sorted(result.missing.items()))
        raise FederationError(
            f"train ({group_id}) failed for organizations {sorted(result.missing)}: {detail}. "
            f"{len(result.replies)} of {members} members gave an accepted update after "
            f"{result.attempts} attempt(s), run.min-fraction = {run.min_fraction:g} needs {need}; nothing was "
            "committed: restart the missing SuperNodes and run again (it resumes), or lower run.min-fraction"
        )
