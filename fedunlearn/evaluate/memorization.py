"""Verbatim memorization: greedy continuations of records, exact match and ROUGE-L.

Given the first half of a training record, does the model reproduce the second half? This is the
extraction test of Carlini et al. (2023), "Quantifying Memorization Across Neural Language
Models" (greedy decoding, exact match of the continuation), with ROUGE-L (Lin 2004, "ROUGE: A
Package for Automatic Evaluation of Summaries", §3) as the graded version used by unlearning
benchmarks such as TOFU (Maini et al. 2024) and MUSE (Shi et al. 2024, "VerbMem").

Both are computed on token ids of the model's own tokenizer, so no detokenization artefacts enter;
:func:`rouge_l` works on any sequences (e.g. words) as well.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedunlearn.errors import DataError
from fedunlearn.evaluate._common import (
    cache_argument,
    check_fraction,
    check_positive_int,
    encode_batched,
    model_device,
    returned_cache,
)

__all__ = [
    "MemorizationResult",
    "RougeL",
    "greedy_continuations",
    "lcs_length",
    "memorization",
    "rouge_l",
]


@dataclass(frozen=True)
class RougeL:
    """ROUGE-L of a candidate against a reference (Lin 2004).

    Attributes
    ----------
    lcs : int
        Length of the longest common subsequence.
    precision : float
        ``lcs / len(candidate)``.
    recall : float
        ``lcs / len(reference)``.
    f1 : float
        Harmonic mean of precision and recall (β = 1); 0 when ``lcs`` is 0.
    """

    lcs: int
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class MemorizationResult:
    """Greedy-continuation memorization of some records.

    Attributes
    ----------
    exact_match : np.ndarray
        ``[N]`` bool: the continuation equals the record's second half, token for token.
    rouge_l : np.ndarray
        ``[N]`` ROUGE-L F1 of the continuation against the second half (token ids).
    prompt_tokens, target_tokens : np.ndarray
        ``[N]`` tokens given (``<bos>`` included) and tokens to reproduce.
    exact_match_rate, mean_rouge_l : float
        Means over the records.
    """

    exact_match: np.ndarray
    rouge_l: np.ndarray
    prompt_tokens: np.ndarray
    target_tokens: np.ndarray
    exact_match_rate: float
    mean_rouge_l: float


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (O(len(a)·len(b)) DP)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(reference: Sequence[Hashable], candidate: Sequence[Hashable]) -> RougeL:
    """ROUGE-L precision, recall and F1 of ``candidate`` against ``reference``.

    Parameters
    ----------
    reference, candidate : Sequence
        Token ids, words (``text.split()``) or any hashable items.

    Returns
    -------
    RougeL
        All zeros when either sequence is empty.
    """
    lcs = lcs_length(reference, candidate)
    if lcs == 0:
        return RougeL(lcs=0, precision=0.0, recall=0.0, f1=0.0)
    precision = lcs / len(candidate)
    recall = lcs / len(reference)
    return RougeL(lcs=lcs, precision=precision, recall=recall, f1=2 * precision * recall / (precision + recall))


@torch.no_grad()
def greedy_continuations(
    model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, batch_size: int = 32
) -> list[list[int]]:
    """Greedy (argmax) continuation of each token-id prompt, ``max_new_tokens`` tokens long.

    Prompts are left-padded per batch with explicit position ids, so every prompt is processed
    exactly as it would be alone; one KV cache serves the whole batch. Decoding does not stop at
    ``<eos>``: callers compare only the tokens they need.

    Parameters
    ----------
    model : torch.nn.Module
        Causal LM with a KV cache (Hugging Face decoder, plain or PEFT-wrapped).
    prompts : Sequence[Sequence[int]]
        Non-empty token-id lists.
    max_new_tokens : int
    batch_size : int, default 32

    Returns
    -------
    list of list of int
        ``max_new_tokens`` generated ids per prompt.
    """
    check_positive_int("max_new_tokens", max_new_tokens, hint="use the length of the longest target")
    check_positive_int("batch_size", batch_size, hint="use e.g. 32")
    if any(len(p) == 0 for p in prompts):
        raise DataError("an empty prompt was given; expected at least one token (e.g. <bos>) per prompt")
    device = model_device(model)
    cache_arg = cache_argument(model)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths together
    result: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in index)
            ids = torch.zeros(len(index), width, dtype=torch.long)  # [b, w] left-padded
            mask = torch.zeros(len(index), width, dtype=torch.long)
            for row, i in enumerate(index):
                n = len(prompts[i])
                ids[row, width - n :] = torch.tensor(list(prompts[i]), dtype=torch.long)
                mask[row, width - n :] = 1
            ids, mask = ids.to(device), mask.to(device)
            positions = (mask.cumsum(dim=1) - 1).clamp_min(0)  # [b, w] 0 at each prompt's first token
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            generated = []
            for step in range(max_new_tokens):
                token = out.logits[:, -1, :].argmax(dim=-1)  # [b]
                generated.append(token)
                if step == max_new_tokens - 1:
                    break
                positions = positions[:, -1:] + 1  # [b, 1]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # [b, w + step + 1]
                out = model(input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=positions,
                            use_cache=True, **{cache_arg: returned_cache(out)})
            tokens = torch.stack(generated, dim=1).cpu().tolist()  # [b, max_new_tokens]
            for row, i in enumerate(index):
                result[i] = tokens[row]
    finally:
        model.train(was_training)
    return result


def memorization(
    model: nn.Module,
    tokenizer: object,
    texts: Sequence[str],
    *,
    prompt_fraction: float = 0.5,
    max_length: int = 64,
    batch_size: int = 32,
) -> MemorizationResult:
    """Exact match and ROUGE-L of greedy continuations of each record's second half.

    Each text is tokenized as in training (``<bos> text <eos>``, at most ``max_length`` tokens);
    its text tokens are split at ``ceil(prompt_fraction · n)``: the model gets ``<bos>`` and the
    first part, and must produce the rest (``<eos>`` excluded).

    Parameters
    ----------
    model, tokenizer
        The audited causal LM and its tokenizer.
    texts : Sequence[str]
        Records, e.g. the subject organization's training records.
    prompt_fraction : float, default 0.5
    max_length : int, default 64
    batch_size : int, default 32

    Returns
    -------
    MemorizationResult

    Raises
    ------
    DataError
        If ``texts`` is empty or a text has fewer than 2 tokens.
    """
    fraction = check_fraction("prompt_fraction", prompt_fraction, hint="use e.g. 0.5 (first half given)")
    if not texts:
        raise DataError("no records given; expected the texts whose memorization is measured")
    rows = encode_batched(tokenizer, texts, max_length=max_length)
    has_bos = tokenizer.bos_token_id is not None  # type: ignore[attr-defined]
    has_eos = tokenizer.eos_token_id is not None  # type: ignore[attr-defined]
    prompts: list[list[int]] = []
    targets: list[list[int]] = []
    for text, row in zip(texts, rows):
        body = row[int(has_bos) : len(row) - int(has_eos)]
        if len(body) < 2:
            raise DataError(
                f"record {text[:40]!r} has {len(body)} token(s); expected at least 2 to split into a "
                "prompt and a continuation: drop very short records"
            )
        split = min(max(int(np.ceil(fraction * len(body))), 1), len(body) - 1)
        prompts.append(row[: int(has_bos)] + body[:split])
        targets.append(body[split:])
    outputs = greedy_continuations(model, prompts, max(len(t) for t in targets), batch_size=batch_size)
    exact = np.array([out[: len(t)] == t for out, t in zip(outputs, targets)], dtype=bool)
    rouge = np.array([rouge_l(t, out[: len(t)]).f1 for out, t in zip(outputs, targets)])
    return MemorizationResult(
        exact_match=exact,
        rouge_l=rouge,
        prompt_tokens=np.array([len(p) for p in prompts]),
        target_tokens=np.array([len(t) for t in targets]),
        exact_match_rate=float(exact.mean()),
        mean_rouge_l=float(rouge.mean()),
    )
