"""Deterministic bytes and identity hashes for tensor states (LoRA factors).

A *state* is a ``dict[str, torch.Tensor]``. Its canonical serialization is the safetensors
encoding of the state with its keys sorted and no metadata, so two states with equal names, dtypes,
shapes and values have equal bytes whatever the insertion order of the dict or the device the
tensors live on. The identity of a state is the SHA-256 (hex) of those bytes; the ledger and the
audit log name adapters and updates by it.

This is the same definition as :func:`fedunlearn.models.delta.state_to_bytes` and
:func:`fedunlearn.models.delta.state_sha256`; it is repeated here so that the ledger does not
depend on the model package.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import safetensors.torch
import torch

from fedunlearn.errors import LedgerError

__all__ = ["state_from_bytes", "state_sha256", "state_to_bytes"]


def _canonical(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sorted, detached, contiguous CPU copies of ``state`` (validated)."""
    if not isinstance(state, Mapping):
        raise LedgerError(
            f"a tensor state must be a mapping of names to tensors, got {type(state).__name__}; "
            "pass e.g. a LoRA adapter state_dict"
        )
    canonical: dict[str, torch.Tensor] = {}
    for name in sorted(state, key=lambda k: (not isinstance(k, str), str(k))):
        tensor = state[name]
        if not isinstance(name, str):
            raise LedgerError(
                f"tensor state key {name!r} is a {type(name).__name__}; expected str names "
                "such as 'base_model.model.layers.0.q_proj.lora_A.weight'"
            )
        if not isinstance(tensor, torch.Tensor):
            raise LedgerError(
                f"tensor state entry {name!r} is a {type(tensor).__name__}; expected a "
                "torch.Tensor (convert numpy arrays with torch.from_numpy)"
            )
        # A copy: safetensors refuses tensors that share storage (views of one parameter).
        canonical[name] = tensor.detach().to("cpu", copy=True).contiguous()
    return canonical


def state_to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialize a tensor state to canonical safetensors bytes.

    Parameters
    ----------
    state : Mapping[str, torch.Tensor]
        Tensor names to tensors, on any device; insertion order does not matter.

    Returns
    -------
    bytes
        ``safetensors.torch.save(dict(sorted(state.items())))`` with no metadata, computed on
        detached CPU copies.

    Raises
    ------
    LedgerError
        If a key is not a string or a value is not a tensor.
    """
    return safetensors.torch.save(_canonical(state))


def state_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Parse bytes written by :func:`state_to_bytes` back into a state (CPU tensors, sorted keys).

    Parameters
    ----------
    data : bytes
        Safetensors bytes.

    Returns
    -------
    dict[str, torch.Tensor]
        The state, keys in sorted order.

    Raises
    ------
    LedgerError
        If ``data`` is not a valid safetensors buffer.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise LedgerError(
            f"tensor state bytes must be bytes, got {type(data).__name__}; pass the output of "
            "state_to_bytes"
        )
    try:
        loaded = safetensors.torch.load(bytes(data))
    except Exception as exc:  # safetensors raises its own SafetensorError / ValueError types
        raise LedgerError(
            f"{len(data)} bytes are not a valid safetensors tensor state ({exc}); expected the "
            "output of state_to_bytes: the blob may be truncated or not a tensor state"
        ) from exc
    return dict(sorted(loaded.items()))


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Identity hash of a tensor state: SHA-256 hex of :func:`state_to_bytes`.

    Parameters
    ----------
    state : Mapping[str, torch.Tensor]
        Tensor names to tensors.

    Returns
    -------
    str
        64 lowercase hex characters.
    """
    return hashlib.sha256(state_to_bytes(state)).hexdigest()
