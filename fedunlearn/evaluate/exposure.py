"""Canary exposure over the whole candidate space (Carlini et al. 2019, "The Secret Sharer").

A canary is a sentence ``prefix + secret + suffix`` whose secret is drawn uniformly from a space
``R`` of candidates (e.g. every 4-digit string). Its **exposure** is

    exposure = log2 |R| − log2 rank(secret),

where the rank orders every candidate by the model's negative log-likelihood of the full sentence
(rank 1 = most likely). A model that never saw the secret ranks it uniformly at random: exposure
is then about 1.4 bits on average (E[log2|R| − log2 U] for U uniform on 1..|R|); a model that
memorized it ranks it first: exposure ``log2 |R|`` (13.3 bits for 10^4 candidates).

Exact ranks (enumerating the space, rather than the paper's extrapolation) are affordable because
every candidate shares the prefix: its keys and values are computed once (KV cache), and the
continuations are scored as a prefix tree (candidates sharing their first secret tokens share
those positions' forward passes), batched one tree depth at a time. Tokens before the first
position where candidates differ contribute the same log-likelihood to every candidate, so
ranking by the continuation alone equals ranking by the full sentence. Canaries of one template
(the same prefix and suffix, e.g. an organization's several canaries) share one scoring of the
space: :func:`exposure_report` scores each template once.

The reference distribution comes from **never-inserted** canaries (same template, secrets absent
from all training data): an inserted canary is memorized when its exposure is far above theirs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedunlearn.data.records import Canary, CanarySpace
from fedunlearn.errors import ConfigError, DataError
from fedunlearn.evaluate._candidates import candidate_tokens
from fedunlearn.evaluate._common import (
    cache_argument,
    check_positive_int,
    encode_batched,
    model_device,
    returned_cache,
)

__all__ = [
    "ExposureReport",
    "ExposureResult",
    "SecretRank",
    "candidate_losses",
    "candidate_tokens",
    "canary_exposure",
    "exposure_from_losses",
    "exposure_report",
]


@dataclass(frozen=True)
class ExposureResult:
    """Exposure of one canary.

    Attributes
    ----------
    canary_id : str
    secret : str
    rank : float
        Rank of the secret among all candidates, 1 = most likely; ties count half (mid-rank).
    exposure : float
        ``log2(candidates) − log2(rank)``, in bits, in ``[0, max_exposure]``.
    max_exposure : float
        ``log2(candidates)``.
    secret_nll : float
        Negative log-likelihood (nats) of the secret's tokens after the shared prefix.
    candidates : int
        Size of the candidate space ``|R|``.
    seconds : float
        Wall time of scoring every candidate.
    """

    canary_id: str
    secret: str
    rank: float
    exposure: float
    max_exposure: float
    secret_nll: float
    candidates: int
    seconds: float


@dataclass(frozen=True)
class ExposureReport:
    """Inserted canaries' exposures against never-inserted ones.

    Attributes
    ----------
    inserted : tuple of ExposureResult
        The subject's canaries.
    baseline : tuple of ExposureResult
        Never-inserted canaries (what exposure looks like without memorization).
    mean_exposure : float
        Mean exposure of the inserted canaries.
    baseline_mean, baseline_p95 : float
        Mean and 95th percentile of the baseline exposures (NaN without baseline canaries).
    p_values : tuple of float
        Per inserted canary, ``(1 + #{baseline >= exposure}) / (1 + #baseline)``: the chance a
        never-inserted canary reaches its exposure (an empirical permutation p-value).
    """

    inserted: tuple[ExposureResult, ...]
    baseline: tuple[ExposureResult, ...]
    mean_exposure: float
    baseline_mean: float
    baseline_p95: float
    p_values: tuple[float, ...]


@dataclass(frozen=True)
class SecretRank:
    """Where the true secret stands among all candidates.

    Attributes
    ----------
    rank : float
        1 = most likely; candidates exactly as likely as the secret count half (mid-rank).
    exposure : float
        ``log2(candidates) − log2(rank)``, bits.
    """

    rank: float
    exposure: float


def exposure_from_losses(losses: np.ndarray, secret_index: int) -> SecretRank:
    """Mid-rank and exposure of ``losses[secret_index]`` among ``losses`` (lower = more likely).

    Parameters
    ----------
    losses : np.ndarray
        ``[|R|]`` NLL of every candidate.
    secret_index : int
        Position of the true secret.

    Returns
    -------
    SecretRank

    Raises
    ------
    ConfigError
        If there are fewer than 2 candidates or ``secret_index`` is out of range.
    """
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 1 or losses.size < 2:
        raise ConfigError(f"losses has shape {losses.shape}; expected a 1-D array of at least 2 candidates")
    if not 0 <= secret_index < losses.size:
        raise ConfigError(f"secret_index = {secret_index} is outside 0..{losses.size - 1}")
    secret = losses[secret_index]
    better = int(np.sum(losses < secret))
    ties = int(np.sum(losses == secret)) - 1  # other candidates exactly as likely
    rank = 1.0 + better + 0.5 * ties
    return SecretRank(rank=rank, exposure=float(np.log2(losses.size) - np.log2(rank)))


def candidate_losses(
    model: nn.Module,
    tokenizer: object,
    prefix: str,
    secrets: Sequence[str],
    suffix: str,
    *,
    max_length: int = 64,
    batch_size: int = 256,
) -> np.ndarray:
    """Negative log-likelihood (nats) of each ``prefix + secret + suffix`` after the shared tokens.

    Sentences are tokenized as in training (``<bos> text <eos>``). The longest token prefix common
    to all candidates goes through the model once; its KV cache is repeated over each batch of
    candidates, which then only process their own few tokens.

    Parameters
    ----------
    model : torch.nn.Module
        Causal LM supporting a KV cache (every Hugging Face decoder does).
    tokenizer : PreTrainedTokenizerBase
    prefix, suffix : str
        Canary template around the secret.
    secrets : Sequence[str]
        Candidate secrets (usually ``CanarySpace.candidates()``), at least 2.
    max_length : int, default 64
        As in training; a canary cut short by it is an error.
    batch_size : int, default 256
        Candidates per prefix tree (chunk); larger chunks share more nodes and hold more KV cache.

    Returns
    -------
    np.ndarray
        ``[len(secrets)]`` NLL in nats, comparable across candidates (not across templates).

    Raises
    ------
    ConfigError
        If there are fewer than 2 candidates, or truncation to ``max_length`` makes candidates
        identical.
    """
    check_positive_int("batch_size", batch_size, hint="use e.g. 256")
    if len(secrets) < 2:
        raise ConfigError(f"{len(secrets)} candidate secrets given; expected at least 2 (the whole space)")
    rows = candidate_tokens(tokenizer, prefix, secrets, suffix, max_length=max_length)
    return _score_rows(model, rows, batch_size=batch_size, what=prefix + secrets[0] + suffix, max_length=max_length)


def _check_distinct(grid: np.ndarray, *, what: str, max_length: int) -> np.ndarray:
    """Lexicographic order of the rows of ``grid``; raise if two candidates have the same tokens."""
    order = np.lexsort(grid.T[::-1])  # [N] first column most significant
    ordered = grid[order]
    if len(ordered) > 1 and bool(np.any(np.all(ordered[1:] == ordered[:-1], axis=1))):
        raise ConfigError(
            f"max_length = {max_length} truncates the canary {what!r} so that different secrets "
            "give the same tokens; expected max_length to cover the whole canary: raise "
            "max_length (the run's data.max-length)"
        )
    return order


@torch.no_grad()
def _score_rows(model: nn.Module, rows: list[list[int]], *, batch_size: int, what: str, max_length: int) -> np.ndarray:
    """NLL of each row's tokens after the prefix shared by all rows, scored as a prefix tree.

    The shared prefix goes through the model once. The continuations are sorted lexicographically
    and cut into chunks of ``batch_size`` candidates; in each chunk, depth ``k`` of the prefix tree
    (the distinct first ``k`` continuation tokens) is one batched forward pass of one token per
    node on the KV cache of its parent node. A node shared by many candidates (e.g. the first
    digit) is computed once: for 4-digit secrets about 21,000 token positions instead of
    38,000, and no padding.
    """
    lengths = np.array([len(r) for r in rows])
    pad = -1
    grid = np.full((len(rows), int(lengths.max())), pad, dtype=np.int64)  # [N, W]
    for i, row in enumerate(rows):
        grid[i, : len(row)] = row
    order = _check_distinct(grid, what=what, max_length=max_length)
    differs = np.any(grid != grid[:1], axis=0)  # [W] columns where some candidate differs
    shared = int(np.argmax(differs))  # first differing column = shared prefix length P >= 1 (bos)
    if shared == 0:
        raise ConfigError(
            f"candidates of {what!r} share no first token; expected a tokenizer with a bos token "
            "or a non-empty canary prefix"
        )
    device = model_device(model)
    cache_arg = cache_argument(model)
    was_training = model.training
    model.eval()
    try:
        head = torch.as_tensor(grid[:1, :shared], device=device)  # [1, P]
        out = model(
            input_ids=head,
            attention_mask=torch.ones_like(head),
            position_ids=torch.arange(shared, device=device).unsqueeze(0),
            use_cache=True,
        )
        first_logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1).double().cpu().numpy()  # [V]
        prefix_cache = returned_cache(out)
        if prefix_cache is None:
            raise ConfigError(
                f"{type(model).__name__} returned no KV cache for use_cache=True; expected a "
                "Hugging Face causal LM (exposure scores the shared prefix once and reuses its cache)"
            )
        tail = grid[order, shared:]  # [N, L] continuations in lexicographic order, -1 padded
        sorted_losses = np.empty(len(rows))
        for start in range(0, len(rows), batch_size):
            block = tail[start : start + batch_size]
            sorted_losses[start : start + len(block)] = _score_tree(
                model, block, first_logp, copy.deepcopy(prefix_cache), shared, cache_arg, device)
    finally:
        model.train(was_training)
    losses = np.empty(len(rows))
    losses[order] = sorted_losses
    return losses


def _score_tree(model: nn.Module, tail: np.ndarray, first_logp: np.ndarray, cache: object, shared: int,
                cache_arg: str, device: torch.device) -> np.ndarray:
    """NLL of lexicographically sorted continuations ``tail`` ``[c, L]`` (-1 padded) after the prefix.

    ``cache`` holds the prefix (batch 1) and is consumed. Node ``j`` of depth ``k`` is the ``j``-th
    distinct ``tail[:, :k]``; sorted rows keep each node's candidates contiguous.
    """
    lengths = np.sum(tail >= 0, axis=1)  # [c]
    nll = -first_logp[tail[:, 0]]  # [c]
    node = np.zeros(len(tail), dtype=np.int64)  # node of depth k-1 holding each candidate
    for k in range(1, tail.shape[1]):
        alive = np.flatnonzero(lengths > k)  # candidates with a token k to predict
        if alive.size == 0:
            break
        keys = tail[alive, :k]  # [a, k]
        new = np.ones(alive.size, dtype=bool)
        new[1:] = np.any(keys[1:] != keys[:-1], axis=1)
        node_of = np.cumsum(new) - 1  # [a] depth-k node of each alive candidate
        first = alive[new]  # [n] one candidate per node
        n = first.size
        cache.batch_select_indices(torch.as_tensor(node[first], device=device))  # parents' rows
        out = model(
            input_ids=torch.as_tensor(tail[first, k - 1], device=device).unsqueeze(1),  # [n, 1]
            attention_mask=torch.ones(n, shared + k, dtype=torch.long, device=device),
            position_ids=torch.full((n, 1), shared + k - 1, dtype=torch.long, device=device),
            use_cache=True,
            **{cache_arg: cache},
        )
        logits = out.logits[:, -1].float()  # [n, V]
        lse = torch.logsumexp(logits, dim=-1)  # [n]
        rows = torch.as_tensor(node_of, device=device)
        target = logits[rows, torch.as_tensor(tail[alive, k], device=device)] - lse[rows]  # [a]
        nll[alive] -= target.double().cpu().numpy()
        cache = returned_cache(out)
        node[alive] = node_of
    return nll


def canary_exposure(
    model: nn.Module,
    tokenizer: object,
    canary: Canary,
    space: CanarySpace,
    *,
    max_length: int = 64,
    batch_size: int = 256,
    candidates: Sequence[str] | None = None,
    memo: dict[tuple[str, str], list[list[int]]] | None = None,
    scored: dict[tuple[str, str], tuple[np.ndarray, float]] | None = None,
) -> ExposureResult:
    """Exposure of one canary over every candidate secret of ``space``.

    Parameters
    ----------
    model, tokenizer
        The audited causal LM and its tokenizer.
    canary : Canary
    space : CanarySpace
        The space the secret was drawn from.
    max_length, batch_size
        See :func:`candidate_losses`.
    candidates : Sequence[str], optional
        ``space.candidates()``, precomputed when scoring many canaries.
    memo : dict, optional
        Tokenization memo shared across canaries, see :func:`candidate_tokens`.
    scored : dict, optional
        Candidate losses by template ``(prefix, suffix)``, for one model and one candidate list,
        owned by the caller: canaries of the same template then share one scoring of the space
        (their ``seconds`` is that scoring's).

    Returns
    -------
    ExposureResult

    Raises
    ------
    DataError
        If the canary's secret is not in the candidate space.
    """
    secrets = candidates if candidates is not None else space.candidates()
    if len(canary.secret) != space.digits or not canary.secret.isdigit():
        raise DataError(
            f"canary {canary.id!r} has secret {canary.secret!r}, which is not a {space.digits}-digit "
            "string of its canary space; pass the CanarySpace the consortium was generated with"
        )
    index = int(canary.secret)
    if index >= len(secrets) or secrets[index] != canary.secret:
        raise ConfigError(
            f"candidates[{index}] is not {canary.secret!r}; expected candidates = space.candidates()"
        )
    check_positive_int("batch_size", batch_size, hint="use e.g. 256")
    key = (canary.prefix, canary.suffix)
    if scored is not None and key in scored:
        losses, seconds = scored[key]
    else:
        start = time.perf_counter()
        rows = candidate_tokens(tokenizer, canary.prefix, secrets, canary.suffix, max_length=max_length, memo=memo)
        if rows[index] != encode_batched(tokenizer, [canary.text], max_length=max_length)[0]:
            # Cannot happen with a consistent tokenizer; guards the scoring against a silent mismatch.
            raise ConfigError(
                f"canary {canary.id!r} tokenizes differently inside the candidate list than alone; "
                "expected a deterministic tokenizer: report this with the tokenizer's name"
            )
        losses = _score_rows(model, rows, batch_size=batch_size, what=canary.text, max_length=max_length)
        seconds = time.perf_counter() - start
        if scored is not None:
            scored[key] = (losses, seconds)
    ranked = exposure_from_losses(losses, index)
    return ExposureResult(
        canary_id=canary.id,
        secret=canary.secret,
        rank=ranked.rank,
        exposure=ranked.exposure,
        max_exposure=float(np.log2(len(secrets))),
        secret_nll=float(losses[index]),
        candidates=len(secrets),
        seconds=seconds,
    )


def exposure_report(
    model: nn.Module,
    tokenizer: object,
    canaries: Sequence[Canary],
    never_inserted: Sequence[Canary],
    space: CanarySpace,
    *,
    max_length: int = 64,
    batch_size: int = 256,
) -> ExposureReport:
    """Exposures of ``canaries`` and of the never-inserted baseline under one model.

    Parameters
    ----------
    canaries : Sequence[Canary]
        The subject's inserted canaries (at least one).
    never_inserted : Sequence[Canary]
        ``Consortium.never_inserted`` (may be empty; the baseline fields are then NaN).
    space : CanarySpace

    Returns
    -------
    ExposureReport

    Raises
    ------
    DataError
        If ``canaries`` is empty.
    """
    if not canaries:
        raise DataError(
            "no canaries to audit; expected the subject organization's inserted canaries: "
            "generate the consortium with data.canaries-per-org >= 1"
        )
    candidates = space.candidates()
    memo: dict[tuple[str, str], list[list[int]]] = {}
    scored: dict[tuple[str, str], tuple[np.ndarray, float]] = {}  # one scoring per template

    def run(items: Sequence[Canary]) -> tuple[ExposureResult, ...]:
        return tuple(
            canary_exposure(model, tokenizer, c, space, max_length=max_length, batch_size=batch_size,
                            candidates=candidates, memo=memo, scored=scored)
            for c in items
        )

    inserted = run(canaries)
    baseline = run(never_inserted)
    base = np.array([r.exposure for r in baseline])
    p_values = tuple(float((1 + np.sum(base >= r.exposure)) / (1 + base.size)) for r in inserted)
    return ExposureReport(
        inserted=inserted,
        baseline=baseline,
        mean_exposure=float(np.mean([r.exposure for r in inserted])),
        baseline_mean=float(base.mean()) if base.size else float("nan"),
        baseline_p95=float(np.percentile(base, 95)) if base.size else float("nan"),
        p_values=p_values,
    )
