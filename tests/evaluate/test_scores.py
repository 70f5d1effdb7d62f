"""Membership scores against hand computation on fake models with fixed distributions."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from fedunlearn.errors import ConfigError, DataError, UnknownNameError
from fedunlearn.evaluate import SCORE_NAMES, score_texts, token_statistics, zlib_entropy

from .fakes import CharTokenizer, FixedLogits

# Next-token distribution p = (0.5, 0.25, 0.125, 0.125) over a 4-token vocabulary.
P = [0.5, 0.25, 0.125, 0.125]
LOGITS = [math.log(p) for p in P]


def test_token_statistics_on_a_crafted_distribution() -> None:
    model = FixedLogits(LOGITS)
    ids = torch.tensor([[0, 1, 2, 3, 0], [0, 0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    stats = token_statistics(model, ids, mask)
    assert torch.allclose(stats.log_probs[0], torch.log(torch.tensor([0.25, 0.125, 0.125, 0.5])))
    mu = sum(p * math.log(p) for p in P)
    sigma = math.sqrt(sum(p * math.log(p) ** 2 for p in P) - mu**2)
    # 0.125 is the least likely token: (ln 0.125 - mu) / sigma = (-3 ln2 + 1.75 ln2) / sigma
    assert stats.standardized[0, 1].item() == pytest.approx((math.log(0.125) - mu) / sigma, rel=1e-5)
    assert stats.mask.tolist() == [[True] * 4, [True, True, False, False]]


def test_score_texts_matches_hand_computation() -> None:
    # "abcd" -> ids 0 1 2 3; targets b, c, d have probabilities 1/4, 1/8, 1/8 under P.
    ln2 = math.log(2)
    scores = score_texts(FixedLogits(LOGITS), CharTokenizer(), ["abcd", "aaab"], max_length=8, k=0.5)
    assert scores.loss[0] == pytest.approx((2 + 3 + 3) / 3 * ln2, rel=1e-6)
    assert scores.min_k[0] == pytest.approx(-3 * ln2, rel=1e-6)  # floor(0.5 * 3) = 1 lowest token
    # mu = -1.75 ln2; sigma^2 = (0.5*1 + 0.25*4 + 2*0.125*9 - 1.75^2) ln2^2 = 0.6875 ln2^2
    assert scores.min_k_plus_plus[0] == pytest.approx((-3 + 1.75) / math.sqrt(0.6875), rel=1e-5)
    # "aaab": targets a, a, b -> 1/2, 1/2, 1/4; the lowest is b.
    assert scores.loss[1] == pytest.approx((1 + 1 + 2) / 3 * ln2, rel=1e-6)
    assert scores.min_k[1] == pytest.approx(-2 * ln2, rel=1e-6)
    assert scores.min_k_plus_plus[1] == pytest.approx((-2 + 1.75) / math.sqrt(0.6875), rel=1e-5)
    assert scores.zlib[0] == pytest.approx(scores.loss[0] / len(zlib.compress(b"abcd")), rel=1e-12)
    assert scores.num_tokens.tolist() == [3, 3]
    # k = 1: Min-K% is the mean token log-probability, i.e. minus the loss.
    full = score_texts(FixedLogits(LOGITS), CharTokenizer(), ["abcd"], max_length=8, k=1.0)
    assert full.min_k[0] == pytest.approx(-full.loss[0], rel=1e-6)


def test_zlib_entropy_is_compressed_length() -> None:
    assert zlib_entropy("aaaa" * 50) == len(zlib.compress(b"a" * 200))
    assert zlib_entropy("aaaa" * 50) < zlib_entropy("".join(chr(65 + (i * 7) % 26) for i in range(200)))


def test_scores_do_not_depend_on_batching_or_order(memorized) -> None:
    tok = memorized.base.tokenizer
    texts = memorized.consortium.organizations[0].texts("holdout")[:6]
    together = score_texts(memorized.model, tok, texts, max_length=48, batch_size=4)
    for i, text in enumerate(texts):
        alone = score_texts(memorized.model, tok, [text], max_length=48, batch_size=1)
        for name in SCORE_NAMES:
            assert together.membership(name)[i] == pytest.approx(alone.membership(name)[0], rel=1e-4, abs=1e-5)


def test_membership_orientation_and_errors(memorized) -> None:
    tok = memorized.base.tokenizer
    org = memorized.consortium.organizations[0]
    members = score_texts(memorized.model, tok, org.texts("train"), max_length=48)
    assert len(members) == len(org.train)
    assert np.array_equal(members.membership("loss"), -members.loss)
    assert np.array_equal(members.membership("zlib"), -members.zlib)
    with pytest.raises(UnknownNameError, match="min_k_plus_plus"):
        members.membership("gradnorm")
    with pytest.raises(ConfigError, match="k = 0"):
        score_texts(memorized.model, tok, ["x y"], k=0)
    with pytest.raises(DataError):
        score_texts(memorized.model, tok, [])
