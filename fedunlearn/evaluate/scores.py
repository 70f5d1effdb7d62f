"""Per-sequence membership scores: loss, zlib ratio, Min-K% and Min-K%++.

A membership-inference attack scores each record with the model under audit; members (training
records) should score differently from non-members (holdout records of the same distribution).
Four reference-free scores from the literature are computed in one forward pass per batch:

* **loss** — mean next-token negative log-likelihood in nats (Yeom et al. 2018). Lower for members.
* **zlib ratio** — loss divided by the zlib-compressed length of the text in bytes (Carlini et al.
  2021, "Extracting Training Data from Large Language Models"): text that is merely simple
  (compresses well) is discounted. Lower for members.
* **Min-K%** — mean log-probability of the ``k`` fraction of tokens with the lowest log-probability
  (Shi et al. 2024, "Detecting Pretraining Data from Large Language Models"). Members have few
  very unlikely tokens: higher for members.
* **Min-K%++** — as Min-K%, on each token's log-probability standardized by the next-token
  distribution: ``(log p(x_t) - μ_t) / σ_t`` with ``μ_t = E_{z~p(·|x_<t)}[log p(z)]`` and
  ``σ_t² = E[(log p(z))²] - μ_t²`` (Zhang et al. 2024, "Min-K%++: Improved Baseline for Detecting
  Pre-Training Data from Large Language Models"). Training drives inputs towards local
  maxima of the likelihood, i.e. tokens that are likely *relative to the alternatives*. Higher for
  members.

:meth:`SequenceScores.membership` orients every score so that higher means "more likely a member",
which is what :mod:`fedunlearn.evaluate.mia` expects.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedunlearn.errors import UnknownNameError
from fedunlearn.evaluate._common import (
    check_fraction,
    check_positive_int,
    forward_logits,
    iter_batches,
    model_device,
)
from fedunlearn.training.local import encode_texts

__all__ = [
    "SCORE_NAMES",
    "SequenceScores",
    "TokenStatistics",
    "score_texts",
    "token_statistics",
    "zlib_entropy",
]

#: Names of the membership scores, as accepted by :meth:`SequenceScores.membership`.
SCORE_NAMES: tuple[str, ...] = ("loss", "min_k", "min_k_plus_plus", "zlib")

# σ_t is 0 only for a one-hot next-token distribution; the floor keeps the ratio finite there.
_SIGMA_FLOOR = 1e-6


@dataclass(frozen=True)
class TokenStatistics:
    """Per-token quantities of one batch, from which every sequence score is reduced.

    Attributes
    ----------
    log_probs : torch.Tensor
        ``[B, T-1]`` log-probability of each target token ``x_{t+1}`` given ``x_{<=t}``.
    standardized : torch.Tensor
        ``[B, T-1]`` Min-K%++ token score ``(log p(x_{t+1}) - μ_t) / σ_t``.
    mask : torch.Tensor
        ``[B, T-1]`` bool, true on real (non-padding) targets.
    """

    log_probs: torch.Tensor
    standardized: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class SequenceScores:
    """Membership scores of some records, in the order they were given.

    Attributes
    ----------
    loss : np.ndarray
        ``[N]`` mean next-token negative log-likelihood, nats.
    zlib : np.ndarray
        ``[N]`` ``loss / zlib_entropy(text)`` (Carlini et al. 2021).
    min_k : np.ndarray
        ``[N]`` Min-K% score: mean log-probability of the lowest ``k`` fraction of tokens.
    min_k_plus_plus : np.ndarray
        ``[N]`` Min-K%++ score: mean of the lowest ``k`` fraction of standardized token scores.
    num_tokens : np.ndarray
        ``[N]`` number of scored target tokens per record.
    k : float
        Fraction of tokens used by Min-K% and Min-K%++.
    """

    loss: np.ndarray
    zlib: np.ndarray
    min_k: np.ndarray
    min_k_plus_plus: np.ndarray
    num_tokens: np.ndarray
    k: float

    def __len__(self) -> int:
        return int(self.loss.shape[0])

    def membership(self, name: str) -> np.ndarray:
        """Score ``name`` oriented so that higher means "more likely a member".

        Parameters
        ----------
        name : {"loss", "min_k", "min_k_plus_plus", "zlib"}

        Returns
        -------
        np.ndarray
            ``-loss`` and ``-zlib`` (members have lower loss); ``min_k`` and
            ``min_k_plus_plus`` as they are.

        Raises
        ------
        UnknownNameError
            If ``name`` is not one of :data:`SCORE_NAMES`.
        """
        if name == "loss":
            return -self.loss
        if name == "zlib":
            return -self.zlib
        if name == "min_k":
            return self.min_k.copy()
        if name == "min_k_plus_plus":
            return self.min_k_plus_plus.copy()
        raise UnknownNameError("membership score", name, SCORE_NAMES)


def zlib_entropy(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text (Carlini et al. 2021's zlib entropy)."""
    return len(zlib.compress(text.encode("utf-8")))


