"""ε from Opacus' PRV accountant against Google dp-accounting's PLD accountant (independent code)."""

from __future__ import annotations

import math

import pytest

from fedunlearn.certify import account, client_level_epsilon, epsilon
from fedunlearn.errors import ConfigError

# (z, q, rounds, delta) -> ε by dp_accounting 0.6 PLDAccountant(value_discretization_interval=1e-4),
# PoissonSampledDpEvent(q, GaussianDpEvent(z)) self-composed `rounds` times (GaussianDpEvent if q = 1).
GOLDEN_PLD = [
    (1.0, 0.1, 100, 1e-5, 7.046602876945895),
    (0.8, 0.5, 20, 1e-5, 21.40742503096752),
    (2.0, 1.0, 10, 1e-5, 7.511275904062699),
    (1.1, 0.01, 1000, 1e-5, 1.5153702482034066),
]


@pytest.mark.parametrize(("z", "q", "rounds", "delta", "want"), GOLDEN_PLD)
def test_client_level_epsilon_matches_pld_golden_numbers(z, q, rounds, delta, want):
    got = client_level_epsilon(z, q, rounds, delta)
    assert abs(got - want) / want < 0.02


def test_live_cross_check_against_dp_accounting():
    import dp_accounting as dpa

    z, q, rounds, delta = 1.5, 0.3, 12, 1e-6
    pld = dpa.pld.PLDAccountant(value_discretization_interval=1e-4)
    pld.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), rounds))
    want = pld.get_epsilon(delta)
    assert abs(client_level_epsilon(z, q, rounds, delta) - want) / want < 0.02


def test_rdp_is_a_looser_cross_check_and_histories_compose():
    report = account([(1.0, 0.5, 3), (1.0, 0.5, 2)], 1e-5)
    assert report.history == [(1.0, 0.5, 5)]
    assert report.epsilon == pytest.approx(client_level_epsilon(1.0, 0.5, 5, 1e-5), rel=1e-6)
    assert report.epsilon <= report.epsilon_rdp <= 1.3 * report.epsilon


def test_edge_cases_and_bad_input():
    assert epsilon([], 1e-5) == 0.0
    assert client_level_epsilon(1.0, 0.5, 0, 1e-5) == 0.0
    assert math.isinf(epsilon([(0.0, 0.5, 3)], 1e-5))
    with pytest.raises(ConfigError, match="delta = 0"):
        client_level_epsilon(1.0, 0.5, 3, 0)
    with pytest.raises(ConfigError, match="sample rate 1.5"):
        client_level_epsilon(1.0, 1.5, 3, 1e-5)
    with pytest.raises(ConfigError, match="accountant"):
        epsilon([(1.0, 0.5, 3)], 1e-5, accountant="gdp")
