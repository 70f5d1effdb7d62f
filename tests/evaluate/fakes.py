"""Fake causal LMs with hand-set next-token distributions, for metrics computed by hand."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from transformers import DynamicCache


class FixedLogits(nn.Module):
    """Returns the same logits ``[V]`` at every position of every sequence."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits, dtype=torch.float32), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, **kwargs: object) -> SimpleNamespace:
        B, T = input_ids.shape
        return SimpleNamespace(logits=self.logits.expand(B, T, -1).clone())


class Bigram(nn.Module):
    """Logits depend on the current token only: ``table[input_ids]``; supports a (no-op) KV cache."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.float(), requires_grad=False)  # [V, V]

    def forward(self, input_ids: torch.Tensor, **kwargs: object) -> SimpleNamespace:
        cache = kwargs.get("cache") or kwargs.get("past_key_values") or DynamicCache()
        return SimpleNamespace(logits=self.table[input_ids], past_key_values=cache)


class CharTokenizer:
    """Letters ``a``, ``b``, ``c``, ``d`` are tokens 0-3; no bos/eos, pad is 0."""

    bos_token_id = None
    eos_token_id = None
    pad_token_id = 0

    def __call__(self, texts, add_special_tokens: bool = False):  # noqa: ANN001, ANN204
        if isinstance(texts, str):
            return {"input_ids": [ord(c) - ord("a") for c in texts]}
        return {"input_ids": [[ord(c) - ord("a") for c in t] for t in texts]}
