"""Empirical lower bounds on ε from membership guesses, and a check of certified ε against them.

A certificate that claims (ε, δ)-DP (or (ε, δ)-unlearning) for an organization implies that no
membership test can beat a trade-off set by ε and δ. Observing a test that does beats it —
with statistical confidence — *refutes* the claim. Two estimators:

* **Clopper-Pearson** (Jagielski, Ullman, Oprea 2020, "Auditing Differentially Private Machine
  Learning: How Private is Private SGD?"). For any (ε, δ)-DP mechanism and any
  test, ``FPR + e^ε·FNR >= 1 − δ`` and ``FNR + e^ε·FPR >= 1 − δ``. With one-sided Clopper-Pearson
  upper bounds ``FPR_ub``, ``FNR_ub`` on the observed rates,
  ``ε_lb = max(log((1 − δ − FNR_ub)/FPR_ub), log((1 − δ − FPR_ub)/FNR_ub))``.
  Each bound is taken at significance ``(1 − confidence)/2`` so that, by the union bound, the
  whole statement holds with probability ``confidence``. The threshold must not be tuned on the
  counted data: :func:`epsilon_lower_bound_from_scores` chooses it on one half and counts on the
  other.
* **One run** (Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1) Training Run",
  its main theorem for δ = 0 and the paper's p-value computation for δ > 0). ``m``
  canaries are each included independently with probability ½ in a single training run; the
  auditor guesses the inclusion of ``r`` of them and gets ``v`` right. Under (ε, δ)-DP,
  ``P[V >= v] <= P[Binomial(r, e^ε/(1+e^ε)) >= v] + 2mδ·α`` with
  ``α = max_{1<=i<=v} P[v − i <= Binomial(r, e^ε/(1+e^ε)) < v] / i``; ``ε_lb`` is the largest ε
  this p-value rejects at level ``1 − confidence``.

Both bounds assume the audited membership (organization or canary) is the unit the certificate
protects, and that the test was fixed before looking at the data it is scored on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from scipy.stats import beta as beta_dist
from scipy.stats import binom

from fedunlearn.errors import ConfigError
from fedunlearn.evaluate._common import as_scores, check_fraction

__all__ = [
    "CertificateCheck",
    "ClopperPearsonBound",
    "OneRunBound",
    "check_certificate",
    "clopper_pearson_upper",
    "epsilon_lower_bound",
    "epsilon_lower_bound_from_scores",
    "one_run_lower_bound",
    "one_run_lower_bound_from_scores",
    "one_run_p_value",
]


@dataclass(frozen=True)
class ClopperPearsonBound:
    """ε lower bound from one threshold test's false positives and negatives (Jagielski et al. 2020).

    Attributes
    ----------
    epsilon : float
        The lower bound, >= 0 (0 when the test beats nothing).
    delta, confidence : float
    false_positives, negatives, false_negatives, positives : int
        The counts it rests on.
    fpr_upper, fnr_upper : float
        Clopper-Pearson upper bounds, each at significance ``(1 − confidence)/2``.
    threshold : float or None
        The score threshold, when the bound came from scores.
    """

    epsilon: float
    delta: float
    confidence: float
    false_positives: int
    negatives: int
    false_negatives: int
    positives: int
    fpr_upper: float
    fnr_upper: float
    threshold: float | None = None


@dataclass(frozen=True)
class OneRunBound:
    """ε lower bound from one training run with ``m`` randomly included canaries (Steinke et al. 2023).

    Attributes
    ----------
    epsilon : float
        The lower bound, >= 0.
    delta, confidence : float
    canaries : int
        ``m``, each included independently with probability ½.
    guesses : int
        ``r``, canaries the auditor guessed about (the others abstained).
    correct : int
        ``v``, correct guesses.
    """

    epsilon: float
    delta: float
    confidence: float
    canaries: int
    guesses: int
    correct: int


@dataclass(frozen=True)
class CertificateCheck:
    """Whether a certified ε survives the measured lower bound.

    Attributes
    ----------
    epsilon_certified : float
    epsilon_lower_bound : float
    consistent : bool
        False when ``epsilon_certified < epsilon_lower_bound``: the certificate is refuted.
    message : str
        One sentence for the report.
    """

    epsilon_certified: float
    epsilon_lower_bound: float
    consistent: bool
    message: str


def _check_count(name: str, value: object, upper: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{name} = {value!r} is invalid; expected a count (an integer >= 0)")
    if upper is not None and value > upper:
        raise ConfigError(f"{name} = {value!r} exceeds {upper}; expected a count of at most {upper}")
    return int(value)


def _check_delta(delta: object) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 <= delta < 1.0:
        raise ConfigError(f"delta = {delta!r} is invalid; expected a number in [0, 1), e.g. the certificate's δ")
    return float(delta)


def clopper_pearson_upper(successes: int, trials: int, significance: float) -> float:
    """One-sided Clopper-Pearson upper confidence bound on a binomial proportion.

    Returns ``p`` such that ``P[Binomial(trials, p) <= successes] = significance`` (1 when
    ``successes == trials``): the true proportion is below it with probability >= 1 − significance.

    Raises
    ------
    ConfigError
        If the counts are invalid or ``significance`` is not in (0, 1).
    """
    n = _check_count("trials", trials)
    k = _check_count("successes", successes, upper=n)
    if n == 0:
        raise ConfigError("trials = 0; expected at least one trial to bound a proportion")
    alpha = check_fraction("significance", significance, hint="use e.g. 0.025")
    return 1.0 if k == n else float(beta_dist.ppf(1.0 - alpha, k + 1, n - k))


def epsilon_lower_bound(
    false_positives: int,
    negatives: int,
    false_negatives: int,
    positives: int,
    *,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> ClopperPearsonBound:
    """Jagielski et al. (2020) ε lower bound from a membership test's errors.

    Parameters
    ----------
    false_positives, negatives : int
        Non-members flagged as members, out of ``negatives`` non-members.
    false_negatives, positives : int
        Members missed, out of ``positives`` members.
    delta : float, default 0
        The δ of the claim being audited.
    confidence : float, default 0.95
        Probability that the returned ε is indeed <= the true ε (union bound over both rates).

    Returns
    -------
    ClopperPearsonBound
    """
    delta = _check_delta(delta)
    confidence = check_fraction("confidence", confidence, hint="use e.g. 0.95")
    significance = (1.0 - confidence) / 2.0
    fpr_ub = clopper_pearson_upper(false_positives, negatives, significance)
    fnr_ub = clopper_pearson_upper(false_negatives, positives, significance)

    def term(numerator: float, denominator: float) -> float:
        return math.log(numerator / denominator) if numerator > 0 and denominator > 0 else 0.0

    epsilon = max(0.0, term(1.0 - delta - fnr_ub, fpr_ub), term(1.0 - delta - fpr_ub, fnr_ub))
    return ClopperPearsonBound(
        epsilon=epsilon, delta=delta, confidence=confidence,
        false_positives=int(false_positives), negatives=int(negatives),
        false_negatives=int(false_negatives), positives=int(positives),
        fpr_upper=fpr_ub, fnr_upper=fnr_ub,
    )


def _bound_at(pos: np.ndarray, neg: np.ndarray, threshold: float, delta: float, confidence: float) -> ClopperPearsonBound:
    fp = int(np.sum(neg >= threshold))
    fn = int(np.sum(pos < threshold))
    bound = epsilon_lower_bound(fp, neg.size, fn, pos.size, delta=delta, confidence=confidence)
    return dataclasses.replace(bound, threshold=float(threshold))


def epsilon_lower_bound_from_scores(
    members: Sequence[float] | np.ndarray,
    nonmembers: Sequence[float] | np.ndarray,
    *,
    threshold: float | None = None,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> ClopperPearsonBound:
    """ε lower bound of the test "member if score >= threshold".

    Parameters
    ----------
    members, nonmembers : array-like of float
        Membership scores, higher meaning "more likely a member".
    threshold : float, optional
        Fixed in advance: every score is counted. If omitted, scores at even positions choose the
        threshold with the best bound and those at odd positions are counted, so the confidence
        statement stays valid (at the price of half the data).
    delta, confidence
        See :func:`epsilon_lower_bound`.

    Returns
    -------
    ClopperPearsonBound
    """
    pos = as_scores("members", members)
    neg = as_scores("nonmembers", nonmembers)
    delta = _check_delta(delta)
    if threshold is not None:
        return _bound_at(pos, neg, float(threshold), delta, confidence)
    if pos.size < 2 or neg.size < 2:
        raise ConfigError(
            f"{pos.size} member and {neg.size} non-member scores cannot be split to choose a threshold; "
            "expected at least 2 of each, or pass threshold="
        )
    confidence = check_fraction("confidence", confidence, hint="use e.g. 0.95")
    cal_pos, cal_neg = np.sort(pos[0::2]), np.sort(neg[0::2])
    thresholds = np.unique(np.concatenate([cal_pos, cal_neg]))  # [K]
    fp = cal_neg.size - np.searchsorted(cal_neg, thresholds, side="left")  # [K] non-members >= t
    fn = np.searchsorted(cal_pos, thresholds, side="left")  # [K] members < t
    eps = _epsilon_array(fp, cal_neg.size, fn, cal_pos.size, delta, (1.0 - confidence) / 2.0)
    best = float(thresholds[int(np.argmax(eps))])
    return _bound_at(pos[1::2], neg[1::2], best, delta, confidence)


def _epsilon_array(
    fp: np.ndarray, negatives: int, fn: np.ndarray, positives: int, delta: float, significance: float
) -> np.ndarray:
    """Vectorized :func:`epsilon_lower_bound` over many thresholds' counts: ``[K]``."""
    fpr_ub = np.where(fp < negatives, beta_dist.ppf(1.0 - significance, fp + 1, np.maximum(negatives - fp, 1)), 1.0)
    fnr_ub = np.where(fn < positives, beta_dist.ppf(1.0 - significance, fn + 1, np.maximum(positives - fn, 1)), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.clip(1.0 - delta - fnr_ub, 0.0, None) / fpr_ub)
        b = np.log(np.clip(1.0 - delta - fpr_ub, 0.0, None) / fnr_ub)
    return np.maximum(0.0, np.nan_to_num(np.maximum(a, b), nan=0.0, neginf=0.0))


