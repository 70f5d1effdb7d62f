"""Iterative solvers for ``(H + λI) x = b`` given only Hessian-vector products.

Influence-function unlearning needs an inverse-Hessian-vector product (Koh & Liang, ICML 2017).
In a federation ``H`` is never formed: each product ``H v`` is a round of ``query.hvp`` messages.
Two solvers are offered:

* :func:`conjugate_gradient` — Hestenes & Stiefel (1952); exact in ``n`` steps for a symmetric
  positive definite system, and usually good in far fewer. On a non-convex loss ``H + λI`` may be
  indefinite: the iteration stops at the first direction of non-positive curvature and returns
  the best iterate so far (the report says so).
* :func:`lissa` — Agarwal, Bullins & Hazan (2017), the stochastic Neumann series Koh & Liang use:
  ``x_{j+1} = b + (I − (H + λI)/s) x_j``, with ``x = x_J / s``; converges when ``s`` exceeds the
  largest eigenvalue of ``H + λI``.

Vectors are dicts of tensors (LoRA factors); the helpers below do the flat algebra.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from fedunlearn.errors import ConfigError

__all__ = ["SOLVERS", "SolveResult", "conjugate_gradient", "lissa", "norm", "solve"]

Vector = dict[str, torch.Tensor]
HvpFn = Callable[[Vector], Vector]

SOLVERS = ("cg", "lissa")
"""Solver names accepted by :func:`solve`."""


@dataclass(frozen=True)
class SolveResult:
    """The solution of ``(H + λI) x = b`` and how well it was found.

    Attributes
    ----------
    x : dict of str to torch.Tensor
    iterations : int
        Hessian-vector products used.
    residual : float
        ``‖(H + λI) x − b‖ / ‖b‖`` (0 when ``b = 0``), measured by one extra product for LiSSA.
    converged : bool
        Whether ``residual`` reached the tolerance.
    stopped : str
        Why the iteration ended: ``"tolerance"``, ``"iterations"`` or ``"negative curvature"``.
    history : tuple of float
        Relative residual after each iteration.
    """

    x: Vector
    iterations: int
    residual: float
    converged: bool
    stopped: str
    history: tuple[float, ...] = field(default_factory=tuple)


def _dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    return float(sum((a[k].double() * b[k].double()).sum() for k in a))


def norm(a: Mapping[str, torch.Tensor]) -> float:
    """Euclidean norm of a dict of tensors."""
    return math.sqrt(max(_dot(a, a), 0.0))


def _axpy(alpha: float, x: Mapping[str, torch.Tensor], y: Mapping[str, torch.Tensor]) -> Vector:
    return {k: y[k] + alpha * x[k] for k in y}  # alpha·x + y


def _check(damping: float, iterations: int, tol: float) -> None:
    if not (math.isfinite(damping) and damping >= 0):
        raise ConfigError(f"damping λ = {damping!r}: expected a finite number >= 0, e.g. 0.01")
    if iterations < 1:
        raise ConfigError(f"iterations = {iterations!r}: expected at least 1, e.g. 20")
    if not (math.isfinite(tol) and tol > 0):
        raise ConfigError(f"tolerance = {tol!r}: expected a small positive number, e.g. 1e-4")


def conjugate_gradient(hvp: HvpFn, b: Mapping[str, torch.Tensor], *, damping: float = 0.0,
                       iterations: int = 20, tol: float = 1e-4) -> SolveResult:
    """Solve ``(H + λI) x = b`` by conjugate gradients from ``x₀ = 0``.

    Parameters
    ----------
    hvp : callable
        ``v -> H v`` (one federated round of ``query.hvp`` per call).
    b : dict of str to torch.Tensor
    damping : float
        ``λ >= 0``, added to the diagonal; makes a nearly singular or slightly indefinite ``H`` solvable.
    iterations : int
        At most this many products.
    tol : float
        Stop when ``‖r‖ / ‖b‖ <= tol``.

    Returns
    -------
    SolveResult
    """
    _check(damping, iterations, tol)
    x = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in b.items()}
    r = {k: v.double().clone() for k, v in b.items()}  # r = b − A x
    b_norm = norm(r)
    if b_norm == 0.0:
        return SolveResult(x={k: v.float() for k, v in x.items()}, iterations=0, residual=0.0, converged=True,
                           stopped="tolerance")
    p = {k: v.clone() for k, v in r.items()}
    rr = _dot(r, r)
    history: list[float] = []
    stopped = "iterations"
    for _ in range(iterations):
        hp = hvp({k: v.float() for k, v in p.items()})
        ap = _axpy(damping, p, {k: v.double() for k, v in hp.items()})  # (H + λI) p
        curvature = _dot(p, ap)
        if curvature <= 0.0:  # indefinite: CG's step is undefined; keep the iterate so far
            stopped = "negative curvature"
            history.append(math.sqrt(rr) / b_norm)
            break
        alpha = rr / curvature
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, ap, r)
        rr_new = _dot(r, r)
        history.append(math.sqrt(rr_new) / b_norm)
        if history[-1] <= tol:
            stopped = "tolerance"
            rr = rr_new
            break
        p = _axpy(rr_new / rr, p, r)
        rr = rr_new
    residual = math.sqrt(rr) / b_norm
    return SolveResult(x={k: v.float() for k, v in x.items()}, iterations=len(history), residual=residual,
                       converged=residual <= tol, stopped=stopped, history=tuple(history))


def lissa(hvp: HvpFn, b: Mapping[str, torch.Tensor], *, damping: float = 0.0, iterations: int = 20,
          scale: float = 10.0, tol: float = 1e-4) -> SolveResult:
    """Solve ``(H + λI) x = b`` by the LiSSA recursion (Agarwal et al. 2017; Koh & Liang 2017).

    ``x_{j+1} = b + x_j − (H + λI) x_j / s`` and ``x = x_J / s``, i.e. a truncated Neumann series
    for ``((H + λI)/s)^{-1}``. Needs ``s`` above the largest eigenvalue of ``H + λI``. With full
    (not sampled) Hessian products this is deterministic. One extra product measures the residual.
    """
    _check(damping, iterations, tol)
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"LiSSA scale s = {scale!r}: expected a positive number above H's largest eigenvalue")
    bd = {k: v.double() for k, v in b.items()}
    b_norm = norm(bd)
    h = {k: v.clone() for k, v in bd.items()}
    history: list[float] = []

    def apply(v: Vector) -> Vector:
        return _axpy(damping, v, {k: t.double() for k, t in hvp({k: t.float() for k, t in v.items()}).items()})

    for _ in range(iterations):
        ah = apply(h)
        h = {k: bd[k] + h[k] - ah[k] / scale for k in h}
        if not all(torch.isfinite(t).all() for t in h.values()):
            raise ConfigError(f"LiSSA diverged with scale s = {scale}: raise the scale above H's largest eigenvalue")
    x = {k: v / scale for k, v in h.items()}
    ax = apply(x)
    residual = 0.0 if b_norm == 0 else norm({k: ax[k] - bd[k] for k in bd}) / b_norm
    history.append(residual)
    return SolveResult(x={k: v.float() for k, v in x.items()}, iterations=iterations + 1, residual=residual,
                       converged=residual <= tol, stopped="tolerance" if residual <= tol else "iterations",
                       history=tuple(history))


def solve(method: str, hvp: HvpFn, b: Mapping[str, torch.Tensor], *, damping: float, iterations: int,
          scale: float = 10.0, tol: float = 1e-4) -> SolveResult:
    """Dispatch to :func:`conjugate_gradient` (``"cg"``) or :func:`lissa` (``"lissa"``)."""
    if method == "cg":
        return conjugate_gradient(hvp, b, damping=damping, iterations=iterations, tol=tol)
    if method == "lissa":
        return lissa(hvp, b, damping=damping, iterations=iterations, scale=scale, tol=tol)
    raise ConfigError(f"solver {method!r} is unknown: expected one of {list(SOLVERS)}")
