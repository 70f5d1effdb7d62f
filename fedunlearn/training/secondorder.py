"""Gradients and Hessian-vector products of an organization's loss with respect to its LoRA factors.

These are the local computations behind influence-function unlearning (Koh & Liang, "Understanding
Black-box Predictions via Influence Functions", ICML 2017; Guo et al., "Certified Data Removal from
Machine Learning Models", ICML 2020): the server never sees the data, only ``∇L_i(θ)`` and
``∇²L_i(θ) v`` computed by organization ``i`` on its own records.

The loss is the mean over the organization's records of the per-sequence mean token loss
(:func:`~fedunlearn.training.local.sequence_losses`), the quantity local training minimizes.
Hessian-vector products use Pearlmutter's trick (double backward); PyTorch's fused CPU/GPU
attention kernels have no double backward, so the math kernel of scaled-dot-product attention is
forced while they run.

Two curvatures are offered for the local solve of GIANT-style influence (:func:`local_solve`):
``"hessian"`` (exact ``∇²L v`` by double backward, about two gradient passes per product) and
``"fisher"``, the empirical Fisher ``F = (1/n) Σ_j ∇ℓ_j ∇ℓ_jᵀ`` of the per-sequence losses ``ℓ_j``
(a positive semi-definite Gauss-Newton-type approximation of the Hessian, as in the EK-FAC
influence functions of Grosse et al., "Studying Large Language Model Generalization with Influence
Functions", 2023). ``F`` is held as the ``n × d`` matrix of per-sequence gradients, computed in one
pass, after which every product is a matrix-vector product: a local CG costs one gradient pass
whatever its number of iterations, and cannot meet negative curvature.

Vectors are plain ``dict[str, Tensor]`` keyed by the canonical LoRA state keys
(:func:`~fedunlearn.models.get_lora_state`), so they travel in the same ``ArrayRecord`` as adapters.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from fedunlearn.errors import ConfigError
from fedunlearn.models.lora import _lora_parameters
from fedunlearn.training.local import EncodedData, sequence_losses
from fedunlearn.training.solvers import SolveResult, solve

__all__ = ["CURVATURES", "GradientResult", "LocalSolve", "hessian_vector_product", "local_solve", "loss_gradient",
           "per_example_gradients"]

CURVATURES = ("hessian", "fisher")
"""Curvature matrices :func:`local_solve` accepts."""


@dataclass(frozen=True)
class GradientResult:
    """The gradient of the mean loss on some records, and that loss."""

    gradient: dict[str, torch.Tensor]  # canonical LoRA key -> tensor of the factor's shape (CPU float32)
    loss: float
    num_examples: int


def _batches(data: EncodedData, batch_size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(data), batch_size):
        mask = data.attention_mask[i : i + batch_size]
        width = int(mask.sum(dim=1).max())  # trim padding columns
        yield data.input_ids[i : i + batch_size, :width].to(device), mask[:, :width].to(device)


def _check(batch_size: int, data: EncodedData) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size = {batch_size}: expected a positive number of records per batch")
    if len(data) == 0:
        raise ConfigError("no records to differentiate: expected at least one encoded record")


def loss_gradient(model: nn.Module, data: EncodedData, *, batch_size: int = 32) -> GradientResult:
    """Gradient of the mean per-sequence loss over ``data`` with respect to the LoRA factors.

    Parameters
    ----------
    model : peft.PeftModel
        A LoRA-wrapped model (only its LoRA factors are differentiated; dropout is switched off).
    data : EncodedData
        The records.
    batch_size : int
        Records per forward pass (the result does not depend on it, up to float rounding).

    Returns
    -------
    GradientResult
    """
    _check(batch_size, data)
    params = _lora_parameters(model)
    device = next(iter(params.values())).device
    model.eval()
    n = len(data)
    total = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    loss_sum = 0.0
    for ids, mask in _batches(data, batch_size, device):
        losses = sequence_losses(model, ids, mask)  # [b]
        grads = torch.autograd.grad(losses.sum() / n, list(params.values()))
        for k, g in zip(params, grads):
            total[k] += g.float()
        loss_sum += float(losses.detach().sum())
    return GradientResult(gradient={k: v.cpu() for k, v in total.items()}, loss=loss_sum / n, num_examples=n)


def hessian_vector_product(
    model: nn.Module, data: EncodedData, vector: Mapping[str, torch.Tensor], *, batch_size: int = 32
) -> dict[str, torch.Tensor]:
    """``∇²L(θ) v`` of the mean per-sequence loss over ``data``, by double backward (Pearlmutter 1994).

    Parameters
    ----------
    model : peft.PeftModel
    data : EncodedData
    vector : mapping of str to torch.Tensor
        ``v``, keyed like the model's LoRA state, with the factors' shapes.

    Returns
    -------
    dict of str to torch.Tensor
        ``H v`` keyed like ``vector`` (CPU float32).

    Raises
    ------
    ConfigError
        If ``vector``'s keys or shapes differ from the model's LoRA factors.
    """
    _check(batch_size, data)
    params = _lora_parameters(model)
    if set(vector) != set(params) or any(tuple(vector[k].shape) != tuple(p.shape) for k, p in params.items()):
        raise ConfigError(
            f"the vector has keys {sorted(vector)[:3]}… that do not match the adapter's LoRA factors "
            f"{sorted(params)[:3]}… (or their shapes); send a vector shaped like get_lora_state(model)"
        )
    device = next(iter(params.values())).device
    v = [vector[k].to(device=device, dtype=p.dtype) for k, p in params.items()]
    model.eval()
    n = len(data)
    total = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no double backward
        for ids, mask in _batches(data, batch_size, device):
            loss = sequence_losses(model, ids, mask).sum() / n
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            dot = sum((g * vi).sum() for g, vi in zip(grads, v))  # scalar g·v
            hv = torch.autograd.grad(dot, list(params.values()))
            for k, h in zip(params, hv):
                total[k] += h.float()
    return {k: t.cpu() for k, t in total.items()}


def per_example_gradients(model: nn.Module, data: EncodedData, *,
                          batch_size: int = 16) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """The gradient of every record's loss ``ℓ_j`` with respect to the LoRA factors.

    Batched: Opacus' per-sample-gradient hooks (:class:`opacus.GradSampleModule`, the machinery of
    DP-SGD here) give every record's gradient of the LoRA ``Linear`` layers from one forward/backward
    pass per batch. Records of a batch are right-padded; with causal attention and the padding masked
    out of the loss, a padded record's gradient equals its unpadded one (tested against one backward
    pass per record). The hooks are removed and every attribute Opacus set is deleted afterwards, so
    the model is left as it was (it may be a pooled one, :mod:`~fedunlearn.training.modelpool`).

    Returns
    -------
    tuple
        ``(mean gradient keyed like the LoRA state, G [n, d] with row j = ∇ℓ_j flattened in sorted key
        order, mean loss)``.
    """
    from opacus import GradSampleModule

    _check(batch_size, data)
    params = _lora_parameters(model)
    device = next(iter(params.values())).device
    model.eval()
    rows, loss_sum = [], 0.0
    wrapper = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
    trainable = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    try:
        for m in trainable:  # Opacus records activations in train mode only; dropout modules stay in eval
            m.train()
        for ids, mask in _batches(data, batch_size, device):
            losses = sequence_losses(model, ids, mask)  # [b]
            with warnings.catch_warnings():  # frozen embeddings: Opacus' hooks fire on outputs, as intended
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                losses.sum().backward()
            b = ids.shape[0]
            rows.append(torch.cat([p.grad_sample.detach().float().reshape(b, -1).cpu() for p in params.values()],
                                  dim=1))
            for p in params.values():
                p.grad, p.grad_sample = None, None
            loss_sum += float(losses.detach().sum())
    finally:
        model.eval()
        wrapper.remove_hooks()
        for p in model.parameters():
            p.grad = None
            for attr in ("grad_sample", "_current_grad_sample", "_forward_counter", "summed_grad"):
                if hasattr(p, attr):
                    delattr(p, attr)
        for module in model.modules():
            if hasattr(module, "activations"):
                delattr(module, "activations")
    G = torch.cat(rows)  # [n, d]
    mean = G.mean(dim=0)
    out, i = {}, 0
    for k, p in params.items():
        out[k] = mean[i : i + p.numel()].view(p.shape).clone()
        i += p.numel()
    return out, G, loss_sum / len(data)


@dataclass(frozen=True)
class LocalSolve:
    """An organization's solution of ``(c·C_i + λI) x_i = g`` (``C_i``: its Hessian or Fisher)."""

    x: dict[str, torch.Tensor]
    solve: SolveResult
    gradient: dict[str, torch.Tensor]  # ∇L_i(θ), a by-product (the Fisher pass computes it anyway)
    loss: float
    num_examples: int
    passes: int  # forward-backward passes over the records (an HVP counts 2)


