"""One organization's local work: tokenize records, fit LoRA for some epochs, evaluate.

Losses are computed per sequence (mean over that sequence's target tokens) rather than with
Hugging Face's ``labels=`` loss, which averages over every token of the batch: per-sequence
losses are what membership-inference scores and DP-SGD's per-sample clipping need.

Determinism: with the same adapter state, data, settings and ``seed``, :func:`fit_local` returns
the same tensors on CPU (a fixed ``torch.Generator`` orders the batches; no dropout randomness
escapes the seeded global generator). This is what makes SISA erasure exactly equal to retraining.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedunlearn.errors import ConfigError, DataError
from fedunlearn.models.device import SMALL_MODEL_PARAMETERS, set_cpu_threads

__all__ = [
    "EncodedData",
    "EvalResult",
    "FitResult",
    "encode_texts",
    "evaluate_local",
    "fit_local",
    "sequence_losses",
]

@dataclass(frozen=True)
class EncodedData:
    """Token ids of some records, right-padded to the longest one (at most ``max_length``)."""

    input_ids: torch.Tensor  # [N, T] long
    attention_mask: torch.Tensor  # [N, T] long, 1 on real tokens

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


@dataclass(frozen=True)
class FitResult:
    """What one local fit did."""

    num_examples: int
    steps: int
    tokens: int  # tokens processed (all epochs)
    seconds: float
    loss_first_epoch: float  # mean per-sequence loss during the first epoch
    loss_last_epoch: float  # mean per-sequence loss during the last epoch


@dataclass(frozen=True)
class EvalResult:
    """Mean token loss (nats) and perplexity on some records."""

    num_examples: int
    tokens: int
    loss: float
    perplexity: float


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, max_length: int) -> EncodedData:
    """Tokenize ``texts`` as ``<bos> text <eos>`` sequences, truncated to ``max_length`` tokens."""
    if max_length < 3:
        raise ConfigError(f"max_length = {max_length} is too small: expected at least 3 tokens")
    if not texts:
        raise DataError("no records to encode: the organization's data is empty")
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = ([bos] if bos is not None else []) + ids
        ids = ids[: max_length - 1] + ([eos] if eos is not None else [])
        rows.append(ids)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return EncodedData(input_ids=input_ids, attention_mask=mask)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def sequence_losses(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of each sequence, in nats: shape [B]."""
    B, T = input_ids.shape
    position_ids = torch.arange(T, device=input_ids.device).unsqueeze(0).expand(B, T)  # [B, T]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    # Shift the targets, not the logits: slicing [B, T, V] logits would copy them (HF does the same).
    targets = torch.full_like(input_ids, -100)  # [B, T]; position t predicts token t+1
    targets[:, :-1] = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    V = logits.shape[-1]
    tok = nn.functional.cross_entropy(
        logits.reshape(B * T, V).float(), targets.reshape(B * T), reduction="none", ignore_index=-100
    ).view(B, T)  # [B, T], 0 where ignored
    counts = (targets != -100).sum(dim=1).clamp_min(1).to(tok.dtype)  # [B]
    return tok.sum(dim=1) / counts  # [B]


def fit_local(
    model: nn.Module,
    data: EncodedData,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
) -> FitResult:
    """Train the trainable (LoRA) parameters of ``model`` in place with AdamW.

    A fresh optimizer is made for each call (each federated round), so the result depends only on
    the model's current weights, the data and ``seed``.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(f"epochs={epochs}, batch_size={batch_size}, lr={lr}: expected epochs >= 1, batch_size >= 1, lr > 0")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters: wrap it with LoRA first (fedunlearn.models.wrap_lora)")
    device = _device_of(model)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout inside LoRA layers, if any
    model.train()
    n = len(data)
    steps = tokens = 0
    epoch_losses: list[float] = []
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            mask = data.attention_mask[idx]
            width = int(mask.sum(dim=1).max())  # trim padding columns of this batch
            ids = data.input_ids[idx, :width].to(device)
            mask = mask[:, :width].to(device)
            losses = sequence_losses(model, ids, mask)  # [b]
            loss = losses.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(losses.detach().sum())
            steps += 1
            tokens += int(mask.sum())
        epoch_losses.append(total / n)
    model.eval()
    return FitResult(
        num_examples=n,
        steps=steps,
        tokens=tokens,
        seconds=time.perf_counter() - start,
        loss_first_epoch=epoch_losses[0],
        loss_last_epoch=epoch_losses[-1],
    )


@torch.no_grad()
def evaluate_local(model: nn.Module, data: EncodedData, *, batch_size: int = 64) -> EvalResult:
    """Token-weighted mean loss and perplexity of ``model`` on ``data``."""
    device = _device_of(model)
    was_training = model.training
    model.eval()
    total_nats = 0.0
    total_tokens = 0
    for i in range(0, len(data), batch_size):
        mask = data.attention_mask[i : i + batch_size]
        width = int(mask.sum(dim=1).max())
        ids = data.input_ids[i : i + batch_size, :width].to(device)
        mask = mask[:, :width].to(device)
        per_seq = sequence_losses(model, ids, mask)  # [b] mean over targets
        targets = (mask[:, 1:].sum(dim=1)).clamp_min(1)  # [b]
        total_nats += float((per_seq * targets).sum())
        total_tokens += int(targets.sum())
    if was_training:
        model.train()
    loss = total_nats / max(total_tokens, 1)
    return EvalResult(
        num_examples=len(data),
        tokens=total_tokens,
        loss=loss,
        perplexity=math.exp(min(loss, 50.0)),
    )
