"""Utility after erasure: perplexity on every retained organization's holdout and on public text.

Erasing one organization must not damage what the others contributed. Following the "model
utility" axis of unlearning benchmarks (TOFU, Maini et al. 2024; MUSE, Shi et al. 2024), we
measure token-level perplexity ``exp(mean NLL)`` on held-out data of every organization that
stays in the federation, and on the public corpus the base model was pre-trained on (general
language ability). Compare against the retrained model: a good erasure matches it on both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from fedunlearn.data.records import Consortium
from fedunlearn.errors import DataError, UnknownNameError
from fedunlearn.evaluate._common import check_positive_int
from fedunlearn.training.local import encode_texts, evaluate_local

__all__ = [
    "Perplexity",
    "UtilityReport",
    "perplexity",
    "utility_report",
]


@dataclass(frozen=True)
class Perplexity:
    """Token-weighted loss and perplexity on some texts.

    Attributes
    ----------
    num_texts : int
    tokens : int
        Target tokens scored (each text's ``<eos>`` included, ``<bos>`` not).
    loss : float
        Mean next-token negative log-likelihood, nats per token.
    perplexity : float
        ``exp(loss)`` (capped at ``exp(50)``).
    """

    num_texts: int
    tokens: int
    loss: float
    perplexity: float


@dataclass(frozen=True)
class UtilityReport:
    """Utility of one model.

    Attributes
    ----------
    holdout : Mapping[str, Perplexity]
        Per retained organization (in consortium order), on its holdout records.
    public : Perplexity or None
        On the public corpus (its first ``public_limit`` documents); None when it is empty.
    mean_holdout_loss : float
        Unweighted mean of the organizations' holdout losses.
    """

    holdout: Mapping[str, Perplexity]
    public: Perplexity | None
    mean_holdout_loss: float


def perplexity(
    model: nn.Module, tokenizer: object, texts: Sequence[str], *, max_length: int = 64, batch_size: int = 64
) -> Perplexity:
    """Perplexity of ``model`` on ``texts`` tokenized as in training.

    Raises
    ------
    DataError
        If ``texts`` is empty.
    """
    check_positive_int("batch_size", batch_size, hint="use e.g. 64")
    if not texts:
        raise DataError("no texts to measure perplexity on; expected at least one record")
    data = encode_texts(tokenizer, texts, max_length=max_length)  # type: ignore[arg-type]
    result = evaluate_local(model, data, batch_size=batch_size)
    return Perplexity(num_texts=len(data), tokens=result.tokens, loss=result.loss, perplexity=result.perplexity)


def utility_report(
    model: nn.Module,
    tokenizer: object,
    consortium: Consortium,
    *,
    erased: Sequence[str],
    max_length: int = 64,
    batch_size: int = 64,
    public_limit: int = 200,
) -> UtilityReport:
    """Perplexity on every retained organization's holdout and on the public corpus.

    Parameters
    ----------
    model, tokenizer
        The model to evaluate and its tokenizer.
    consortium : Consortium
    erased : Sequence[str]
        Organizations no longer in the federation (the subject and earlier erasures).
    max_length, batch_size
        As in training.
    public_limit : int, default 200
        Public documents used (the first ones); keeps the evaluation within its time budget.

    Returns
    -------
    UtilityReport

    Raises
    ------
    UnknownNameError
        If an erased name is not an organization of the consortium.
    DataError
        If no retained organization has holdout records.
    """
    check_positive_int("public_limit", public_limit, hint="use e.g. 200")
    for name in erased:
        if name not in consortium.names:
            raise UnknownNameError("organization", name, consortium.names)
    holdout: dict[str, Perplexity] = {}
    for org in consortium.organizations:
        if org.name in erased or not org.holdout:
            continue
        holdout[org.name] = perplexity(model, tokenizer, org.texts("holdout"), max_length=max_length,
                                       batch_size=batch_size)
    if not holdout:
        raise DataError(
            f"no retained organization has holdout records (erased: {sorted(erased)}); expected "
            "holdout data to measure utility: set data.holdout-per-org >= 1"
        )
    public = list(consortium.public[:public_limit])
    return UtilityReport(
        holdout=holdout,
        public=perplexity(model, tokenizer, public, max_length=max_length, batch_size=batch_size) if public else None,
        mean_holdout_loss=sum(p.loss for p in holdout.values()) / len(holdout),
    )