def one_run_p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float = 0.0) -> float:
    """Steinke et al. (2023) p-value of ``correct`` right guesses out of ``guesses`` under (ε, δ)-DP.

    Returns an upper bound on ``P[V >= correct]`` for any (ε, δ)-DP training run in which each of
    ``canaries`` canaries was included independently with probability ½.
    """
    m = _check_count("canaries", canaries)
    r = _check_count("guesses", guesses, upper=m)
    v = _check_count("correct", correct, upper=r)
    delta = _check_delta(delta)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon >= 0:
        raise ConfigError(f"epsilon = {epsilon!r} is invalid; expected a number >= 0")
    q = float(expit(epsilon))  # e^ε / (1 + e^ε): accuracy of ε-DP randomized response
    tail = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0.0 or v == 0:
        return min(tail, 1.0)
    i = np.arange(1, v + 1)
    below = binom.sf(v - i - 1, r, q) - tail  # P[v - i <= Binomial < v], i = 1..v
    alpha = float(np.max(below / i))
    return min(tail + alpha * delta * 2 * m, 1.0)


def one_run_lower_bound(
    canaries: int, guesses: int, correct: int, *, delta: float = 0.0, confidence: float = 0.95
) -> OneRunBound:
    """Largest ε that ``correct`` right guesses out of ``guesses`` refute at ``confidence``.

    The p-value grows with ε; the bound is found by doubling then bisection to 1e-6.

    Returns
    -------
    OneRunBound
        ``epsilon = 0`` when even ε = 0 is not refuted.
    """
    significance = 1.0 - check_fraction("confidence", confidence, hint="use e.g. 0.95")

    def refuted(eps: float) -> bool:
        return one_run_p_value(canaries, guesses, correct, eps, delta) <= significance

    lo, hi = 0.0, 1.0
    if not refuted(lo):
        epsilon = 0.0
    else:
        while refuted(hi) and hi < 1e3:
            lo, hi = hi, 2.0 * hi
        while hi - lo > 1e-6:
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if refuted(mid) else (lo, mid)
        epsilon = lo
    return OneRunBound(epsilon=epsilon, delta=float(delta), confidence=float(confidence),
                       canaries=int(canaries), guesses=int(guesses), correct=int(correct))


