"""CG and LiSSA on quadratics with a known solution, and the removal-noise scale."""

from __future__ import annotations

import math

import pytest
import torch

from fedunlearn.certify import removal_noise
from fedunlearn.errors import ConfigError
from fedunlearn.training.solvers import conjugate_gradient, lissa, solve


def _problem(n: int = 30, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
    eig = torch.linspace(0.5, 4.0, n, dtype=torch.float64)
    a = q @ torch.diag(eig) @ q.T  # SPD, condition number 8
    b = torch.randn(n, generator=gen, dtype=torch.float64)

    def hvp(v):  # a dict of two "factors" to exercise the dict algebra
        flat = torch.cat([v["a"].double().flatten(), v["b"].double().flatten()])
        out = (a @ flat).float()
        return {"a": out[:10].view(2, 5), "b": out[10:]}

    vec = {"a": b[:10].float().view(2, 5), "b": b[10:].float()}
    return a, b, hvp, vec


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_cg_solves_a_quadratic(damping):
    a, b, hvp, vec = _problem()
    res = conjugate_gradient(hvp, vec, damping=damping, iterations=60, tol=1e-6)
    expected = torch.linalg.solve(a + damping * torch.eye(30, dtype=torch.float64), b)
    got = torch.cat([res.x["a"].flatten(), res.x["b"].flatten()]).double()
    assert res.converged and res.stopped == "tolerance" and res.residual <= 1e-6
    assert torch.allclose(got, expected, atol=1e-4)
    assert res.iterations <= 30  # exact arithmetic: at most n steps
    assert list(res.history) == sorted(res.history, reverse=True) or res.history[-1] <= 1e-6


def test_cg_stops_on_negative_curvature():
    res = conjugate_gradient(lambda v: {k: -t for k, t in v.items()}, {"x": torch.ones(3)}, iterations=5)
    assert res.stopped == "negative curvature" and not res.converged
    assert torch.equal(res.x["x"], torch.zeros(3))


def test_lissa_solves_a_quadratic():
    a, b, hvp, vec = _problem()
    res = lissa(hvp, vec, damping=0.1, iterations=300, scale=5.0, tol=1e-4)
    expected = torch.linalg.solve(a + 0.1 * torch.eye(30, dtype=torch.float64), b)
    got = torch.cat([res.x["a"].flatten(), res.x["b"].flatten()]).double()
    assert res.converged and torch.allclose(got, expected, atol=1e-3)


def test_solver_input_is_checked():
    _, _, hvp, vec = _problem()
    with pytest.raises(ConfigError, match="damping"):
        solve("cg", hvp, vec, damping=-1.0, iterations=5)
    with pytest.raises(ConfigError, match="solver 'newton' is unknown"):
        solve("newton", hvp, vec, damping=0.0, iterations=5)
    with pytest.raises(ConfigError, match="LiSSA diverged"):
        lissa(hvp, vec, iterations=200, scale=1.0)  # s below λ_max = 4


def test_removal_noise_is_the_gaussian_mechanism_and_not_certified_without_convexity():
    noise = removal_noise(epsilon=0.5, delta=1e-5, gradient_residual=0.2, strong_convexity=0.1)
    assert noise.sensitivity == pytest.approx(2.0)
    assert noise.sigma == pytest.approx(2.0 * math.sqrt(2 * math.log(1.25e5)) / 0.5)
    assert not noise.certified and any("does NOT hold" in a for a in noise.assumptions)
    assert removal_noise(epsilon=0.5, delta=1e-5, gradient_residual=0.2, strong_convexity=0.1,
                         convex=True, residual_is_bound=True).certified
    with pytest.raises(ConfigError, match="0 < ε < 1"):
        removal_noise(epsilon=2.0, delta=1e-5, gradient_residual=0.2, strong_convexity=0.1)
