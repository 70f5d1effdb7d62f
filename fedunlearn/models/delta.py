"""ΔW arithmetic on canonical LoRA states, and their byte-exact serialization.

A LoRA module with factors ``A [r, in]`` and ``B [out, r]`` adds ``ΔW = s · B A`` to its frozen
weight, with ``s = alpha / r``. Two ways to combine the adapters of S organizations or shards:

* :func:`average_states` (FedAvg) averages the factors. This is what federated LoRA trains with,
  but ``Σ w B_s · Σ w A_s ≠ Σ w B_s A_s``: the resulting ΔW is *not* the average of the ΔWs.
* :func:`combine_exact` concatenates the factors (PEFT's ``"cat"`` combination): with rank ``S·r``
  and ``alpha`` scaled to ``S·alpha`` the scaling stays ``alpha / r`` and
  ``B_cat A_cat = Σ_s w_s B_s A_s`` holds exactly, so removing a shard removes exactly its ΔW.

:func:`state_to_bytes` is the one serialization used for hashing, storing and sending states.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from fedunlearn.errors import ConfigError, ModelError

__all__ = [
    "average_states",
    "combine_exact",
    "delta_weights",
    "lora_modules",
    "state_from_bytes",
    "state_sha256",
    "state_to_bytes",
]

_A_SUFFIX = ".lora_A.weight"
_B_SUFFIX = ".lora_B.weight"


def lora_modules(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Pair up the factors of each adapted module.

    Parameters
    ----------
    state : mapping of str to torch.Tensor
        A canonical LoRA state (see :func:`~fedunlearn.models.get_lora_state`).

    Returns
    -------
    dict of str to (Tensor, Tensor)
        Module prefix (the key without ``.lora_A.weight``) -> ``(A [r, in], B [out, r])``, sorted.

    Raises
    ------
    ModelError
        If a key is not a LoRA factor, a factor lacks its partner, or the ranks disagree.
    """
    prefixes: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith(_A_SUFFIX):
            prefixes.setdefault(key[: -len(_A_SUFFIX)], {})["A"] = value
        elif key.endswith(_B_SUFFIX):
            prefixes.setdefault(key[: -len(_B_SUFFIX)], {})["B"] = value
        else:
            raise ModelError(
                f"state key {key!r} is not a LoRA factor; expected keys ending in {_A_SUFFIX!r} or "
                f"{_B_SUFFIX!r} as produced by get_lora_state()"
            )
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for prefix in sorted(prefixes):
        pair = prefixes[prefix]
        if "A" not in pair or "B" not in pair:
            lacking = _A_SUFFIX if "A" not in pair else _B_SUFFIX
            raise ModelError(f"LoRA state has no {prefix + lacking!r} to pair with its partner")
        a, b = pair["A"], pair["B"]  # [r, in], [out, r]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ModelError(
                f"LoRA factors of {prefix!r} do not compose: A has shape {list(a.shape)}, B has "
                f"shape {list(b.shape)}; expected A [r, in] and B [out, r] with the same r"
            )
        modules[prefix] = (a, b)
    if not modules:
        raise ModelError("the LoRA state is empty; expected the output of get_lora_state()")
    return modules


