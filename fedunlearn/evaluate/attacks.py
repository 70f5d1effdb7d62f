"""Robustness attacks on an erased model: relearning and weight quantization.

* **Relearning** (Hu et al. 2024, "Jogging the memory of unlearned LLMs through targeted relearning
  attacks"; Lynch et al. 2024): an attacker holding a small part of the subject's data fine-tunes
  the erased model on it for a few steps. Knowledge that was only hidden, not removed, comes back on
  the *rest* of the subject's data. The same attack on the retrained model is the yardstick: what a
  model that never saw the subject learns from that small part alone.
* **Quantization** (Zhang et al. 2024, "Catastrophic failure of LLM unlearning via quantization"):
  rounding the merged weights to 8 or 4 bits can undo small weight changes made by approximate
  unlearning, restoring the pre-erasure behaviour.

Both return new models and leave the given one untouched.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedunlearn.errors import ConfigError, DataError
from fedunlearn.evaluate._common import check_fraction, check_positive_int
from fedunlearn.models import BaseModel, LoraSpec, wrap_lora
from fedunlearn.training.local import encode_texts, sequence_losses

__all__ = ["RelearnSplit", "fake_quantize", "relearn", "relearn_split"]


@dataclass(frozen=True)
class RelearnSplit:
    """The subject's records split between the attacker and the audit.

    Attributes
    ----------
    attack : tuple of str
        Texts the attacker fine-tunes on (a ``fraction`` of the subject's non-canary records).
    audit : tuple of str
        The remaining non-canary training records, on which MIA recovery is measured.
    """

    attack: tuple[str, ...]
    audit: tuple[str, ...]


def relearn_split(texts: Sequence[str], fraction: float, *, seed: int) -> RelearnSplit:
    """Draw ``fraction`` of ``texts`` (at least one) for the attacker; the rest is audited.

    Raises
    ------
    ConfigError
        If ``fraction`` is not in (0, 1).
    DataError
        If fewer than two texts are given.
    """
    check_fraction("relearn fraction", fraction, hint="the issue suggests 0.1 to 0.2")
    if len(texts) < 2:
        raise DataError(f"{len(texts)} subject records given; a relearning attack needs at least 2 "
                        "(some to relearn on, the rest to audit)")
    order = np.random.default_rng(seed).permutation(len(texts))
    k = min(max(1, int(round(fraction * len(texts)))), len(texts) - 1)
    return RelearnSplit(tuple(texts[i] for i in sorted(order[:k])), tuple(texts[i] for i in sorted(order[k:])))


def relearn(model: nn.Module, base: BaseModel, texts: Sequence[str], *, steps: int, lr: float,
            batch_size: int, spec: LoraSpec, max_length: int, seed: int) -> nn.Module:
    """Fine-tune a fresh LoRA adapter on top of ``model`` on ``texts`` for ``steps`` AdamW steps.

    Parameters
    ----------
    model : torch.nn.Module
        The (merged) model under attack; not modified.
    base : BaseModel
        The run's base (its tokenizer and device are used).
    texts : Sequence[str]
        The attacker's records (at least one).
    steps : int
        Optimizer steps (batches cycle over ``texts`` in a seeded order).
    lr, batch_size
        AdamW learning rate; records per step.
    spec : LoraSpec
        Adapter shape (the run's own, as an attacker with the served adapter would use).
    max_length : int
    seed : int
        Seeds the adapter's initialization and the batch order.

    Returns
    -------
    torch.nn.Module
        The attacked model (a peft model over a copy of ``model``), in eval mode.
    """
    check_positive_int("relearn steps", steps, hint="use e.g. 20")
    check_positive_int("relearn batch size", batch_size, hint="use e.g. 8")
    if not texts:
        raise DataError("no records to relearn on; expected at least one of the subject's records")
    if not lr > 0:
        raise ConfigError(f"relearn lr = {lr!r} is invalid; expected a positive learning rate, e.g. 0.01")
    data = encode_texts(base.tokenizer, list(texts), max_length=max_length)
    peft_model = wrap_lora(dataclasses.replace(base, model=copy.deepcopy(model)), spec, seed=seed, inplace=True)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    peft_model.train()
    order = torch.randperm(len(data), generator=gen)
    cursor = 0
    for _ in range(steps):
        if cursor >= len(order):
            order, cursor = torch.randperm(len(data), generator=gen), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        mask = data.attention_mask[idx]
        width = int(mask.sum(dim=1).max())
        loss = sequence_losses(peft_model, data.input_ids[idx, :width], mask[:, :width]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    peft_model.eval()
    return peft_model


def fake_quantize(model: nn.Module, bits: int) -> nn.Module:
    """A copy of ``model`` whose 2-D weights are rounded to ``bits``-bit integers and back.

    Symmetric round-to-nearest with one scale per output row (``max |w| / (2^(bits-1) − 1)``), the
    scheme of int8/int4 weight-only inference kernels; embeddings and norms (1-D) stay as they are.

    Raises
    ------
    ConfigError
        If ``bits`` is not between 2 and 16.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ConfigError(f"bits = {bits!r} is invalid; expected an integer from 2 to 16, e.g. 8 or 4")
    levels = 2 ** (bits - 1) - 1
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if p.dim() != 2 or "embed" in name:
                continue
            scale = p.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / levels  # [out, 1]
            p.copy_(torch.round(p / scale).clamp(-levels, levels) * scale)
    out.eval()
    return out
