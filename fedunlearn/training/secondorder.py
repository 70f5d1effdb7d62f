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

Vectors are plain ``dict[str, Tensor]`` keyed by the canonical LoRA state keys
(:func:`~fedunlearn.models.get_lora_state`), so they travel in the same ``ArrayRecord`` as adapters.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from fedunlearn.errors import ConfigError
from fedunlearn.models.lora import _lora_parameters
from fedunlearn.training.local import EncodedData, sequence_losses

__all__ = ["GradientResult", "hessian_vector_product", "loss_gradient"]


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
