"""Helpers shared by the evaluation metrics: input checks, batching and one forward pass.

Every metric tokenizes records the way training does (:func:`fedunlearn.training.local.encode_texts`:
``<bos> text <eos>``, truncated to ``max_length``) so that what is scored is exactly what was
trained on. Batches are formed from records of similar length (sorted by length) and trimmed to
their longest member, which keeps padding, and so wasted compute, small.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedunlearn.errors import ConfigError, DataError
from fedunlearn.training.local import EncodedData

__all__ = [
    "Batch",
    "as_scores",
    "cache_argument",
    "check_fraction",
    "check_positive_int",
    "encode_batched",
    "forward_logits",
    "iter_batches",
    "model_device",
    "returned_cache",
]


def check_positive_int(name: str, value: object, *, hint: str) -> int:
    """Return ``value`` if it is an int >= 1, else raise a :class:`ConfigError` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} = {value!r} is invalid; expected an integer >= 1; {hint}")
    return value


def check_fraction(name: str, value: object, *, hint: str, closed: bool = False) -> float:
    """Return ``value`` as a float in (0, 1) (or (0, 1] when ``closed``), else raise."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and 0.0 < value < 1.0 + (1e-12 if closed else 0.0)
    )
    if not ok:
        interval = "(0, 1]" if closed else "(0, 1)"
        raise ConfigError(f"{name} = {value!r} is invalid; expected a number in {interval}; {hint}")
    return float(value)


def as_scores(name: str, values: object) -> np.ndarray:
    """Turn a sequence of scores into a finite 1-D float64 array, or raise naming ``name``."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ConfigError(
            f"{name} has shape {array.shape}; expected a 1-D sequence of scores (one per record)"
        )
    if array.size == 0:
        raise DataError(f"{name} is empty; expected at least one score: pass some records")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise DataError(
            f"{name}[{int(bad[0])}] = {array[bad[0]]!r} is not finite; expected finite scores: "
            "drop records that could not be scored (e.g. empty texts)"
        )
    return array


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free module)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


@dataclass(frozen=True)
class Batch:
    """Some records of an :class:`EncodedData`, trimmed to their longest one, on the model's device."""

    index: np.ndarray  # [b] positions of these records in the original order
    input_ids: torch.Tensor  # [b, t] long
    attention_mask: torch.Tensor  # [b, t] long, 1 on real tokens


def iter_batches(data: EncodedData, batch_size: int, device: torch.device) -> Iterator[Batch]:
    """Yield batches of records of similar length (sorted by length, longest first)."""
    check_positive_int("batch_size", batch_size, hint="use e.g. 32")
    lengths = data.attention_mask.sum(dim=1).numpy()  # [N]
    order = np.argsort(-lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        width = int(lengths[index].max())
        rows = torch.as_tensor(index)
        yield Batch(
            index=index,
            input_ids=data.input_ids[rows, :width].to(device),
            attention_mask=data.attention_mask[rows, :width].to(device),
        )


def forward_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token logits in float32: ``[B, T, V]``, position ``t`` predicting token ``t + 1``.

    Position ids are passed explicitly (as in :func:`fedunlearn.training.local.sequence_losses`):
    GPT-2-style models otherwise derive them differently from training.
    """
    B, T = input_ids.shape
    position_ids = torch.arange(T, device=input_ids.device).unsqueeze(0).expand(B, T)  # [B, T]
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return out.logits.float()  # [B, T, V]


def encode_batched(tokenizer: object, texts: Sequence[str], *, max_length: int) -> list[list[int]]:
    """Token ids of ``<bos> text <eos>`` per text, like ``encode_texts`` but unpadded."""
    bos = tokenizer.bos_token_id  # type: ignore[attr-defined]
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    rows = []
    for row in ids:
        row = ([bos] if bos is not None else []) + list(row)
        rows.append(row[: max_length - 1] + ([eos] if eos is not None else []))
    return rows


def cache_argument(model: nn.Module) -> str:
    """Keyword the model's forward takes its KV cache under (transformers 5.x renamed it)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    forward = getattr(inner, "forward", None)
    try:
        names = inspect.signature(forward).parameters if forward is not None else {}
    except (TypeError, ValueError):
        names = {}
    return "cache" if "cache" in names else "past_key_values"


def returned_cache(out: object) -> object:
    """The KV cache a forward pass with ``use_cache=True`` returned (None if it returned none)."""
    cache = getattr(out, "cache", None)  # transformers >= 5.2x; older 5.x: past_key_values
    return cache if cache is not None else getattr(out, "past_key_values", None)
