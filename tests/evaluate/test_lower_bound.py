"""Empirical ε lower bounds: hand-computed values, and never above the true ε of a mechanism.

Validity is checked by simulation: a Gaussian mechanism with sensitivity 1 and noise σ is exactly
(ε, δ(ε))-DP with δ(ε) = Φ(1/(2σ) − εσ) − e^ε Φ(−1/(2σ) − εσ) (Balle & Wang 2018, Theorem 8),
and randomized response with accuracy e^ε/(1+e^ε) is exactly ε-DP. Membership guesses are drawn
from their known error rates; a valid bound at 95% confidence may exceed the true ε in at most
about 5% of seeded trials (in practice far fewer: the bounds are conservative).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import binom, norm

from fedunlearn.errors import ConfigError
from fedunlearn.evaluate import (
    check_certificate,
    clopper_pearson_upper,
    epsilon_lower_bound,
    epsilon_lower_bound_from_scores,
    one_run_lower_bound,
    one_run_lower_bound_from_scores,
    one_run_p_value,
)


def allowed_violations(trials: int, level: float = 0.05) -> int:
    """Violations a valid bound at ``1 - level`` confidence exceeds with probability < 0.1%."""
    return int(binom.ppf(0.999, trials, level))


def gaussian_delta(eps: float, sigma: float) -> float:
    return norm.cdf(0.5 / sigma - eps * sigma) - math.exp(eps) * norm.cdf(-0.5 / sigma - eps * sigma)


def gaussian_epsilon(delta: float, sigma: float) -> float:
    """True ε of the Gaussian mechanism (sensitivity 1, noise σ) at δ."""
    return brentq(lambda e: gaussian_delta(e, sigma) - delta, 0.0, 100.0)


def test_clopper_pearson_closed_forms() -> None:
    # k = 0: P[Bin(n, p) = 0] = (1 - p)^n = α  =>  p = 1 - α^(1/n)
    assert clopper_pearson_upper(0, 100, 0.05) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert clopper_pearson_upper(7, 7, 0.05) == 1.0
    # k = n - 1: P[Bin(n, p) <= n-1] = 1 - p^n = α  =>  p = (1 - α)^(1/n)
    assert clopper_pearson_upper(9, 10, 0.05) == pytest.approx(0.95 ** (1 / 10))
    with pytest.raises(ConfigError, match="successes"):
        clopper_pearson_upper(11, 10, 0.05)


def test_jagielski_bound_by_hand() -> None:
    bound = epsilon_lower_bound(0, 100, 0, 100, delta=0.0, confidence=0.9)
    ub = 1 - 0.05 ** (1 / 100)  # each rate at significance 0.05
    assert bound.fpr_upper == pytest.approx(ub)
    assert bound.epsilon == pytest.approx(math.log((1 - ub) / ub))
    with_delta = epsilon_lower_bound(0, 100, 0, 100, delta=0.01, confidence=0.9)
    assert with_delta.epsilon == pytest.approx(math.log((1 - 0.01 - ub) / ub))
    assert epsilon_lower_bound(50, 100, 50, 100).epsilon == 0.0  # a coin flip proves nothing


def test_one_run_pure_dp_is_a_binomial_tail() -> None:
    # δ = 0: the p-value is P[Bin(r, e^ε/(1+e^ε)) >= v] (Steinke et al. 2023).
    assert one_run_p_value(100, 50, 40, 1.0) == pytest.approx(binom.sf(39, 50, expit(1.0)))
    bound = one_run_lower_bound(100, 50, 40, confidence=0.95)
    assert one_run_p_value(100, 50, 40, bound.epsilon) == pytest.approx(0.05, abs=1e-4)
    assert one_run_lower_bound(100, 50, 25).epsilon == 0.0
    # δ only weakens the bound
    assert one_run_lower_bound(1000, 100, 95, delta=1e-3).epsilon < one_run_lower_bound(1000, 100, 95).epsilon


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_clopper_pearson_never_above_gaussian_epsilon(sigma: float) -> None:
    rng = np.random.default_rng(0)
    delta, n, trials = 1e-5, 1000, 300
    eps_true = gaussian_epsilon(delta, sigma)
    violations = 0
    best = 0.0
    for _ in range(trials):
        t = rng.uniform(0.0, 1.0 + 3 * sigma)  # "member" if output >= t; members output N(1, σ²)
        fp = rng.binomial(n, norm.sf(t / sigma))
        fn = rng.binomial(n, norm.cdf((t - 1.0) / sigma))
        eps_lb = epsilon_lower_bound(fp, n, fn, n, delta=delta, confidence=0.95).epsilon
        violations += eps_lb > eps_true
        best = max(best, eps_lb)
    assert violations <= allowed_violations(trials)
    assert best > 0.2 * eps_true  # the bound is not vacuous either


def test_clopper_pearson_from_scores_never_above_gaussian_epsilon() -> None:
    rng = np.random.default_rng(1)
    sigma, delta = 0.5, 1e-5
    eps_true = gaussian_epsilon(delta, sigma)
    results = [
        epsilon_lower_bound_from_scores(rng.normal(1.0, sigma, 400), rng.normal(0.0, sigma, 400), delta=delta).epsilon
        for _ in range(100)
    ]
    assert sum(e > eps_true for e in results) <= allowed_violations(len(results))
    assert max(results) > 0.2 * eps_true


@pytest.mark.parametrize("eps_true", [0.5, 2.0])
def test_one_run_never_above_randomized_response_epsilon(eps_true: float) -> None:
    rng = np.random.default_rng(2)
    m, trials = 1000, 300
    bounds = [one_run_lower_bound(m, m, int(rng.binomial(m, expit(eps_true)))).epsilon for _ in range(trials)]
    # Guessing every canary makes the bound tight here: violations near 5%, never far above.
    assert sum(b > eps_true for b in bounds) <= allowed_violations(trials)
    assert np.median(bounds) > 0.5 * eps_true


def test_one_run_with_delta_never_above_gaussian_epsilon() -> None:
    rng = np.random.default_rng(3)
    sigma, delta, m = 0.5, 1e-4, 1000
    eps_true = gaussian_epsilon(delta, sigma)
    bounds = []
    for _ in range(100):
        included = rng.random(m) < 0.5
        scores = rng.normal(included.astype(float), sigma)  # each canary's own Gaussian mechanism
        bounds.append(one_run_lower_bound_from_scores(included, scores, guesses_in=50, guesses_out=50,
                                                      delta=delta).epsilon)
    assert sum(b > eps_true for b in bounds) <= allowed_violations(len(bounds))
    assert np.median(bounds) > 0.0


def test_certificate_check() -> None:
    bound = epsilon_lower_bound(0, 1000, 0, 1000)
    refuted = check_certificate(1.0, bound)
    assert not refuted.consistent and "REFUTED" in refuted.message
    assert check_certificate(bound.epsilon + 0.1, bound).consistent
    assert check_certificate(math.inf, bound).consistent
    with pytest.raises(ConfigError, match="epsilon_certified"):
        check_certificate(-1.0, bound)
