"""Per-organization privacy accounts read from the audit log, and the ε budget that stops training.

The audit log is the accountant's ledger: every round-commit event of a client-level DP round
lists (by keyed hash) the organizations that were *eligible*, sampled or not, with the mechanism
(z, q, C); every update trained with record-level DP-SGD carries its (z, q, steps). An outside
auditor can therefore recompute each organization's ε from the signed log alone.

Counting is conservative: every logged round counts, on every branch (a round replayed after a
crash, or retrained during an erasure, is a further release of a model and counts again).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fedunlearn.certify.accounting import AccountantReport, Step, account, epsilon
from fedunlearn.config import DpSettings

__all__ = ["BudgetCheck", "check_budget", "client_history", "over_budget", "privacy_accounts", "record_history"]


def client_history(events: Iterable[tuple[int, dict[str, Any]]], subject: str) -> list[Step]:
    """(z, q, 1) for each logged client-level DP round in which ``subject`` was eligible."""
    out: list[Step] = []
    for _, event in events:
        mech = event.get("dp")
        if event.get("type") == "round-commit" and mech and subject in event.get("eligible", ()):
            out.append((float(mech["z"]), float(mech["q"]), 1))
    return out


def record_history(events: Iterable[tuple[int, dict[str, Any]]], subject: str) -> list[Step]:
    """(z, q, steps) of each logged DP-SGD update of ``subject``."""
    out: list[Step] = []
    for _, event in events:
        if event.get("type") != "round-commit":
            continue
        for item in event.get("updates", ()):
            if item.get("org") == subject and item.get("dp"):
                mech = item["dp"]
                out.append((float(mech["z"]), float(mech["q"]), int(mech["steps"])))
    return out


def privacy_accounts(audit: Any, orgs: Iterable[str], dp: DpSettings) -> dict[str, dict[str, AccountantReport]]:
    """``{org: {"client": report, "record": report}}`` for the DP levels that have a history."""
    events = audit.events("round-commit")
    out: dict[str, dict[str, AccountantReport]] = {}
    for org in orgs:
        who = audit.subject(org)
        reports = {}
        for level, history in (("client", client_history(events, who)), ("record", record_history(events, who))):
            if history:
                reports[level] = account(history, dp.delta, level=level)
        out[org] = reports
    return out


@dataclass(frozen=True)
class BudgetCheck:
    """Whether one more round keeps an organization (or everyone) within ``dp.max-epsilon``.

    When not ``ok``: ``org`` is who would exceed it, ``level`` ("client" or "record") which
    account, ``epsilon`` the predicted ε after the round.
    """

    ok: bool
    reason: str = ""
    org: str = ""
    level: str = ""
    epsilon: float = 0.0


def _within(history: list[Step], delta: float, limit: float) -> float | None:
    """None if ε(history) <= limit, else ε. RDP (an upper bound, fast) first, PRV if needed."""
    if epsilon(history, delta, accountant="rdp") <= limit:
        return None
    eps = epsilon(history, delta, accountant="prv")
    return None if eps <= limit else eps


def over_budget(audit: Any, eligible: Iterable[str], dp: DpSettings) -> dict[str, BudgetCheck]:
    """The organizations among ``eligible`` whom one more round would push over the budget.

    Client level: the next round adds (z, q, 1) for each eligible organization. Record level:
    it adds the organization's last logged (z, q, steps). The server does not know an
    organization's record count before its first round, so that round is checked where it is
    known: the organization's DP-SGD refuses to train it when it alone would exceed the budget
    (:func:`fedunlearn.training.dp.check_round_budget`) and replies so; the coordinator then
    stops addressing it, as it does for the organizations returned here.
    """
    if dp.max_epsilon <= 0 or not dp.enabled:
        return {}
    events = audit.events("round-commit")
    out: dict[str, BudgetCheck] = {}
    for org in eligible:
        who = audit.subject(org)
        plans: list[tuple[str, list[Step]]] = []
        if dp.client_level:
            plans.append(("client", client_history(events, who)
                          + [(dp.client_noise_multiplier, dp.client_sample_rate, 1)]))
        if dp.record_level:
            past = record_history(events, who)
            if past:
                plans.append(("record", past + [past[-1]]))
        for level, history in plans:
            eps = _within(history, dp.delta, dp.max_epsilon)
            if eps is not None:
                out[org] = BudgetCheck(
                    ok=False, org=org, level=level, epsilon=eps,
                    reason=(f"one more round would give organization {org!r} a {level}-level ε of "
                            f"{eps:.3f} at δ={dp.delta:g}, over dp.max-epsilon = {dp.max_epsilon:g}; "
                            "it trains no further round (raise the budget or the noise to train longer)"),
                )
                break
    return out


def check_budget(audit: Any, eligible: Iterable[str], dp: DpSettings) -> BudgetCheck:
    """Would a further round with ``eligible`` organizations push anyone's ε over the budget?

    Returns the first organization that would exceed it (see :func:`over_budget`), or ``ok``.
    """
    over = over_budget(audit, eligible, dp)
    return next(iter(over.values())) if over else BudgetCheck(ok=True)