def one_run_lower_bound_from_scores(
    included: Sequence[bool] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    *,
    guesses_in: int,
    guesses_out: int,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> OneRunBound:
    """One-run bound where the top-scored canaries are guessed "in" and the lowest "out".

    Parameters
    ----------
    included : array-like of bool
        ``[m]`` whether each canary was really included (drawn with probability ½ before training).
    scores : array-like of float
        ``[m]`` membership score, higher meaning "more likely included".
    guesses_in, guesses_out : int
        How many top / bottom canaries to guess about (fixed before scoring); the rest abstain.
    """
    truth = np.asarray(included, dtype=bool)
    values = as_scores("scores", scores)
    if truth.shape != values.shape:
        raise ConfigError(
            f"included has shape {truth.shape} but scores has shape {values.shape}; expected one "
            "inclusion flag per canary score"
        )
    k_in = _check_count("guesses_in", guesses_in)
    k_out = _check_count("guesses_out", guesses_out)
    if k_in + k_out > values.size:
        raise ConfigError(
            f"guesses_in + guesses_out = {k_in + k_out} exceeds the {values.size} canaries; "
            "expected at most one guess per canary"
        )
    order = np.argsort(-values, kind="stable")  # highest first
    correct = int(truth[order[:k_in]].sum()) + int((~truth[order[values.size - k_out:]]).sum() if k_out else 0)
    return one_run_lower_bound(values.size, k_in + k_out, correct, delta=delta, confidence=confidence)


def check_certificate(epsilon_certified: float, bound: ClopperPearsonBound | OneRunBound) -> CertificateCheck:
    """Flag a certificate whose ε is below an empirical lower bound (the claim is refuted).

    Parameters
    ----------
    epsilon_certified : float
        The ε the certificate states, for the same δ as ``bound``.
    bound : ClopperPearsonBound or OneRunBound

    Returns
    -------
    CertificateCheck
    """
    if isinstance(epsilon_certified, bool) or not isinstance(epsilon_certified, (int, float)) or not (
        epsilon_certified >= 0
    ):
        raise ConfigError(f"epsilon_certified = {epsilon_certified!r} is invalid; expected a number >= 0 (may be inf)")
    consistent = not epsilon_certified < bound.epsilon
    level = f"{100 * bound.confidence:g}%"
    if consistent:
        message = (f"certified ε = {epsilon_certified:.4g} is consistent with the measured lower bound "
                   f"ε ≥ {bound.epsilon:.4g} (δ = {bound.delta:g}, {level} confidence)")
    else:
        message = (f"certified ε = {epsilon_certified:.4g} is REFUTED: the audit shows ε ≥ {bound.epsilon:.4g} "
                   f"(δ = {bound.delta:g}, {level} confidence); the certificate overstates the guarantee")
    return CertificateCheck(epsilon_certified=float(epsilon_certified), epsilon_lower_bound=bound.epsilon,
                            consistent=consistent, message=message)
