"""Privacy accounting for DP-SGD (record level) and DP-FedAvg (client level).

Both mechanisms are, for accounting, the Poisson-subsampled Gaussian mechanism composed over
steps: at each step every unit (a record, or an organization) is included independently with
probability ``q``, the sum of the included contributions (each clipped to L2 norm ``C``) gets
Gaussian noise of standard deviation ``z * C``. A history is a list of ``(z, q, steps)``.

ε is computed with Opacus' PRV accountant (Gopi, Lee & Wutschitz, NeurIPS 2021), which agrees
with Google's dp-accounting PLD accountant to well under 1% (see tests/certify); Opacus' RDP
accountant (Mironov 2017) is reported alongside as a looser cross-check.

Assumptions the numbers rest on: the sample is drawn as stated and stays secret (amplification by
subsampling), contributions are clipped before noise is added, the noise is drawn from a source
the adversary cannot predict, and ``add/remove-one`` adjacency (one record, or one whole
organization, present or absent).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fedunlearn.errors import ConfigError

__all__ = [
    "AccountantReport",
    "Step",
    "account",
    "client_level_epsilon",
    "compress_history",
    "epsilon",
]

Step = tuple[float, float, int]
"""One run of identical mechanism steps: (noise multiplier z, sample rate q, number of steps)."""


def _check_history(history: Iterable[Step]) -> list[Step]:
    out: list[Step] = []
    for item in history:
        try:
            z, q, n = item
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"accountant history item {item!r} must be (noise, sample_rate, steps)") from exc
        z, q = float(z), float(q)
        if not (math.isfinite(z) and z >= 0):
            raise ConfigError(f"noise multiplier {z!r} must be a finite number >= 0")
        if not 0.0 < q <= 1.0:
            raise ConfigError(f"sample rate {q!r} must satisfy 0 < q <= 1")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"step count {n!r} must be an int >= 0")
        if n:
            out.append((z, q, n))
    return out


def compress_history(history: Iterable[Step]) -> list[Step]:
    """Merge consecutive runs with equal (z, q): ``[(1,.1,2),(1,.1,3)] -> [(1,.1,5)]``."""
    out: list[Step] = []
    for z, q, n in _check_history(history):
        if out and out[-1][:2] == (z, q):
            out[-1] = (z, q, out[-1][2] + n)
        else:
            out.append((z, q, n))
    return out


def _check_delta(delta: float) -> float:
    delta = float(delta)
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta = {delta!r} is invalid: expected 0 < delta < 1, e.g. 1e-5")
    return delta


def epsilon(history: Iterable[Step], delta: float, *, accountant: str = "prv") -> float:
    """ε at ``delta`` of a composed history of subsampled Gaussian steps.

    Parameters
    ----------
    history : iterable of (z, q, steps)
        The mechanism runs, in any order (composition is commutative).
    delta : float
        Target δ, 0 < δ < 1.
    accountant : {"prv", "rdp"}
        Opacus' PRV accountant (tight; the published number) or RDP (cross-check).

    Returns
    -------
    float
        ε; 0.0 for an empty history, ``inf`` when some step has no noise (z = 0).
    """
    steps = compress_history(history)
    delta = _check_delta(delta)
    if not steps:
        return 0.0
    if any(z == 0 for z, _, _ in steps):
        return math.inf
    return _epsilon(tuple(steps), delta, accountant)


@functools.lru_cache(maxsize=256)
def _epsilon(steps: tuple[Step, ...], delta: float, accountant: str) -> float:
    """The accountant's ε (memoized: a PRV run can take seconds, and budgets re-ask the same histories)."""
    if accountant == "prv":
        from opacus.accountants import PRVAccountant

        acc = PRVAccountant()
        acc.history = list(steps)
        eps_error = 0.01
        while True:  # PRV needs a finer grid for very small ε: refine rather than fail
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return float(acc.get_epsilon(delta=delta, eps_error=eps_error))
            except (ValueError, RuntimeError):
                if eps_error < 1e-4:
                    raise
                eps_error /= 10
    if accountant == "rdp":
        from opacus.accountants import RDPAccountant

        acc = RDPAccountant()
        acc.history = list(steps)
        return float(acc.get_epsilon(delta=delta))
    from fedunlearn.errors import UnknownNameError

    raise UnknownNameError("accountant", accountant, ["prv", "rdp"])


def client_level_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """ε of DP-FedAvg for one organization after ``rounds`` rounds it was eligible in.

    Parameters
    ----------
    noise_multiplier : float
        z: the noise std on the sum of clipped updates is ``z * clip``.
    sample_rate : float
        q: each eligible organization takes part in a round independently with probability q.
    rounds : int
        Rounds in which the organization was eligible (sampled or not).
    delta : float
        Target δ.

    Returns
    -------
    float
        ε by Opacus' PRV accountant (add/remove-one-organization adjacency).
    """
    return epsilon([(noise_multiplier, sample_rate, rounds)], delta, accountant="prv")


@dataclass(frozen=True)
class AccountantReport:
    """ε of one unit (organization or record) over its history, by two accountants.

    Attributes
    ----------
    epsilon : float
        PRV ε (the number to publish).
    epsilon_rdp : float
        RDP ε (an upper bound, typically 10-15% looser).
    delta : float
    history : list of (z, q, steps)
    level : str
        ``"client"`` or ``"record"``.
    """

    epsilon: float
    epsilon_rdp: float
    delta: float
    history: list[Step] = field(default_factory=list)
    level: str = "client"


def account(history: Sequence[Step], delta: float, *, level: str = "client") -> AccountantReport:
    """PRV and RDP ε of ``history`` (see :func:`epsilon`)."""
    steps = compress_history(history)
    return AccountantReport(
        epsilon=epsilon(steps, delta, accountant="prv"),
        epsilon_rdp=epsilon(steps, delta, accountant="rdp"),
        delta=float(delta),
        history=steps,
        level=level,
    )