def token_statistics(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TokenStatistics:
    """Token log-probabilities and Min-K%++ standardized scores of one batch.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM whose output has ``.logits`` of shape ``[B, T, V]``.
    input_ids, attention_mask : torch.Tensor
        ``[B, T]``, right-padded.

    Returns
    -------
    TokenStatistics
    """
    logits = forward_logits(model, input_ids, attention_mask)[:, :-1, :]  # [B, T-1, V]
    logp = torch.log_softmax(logits, dim=-1)  # [B, T-1, V]
    p = logp.exp()
    targets = input_ids[:, 1:]  # [B, T-1]
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    mu = (p * logp).sum(-1)  # [B, T-1] E_z[log p(z)] = -entropy
    second = (p * logp.square()).sum(-1)  # [B, T-1] E_z[(log p(z))²]
    sigma = (second - mu.square()).clamp_min(0.0).sqrt().clamp_min(_SIGMA_FLOOR)  # [B, T-1]
    return TokenStatistics(
        log_probs=token_logp,
        standardized=(token_logp - mu) / sigma,
        mask=attention_mask[:, 1:].bool(),
    )


def _lowest_k_mean(values: torch.Tensor, mask: torch.Tensor, k: float) -> torch.Tensor:
    """Mean of the ``max(1, floor(k·n))`` smallest valid entries of each row: ``[B]``."""
    n = mask.sum(dim=1)  # [B]
    count = torch.clamp((n.double() * k).floor().long(), min=1)  # [B]
    filled = values.masked_fill(~mask, float("inf"))  # [B, T-1] padding sorts last
    ordered = filled.sort(dim=1).values  # [B, T-1] ascending
    take = torch.arange(ordered.shape[1], device=values.device).unsqueeze(0) < count.unsqueeze(1)
    return torch.where(take, ordered, torch.zeros_like(ordered)).sum(dim=1) / count  # [B]


@torch.no_grad()
def score_texts(
    model: nn.Module,
    tokenizer: object,
    texts: Sequence[str],
    *,
    max_length: int = 64,
    batch_size: int = 32,
    k: float = 0.2,
) -> SequenceScores:
    """Compute every membership score of ``texts`` under ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Causal LM (base, PEFT-wrapped or ``AutoPeftModelForCausalLM``), on CPU or CUDA; put in
        eval mode for the call and restored afterwards.
    tokenizer : PreTrainedTokenizerBase
        The model's tokenizer.
    texts : Sequence[str]
        Records, tokenized as in training (``<bos> text <eos>``, at most ``max_length`` tokens).
    max_length : int, default 64
        Same as the run's ``data.max-length``.
    batch_size : int, default 32
    k : float, default 0.2
        Fraction of lowest-scoring tokens for Min-K% and Min-K%++ (Shi et al. use 0.2).

    Returns
    -------
    SequenceScores
        Scores in the order of ``texts``.

    Raises
    ------
    ConfigError
        If ``k``, ``batch_size`` or ``max_length`` is out of range.
    DataError
        If ``texts`` is empty.
    """
    k = check_fraction("k", k, hint="use e.g. 0.2 (the 20% least likely tokens)", closed=True)
    check_positive_int("batch_size", batch_size, hint="use e.g. 32")
    data = encode_texts(tokenizer, texts, max_length=max_length)  # type: ignore[arg-type]
    n = len(data)
    loss = np.empty(n)
    min_k = np.empty(n)
    min_k_pp = np.empty(n)
    num_tokens = np.empty(n, dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        for batch in iter_batches(data, batch_size, model_device(model)):
            stats = token_statistics(model, batch.input_ids, batch.attention_mask)
            count = stats.mask.sum(dim=1).clamp_min(1)  # [b]
            nll = -(stats.log_probs * stats.mask).sum(dim=1) / count  # [b]
            loss[batch.index] = nll.double().cpu().numpy()
            min_k[batch.index] = _lowest_k_mean(stats.log_probs, stats.mask, k).double().cpu().numpy()
            min_k_pp[batch.index] = _lowest_k_mean(stats.standardized, stats.mask, k).double().cpu().numpy()
            num_tokens[batch.index] = stats.mask.sum(dim=1).cpu().numpy()
    finally:
        model.train(was_training)
    entropy = np.array([max(zlib_entropy(t), 1) for t in texts], dtype=np.float64)
    return SequenceScores(
        loss=loss,
        zlib=loss / entropy,
        min_k=min_k,
        min_k_plus_plus=min_k_pp,
        num_tokens=num_tokens,
        k=k,
    )
