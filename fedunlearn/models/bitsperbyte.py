"""Bits per byte: how well a language model, a unigram model or a uniform guess predicts text.

Losses in nats per token depend on the tokenizer; bits per byte do not: the total negative
log-likelihood of a text (in bits) divided by its length in UTF-8 bytes. Three predictors are
compared on the same texts and the same tokenization:

* **uniform**: every token of the vocabulary equally likely, ``log2(V)`` bits per token;
* **unigram**: token frequencies of a reference corpus with add-one (Laplace) smoothing, no
  context at all;
* **model**: a causal LM, each token predicted from the ones before it (the ``<|bos|>`` the
  tokenizer prepends is context, never predicted).

A model that does not beat the unigram baseline has learned nothing beyond word frequencies, and
forgetting measured on it is noise (see :mod:`fedunlearn.evaluate.informative`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedunlearn.errors import ConfigError

__all__ = ["BitsPerByte", "UnigramModel", "bits_per_byte"]


@dataclass(frozen=True)
class BitsPerByte:
    """Bits per byte of the three predictors on one set of texts.

    Attributes
    ----------
    uniform, unigram, model : float
        Bits per UTF-8 byte (lower is better); `model` is NaN when no model was given.
    texts, tokens, bytes : int
        What was measured: texts, predicted tokens, UTF-8 bytes.
    model_nats_per_token : float
        The model's mean loss per predicted token, for comparison with training logs.
    """

    uniform: float
    unigram: float
    model: float
    texts: int
    tokens: int
    bytes: int
    model_nats_per_token: float

    def as_dict(self) -> dict[str, float | int]:
        return {"uniform": self.uniform, "unigram": self.unigram, "model": self.model,
                "texts": self.texts, "tokens": self.tokens, "bytes": self.bytes,
                "model_nats_per_token": self.model_nats_per_token}


class UnigramModel:
    """Token frequencies of a corpus with add-one smoothing over the whole vocabulary.

    Parameters
    ----------
    tokenizer
        The tokenizer whose ids are counted; special tokens are not counted.
    corpus : sequence of str
        Reference texts (e.g. the pre-training corpus).
    """

    def __init__(self, tokenizer, corpus: Sequence[str]) -> None:
        self.vocab_size = len(tokenizer)
        counts: Counter[int] = Counter()
        for ids in _encode(tokenizer, corpus):
            counts.update(ids)
        self.total = sum(counts.values())
        self._counts = counts

    def bits(self, token: int) -> float:
        """``-log2 p(token)``."""
        return -math.log2((self._counts.get(token, 0) + 1) / (self.total + self.vocab_size))


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    special = set(tokenizer.all_special_ids)
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [[t for t in ids if t not in special] for ids in encoded]


@torch.no_grad()
def _model_nats(model, tokenizer, texts: Sequence[str], batch_size: int, max_length: int) -> tuple[float, int]:
    """Total next-token NLL (nats) of `texts` and the number of predicted tokens."""
    bos = tokenizer.bos_token_id
    device = next(model.parameters()).device
    total, count = 0.0, 0
    encoded = _encode(tokenizer, texts)
    # Texts longer than the context are scored in windows of max_length - 1 predicted tokens.
    pieces: list[list[int]] = []
    for ids in encoded:
        for start in range(0, len(ids), max_length - 1):
            pieces.append([bos, *ids[start : start + max_length - 1]])
    pieces.sort(key=len)  # similar lengths together: less padding
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(pieces), batch_size):
            chunk = pieces[start : start + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, piece in enumerate(chunk):
                ids[row, : len(piece)] = torch.tensor(piece)
                mask[row, : len(piece)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()  # [B, T, V]
            logp = torch.log_softmax(logits[:, :-1], dim=-1)  # [B, T-1, V]
            target = ids[:, 1:]  # [B, T-1]
            nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
            keep = mask[:, 1:].bool()
            total += float(nll[keep].sum())
            count += int(keep.sum())
    finally:
        model.train(was_training)
    return total, count


def bits_per_byte(
    texts: Sequence[str],
    tokenizer,
    *,
    unigram: UnigramModel,
    model=None,
    batch_size: int = 16,
    max_length: int | None = None,
) -> BitsPerByte:
    """Bits per byte of a uniform guess, `unigram` and (optionally) `model` on `texts`.

    Parameters
    ----------
    texts : sequence of str
        Non-empty texts never used to fit `unigram` or train `model` (else the figure flatters).
    tokenizer
        The model's tokenizer (``bos_token_id`` and ``pad_token_id`` set).
    unigram : UnigramModel
        Fitted with the same tokenizer.
    model : causal LM, optional
        Scored in eval mode without gradients; its training mode is restored.
    batch_size : int
    max_length : int, optional
        Context window; defaults to the tokenizer's ``model_max_length`` (at most 1024).

    Returns
    -------
    BitsPerByte
    """
    texts = [t for t in texts if t]
    if not texts:
        raise ConfigError("bits_per_byte needs at least one non-empty text; got none")
    if max_length is None:
        max_length = min(int(getattr(tokenizer, "model_max_length", 1024) or 1024), 1024)
    if max_length < 2:
        raise ConfigError(f"max_length is {max_length}; expected >= 2 tokens")
    encoded = _encode(tokenizer, texts)
    tokens = sum(len(ids) for ids in encoded)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    uniform_bits = tokens * math.log2(len(tokenizer))
    unigram_bits = sum(unigram.bits(t) for ids in encoded for t in ids)
    model_bpb = model_npt = float("nan")
    if model is not None:
        nats, predicted = _model_nats(model, tokenizer, texts, batch_size, max_length)
        model_bpb = nats / math.log(2) / nbytes
        model_npt = nats / max(predicted, 1)
    return BitsPerByte(
        uniform=uniform_bits / nbytes,
        unigram=unigram_bits / nbytes,
        model=model_bpb,
        texts=len(texts),
        tokens=tokens,
        bytes=nbytes,
        model_nats_per_token=model_npt,
    )
