"""Noise for certified removal after a Newton step (Guo et al., "Certified Data Removal from Machine
Learning Models", ICML 2020), and the assumptions it rests on.

After a one-step Newton removal ``θ⁻ = θ + H⁻¹ Δ`` the remaining objective ``L'`` has gradient
residual ``‖∇L'(θ⁻)‖``. If ``L'`` is ``μ``-strongly convex, its minimizer ``θ*`` satisfies
``‖θ⁻ − θ*‖ ≤ ‖∇L'(θ⁻)‖ / μ``. Releasing ``θ⁻ + b`` with ``b ~ N(0, σ² I)`` and
``σ = (‖∇L'(θ⁻)‖ / μ) · √(2 ln(1.25/δ)) / ε`` is then the Gaussian mechanism (Dwork & Roth 2014,
Thm. A.1; valid for ε < 1) with that sensitivity: the released model is (ε, δ)-indistinguishable
from ``θ* + b``, which never saw the removed data.

Where this does **not** hold — which is the case for LoRA on a language model — the result is only
``empirical``: the loss is not convex, ``μ`` is a damping constant rather than a curvature bound,
the residual is measured (data-dependent), not bounded a priori, and the retrained reference is not
the minimizer ``θ*``. :func:`removal_noise` says which assumptions fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fedunlearn.errors import ConfigError

__all__ = ["RemovalNoise", "removal_noise"]


@dataclass(frozen=True)
class RemovalNoise:
    """The Gaussian noise scale for a Newton-step removal and the assumptions behind it.

    Attributes
    ----------
    sigma : float
        Standard deviation of the isotropic Gaussian added to every LoRA parameter.
    epsilon, delta : float
        The target (ε, δ).
    sensitivity : float
        ``gradient_residual / strong_convexity``.
    certified : bool
        Whether every assumption holds (only then may the guarantee be ``certified``).
    assumptions : tuple of str
        What the bound assumes, each marked as holding or not.
    """

    sigma: float
    epsilon: float
    delta: float
    sensitivity: float
    certified: bool
    assumptions: tuple[str, ...] = field(default_factory=tuple)


def removal_noise(*, epsilon: float, delta: float, gradient_residual: float, strong_convexity: float,
                  convex: bool = False, residual_is_bound: bool = False) -> RemovalNoise:
    """Gaussian noise scale for an (ε, δ) removal after a Newton step (Guo et al. 2020).

    Parameters
    ----------
    epsilon, delta : float
        Target guarantee, ``0 < ε < 1`` (Gaussian mechanism) and ``0 < δ < 1``.
    gradient_residual : float
        ``‖∇L'(θ⁻)‖`` of the remaining objective after the step (or an a-priori bound on it).
    strong_convexity : float
        ``μ > 0``; for a damped LM objective, the damping λ (not a true curvature bound).
    convex : bool
        The caller asserts the remaining objective is ``μ``-strongly convex.
    residual_is_bound : bool
        The caller asserts ``gradient_residual`` is a data-independent bound, not a measurement.

    Returns
    -------
    RemovalNoise
        ``certified`` is ``convex and residual_is_bound``.
    """
    if not (0 < epsilon < 1):
        raise ConfigError(f"epsilon = {epsilon!r}: the Gaussian mechanism bound needs 0 < ε < 1, e.g. 0.5")
    if not (0 < delta < 1):
        raise ConfigError(f"delta = {delta!r}: expected 0 < δ < 1, e.g. 1e-5")
    if not (math.isfinite(gradient_residual) and gradient_residual >= 0):
        raise ConfigError(f"gradient residual {gradient_residual!r}: expected a finite norm >= 0")
    if not (math.isfinite(strong_convexity) and strong_convexity > 0):
        raise ConfigError(f"strong convexity μ = {strong_convexity!r}: expected > 0 (e.g. the damping λ)")
    sensitivity = gradient_residual / strong_convexity
    sigma = sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon
    assumptions = (
        f"remaining objective is {strong_convexity:g}-strongly convex: {'assumed' if convex else 'does NOT hold (LoRA on an LM is non-convex; μ is the damping)'}",
        f"gradient residual {gradient_residual:.3g} is an a-priori bound: {'assumed' if residual_is_bound else 'does NOT hold (measured after the step)'}",
        "the reference is the exact minimizer of the remaining objective: "
        + ("implied by convexity" if convex else "does NOT hold (retraining stops after finitely many rounds)"),
    )
    return RemovalNoise(sigma=sigma, epsilon=epsilon, delta=delta, sensitivity=sensitivity,
                        certified=convex and residual_is_bound, assumptions=assumptions)