def delta_weights(state: Mapping[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """The weight update each adapted module adds to its frozen weight.

    Parameters
    ----------
    state : mapping of str to torch.Tensor
    scaling : float
        ``alpha / r`` of the state (:attr:`LoraSpec.scaling`; unchanged by :func:`combine_exact`).

    Returns
    -------
    dict of str to torch.Tensor
        Module prefix -> ``scaling · B @ A`` of shape ``[out, in]``, at least ``float32``.
    """
    _check_finite(scaling, "scaling")
    deltas = {}
    for prefix, (a, b) in lora_modules(state).items():
        dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
        deltas[prefix] = scaling * (b.to(dtype) @ a.to(dtype))  # [out, r] @ [r, in] -> [out, in]
    return deltas


def average_states(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Weighted average of LoRA states, factor by factor (FedAvg).

    Parameters
    ----------
    states : sequence of mappings
        States with identical keys and shapes.
    weights : sequence of float
        Non-negative, finite, with a positive sum (e.g. example counts); normalized here.

    Returns
    -------
    dict of str to torch.Tensor
        ``Σ_s (w_s / Σ w) · state_s[key]`` for every key, sorted, ``float32`` on the CPU.
    """
    _check_same_layout(states, weights)
    values = [float(w) for w in weights]
    for w in values:
        if w < 0:
            raise ConfigError(
                f"FedAvg weights {values} contain {w}; expected non-negative weights such as "
                "example counts"
            )
    total = math.fsum(values)
    if total <= 0:
        raise ConfigError(f"FedAvg weights {values} sum to {total}; expected a positive sum")
    averaged = {}
    for key in sorted(states[0]):
        acc = torch.zeros_like(states[0][key], dtype=torch.float64, device="cpu")
        for state, w in zip(states, values):
            acc += (w / total) * state[key].detach().to("cpu", torch.float64)
        averaged[key] = acc.to(torch.float32).contiguous()
    return averaged


def combine_exact(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Concatenate LoRA factors so the combined ΔW is exactly ``Σ_s w_s ΔW_s``.

    For every module, ``A_cat = [A_1; …; A_S]`` (rows, ``[S·r, in]``) and
    ``B_cat = [w_1 B_1, …, w_S B_S]`` (columns, ``[out, S·r]``), so
    ``B_cat A_cat = Σ_s w_s B_s A_s``. Loaded as an adapter of rank ``S·r`` with alpha ``S·alpha``
    (scaling unchanged), its ΔW is ``Σ_s w_s ΔW_s`` up to float rounding.

    Parameters
    ----------
    states : sequence of mappings
        Canonical states with identical keys and shapes (same LoraSpec and base).
    weights : sequence of float
        Used as given, not renormalized: pass normalized weights for an average.

    Returns
    -------
    dict of str to torch.Tensor
        Same keys as the inputs, ``float32`` CPU tensors of rank ``S·r``, sorted.
    """
    _check_same_layout(states, weights)
    values = [float(w) for w in weights]
    per_state = [lora_modules(state) for state in states]
    combined: dict[str, torch.Tensor] = {}
    for prefix in per_state[0]:
        a_parts = [modules[prefix][0].detach().to("cpu", torch.float32) for modules in per_state]
        b_parts = [
            w * modules[prefix][1].detach().to("cpu", torch.float32)
            for modules, w in zip(per_state, values)
        ]
        combined[prefix + _A_SUFFIX] = torch.cat(a_parts, dim=0).contiguous()  # [S*r, in]
        combined[prefix + _B_SUFFIX] = torch.cat(b_parts, dim=1).contiguous()  # [out, S*r]
    return dict(sorted(combined.items()))


def state_to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """Deterministic safetensors serialization: sorted keys, CPU contiguous tensors, no metadata.

    Equal states (same keys, dtypes, shapes and values) always give identical bytes.
    """
    tensors = {}
    for key in sorted(state):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"state[{key!r}] is a {type(value).__name__}; expected a tensor")
        # A copy: safetensors refuses tensors that share storage (views of one parameter).
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
    return safetensors_save(tensors, metadata=None)


def state_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Inverse of :func:`state_to_bytes`; keys sorted.

    Raises
    ------
    ModelError
        If `data` is not a safetensors payload.
    """
    try:
        loaded = safetensors_load(bytes(data))
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise ModelError(
            f"cannot decode {len(data)} bytes as a safetensors LoRA state ({exc}); expected the "
            "output of state_to_bytes()"
        ) from exc
    return dict(sorted(loaded.items()))


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 of :func:`state_to_bytes` of `state` (content address of an adapter state)."""
    return hashlib.sha256(state_to_bytes(state)).hexdigest()


def _check_finite(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} is {value!r}; expected a finite number")


def _check_same_layout(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> None:
    if len(states) == 0:
        raise ConfigError("no states to combine; expected at least one LoRA state")
    if len(weights) != len(states):
        raise ConfigError(
            f"got {len(states)} states but {len(weights)} weights; expected one weight per state"
        )
    for w in weights:
        _check_finite(w, "weight")
    reference = {key: tuple(value.shape) for key, value in states[0].items()}
    for index, state in enumerate(states[1:], start=1):
        layout = {key: tuple(value.shape) for key, value in state.items()}
        if layout != reference:
            differing = sorted(
                key for key in set(reference) | set(layout) if reference.get(key) != layout.get(key)
            )
            raise ModelError(
                f"state {index} does not match state 0 in keys or shapes at {differing[:5]}; all "
                "states must come from the same base model and LoraSpec"
            )
