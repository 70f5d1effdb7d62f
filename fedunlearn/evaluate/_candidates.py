"""Tokenize every candidate canary of a template quickly, exactly as training would.

Scoring 10^4 candidates of one template takes about 1.5 CPU-seconds with the demo model; tokenizing their 10^4 whole sentences
would add about 1 s more. :func:`candidate_tokens` tokenizes the shared head once and only the short tails.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedunlearn.evaluate._common import encode_batched

__all__ = ["candidate_tokens"]


def candidate_tokens(
    tokenizer: object,
    prefix: str,
    secrets: Sequence[str],
    suffix: str,
    *,
    max_length: int,
    memo: dict[tuple[str, str], list[list[int]]] | None = None,
) -> list[list[int]]:
    """Training tokenization (``<bos> text <eos>``) of every ``prefix + secret + suffix``.

    Tokenizing 10^4 whole sentences costs about a second, a third of scoring them on CPU. A byte-level
    BPE never merges across its pre-tokenizer's boundaries, so the sentences are cut one
    pre-token before the secret: the head is tokenized once and only the short tails per
    candidate. The cut is checked against full tokenization on 64 spread-out candidates; on any
    difference (or a tokenizer without a pre-tokenizer, or with a normalizer) every sentence is
    tokenized whole. ``memo`` (a dict owned by the caller, for one tokenizer and one list of
    secrets) keeps tail tokenizations across canaries of the same template.
    """
    full = [prefix + s + suffix for s in secrets]
    cut = _pretoken_cut(tokenizer, full[0], len(prefix))
    if cut <= 0:
        return encode_batched(tokenizer, full, max_length=max_length)
    head = _ids(tokenizer, [prefix[:cut]])[0]
    key = (prefix[cut:], suffix)
    if memo is not None and key in memo:
        tails = memo[key]
    else:
        tails = _ids(tokenizer, [prefix[cut:] + s + suffix for s in secrets])
        if memo is not None:
            memo[key] = tails
    bos = tokenizer.bos_token_id  # type: ignore[attr-defined]
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    start = ([bos] if bos is not None else []) + head
    rows = [(start + t)[: max_length - 1] + ([eos] if eos is not None else []) for t in tails]
    probe = np.unique(np.linspace(0, len(full) - 1, num=min(64, len(full))).astype(int))
    reference = encode_batched(tokenizer, [full[i] for i in probe], max_length=max_length)
    if any(rows[i] != ref for i, ref in zip(probe, reference)):
        return encode_batched(tokenizer, full, max_length=max_length)
    return rows


def _ids(tokenizer: object, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokenizer directly: ~3x faster than __call__ for 10^4 texts
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return [list(r) for r in tokenizer(texts, add_special_tokens=False)["input_ids"]]  # type: ignore[operator]


def _pretoken_cut(tokenizer: object, text: str, secret_start: int) -> int:
    """Character offset one pre-token before the one holding ``text[secret_start - 1]``; 0 = none."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None or backend.normalizer is not None:
        return 0
    starts = [span[0] for _, span in backend.pre_tokenizer.pre_tokenize_str(text)]
    before = [s for s in starts if s <= max(secret_start - 1, 0)]
    return before[-2] if len(before) >= 2 else 0