def local_solve(model: nn.Module, data: EncodedData, g: Mapping[str, torch.Tensor], *, curvature: str = "fisher",
                damping: float, iterations: int, tolerance: float, hessian_scale: float = 1.0,
                solver: str = "cg", lissa_scale: float = 10.0, batch_size: int = 32) -> LocalSolve:
    """Solve ``(hessian_scale · C + λI) x = g`` on this organization's records (one GIANT local step).

    GIANT (Wang, Roosta, Xu & Mahoney, "GIANT: Globally Improved Approximate Newton Method for
    Distributed Optimization", NeurIPS 2018): every worker solves the Newton system with its own
    local curvature and the server averages the solutions, so one message replaces one round per
    Hessian-vector product. ``hessian_scale`` lets the server state the system in the units of its
    weighted objective (the remaining organizations' total weight).

    Raises
    ------
    ConfigError
        Unknown curvature, or ``g`` not shaped like the adapter's LoRA factors.
    """
    if curvature not in CURVATURES:
        raise ConfigError(f"curvature {curvature!r} is unknown: expected one of {list(CURVATURES)}")
    params = _lora_parameters(model)
    if set(g) != set(params) or any(tuple(g[k].shape) != tuple(p.shape) for k, p in params.items()):
        raise ConfigError("the right-hand side g does not match the adapter's LoRA factors; send a vector "
                          "shaped like get_lora_state(model)")
    if curvature == "fisher":
        grad, G, loss = per_example_gradients(model, data)
        Gd, n = G.double(), G.shape[0]
        shapes = {k: p.shape for k, p in params.items()}

        def product(v: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            flat = torch.cat([v[k].double().reshape(-1) for k in shapes])
            fv = Gd.T @ (Gd @ flat) * (hessian_scale / n)
            out, i = {}, 0
            for k, shp in shapes.items():
                size = int(torch.Size(shp).numel())
                out[k] = fv[i : i + size].view(shp).float()
                i += size
            return out

        sol = solve(solver, product, g, damping=damping, iterations=iterations, scale=lissa_scale, tol=tolerance)
        return LocalSolve(x=sol.x, solve=sol, gradient=grad, loss=loss, num_examples=n, passes=1)
    first = loss_gradient(model, data, batch_size=batch_size)
    sol = solve(solver, lambda v: {k: hessian_scale * t for k, t in
                                   hessian_vector_product(model, data, v, batch_size=batch_size).items()},
                g, damping=damping, iterations=iterations, scale=lissa_scale, tol=tolerance)
    return LocalSolve(x=sol.x, solve=sol, gradient=first.gradient, loss=first.loss, num_examples=first.num_examples,
                      passes=1 + 2 * sol.iterations)
