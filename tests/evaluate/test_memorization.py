"""LCS / ROUGE-L by hand, batched greedy decoding equal to one-at-a-time, memorized records."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedunlearn.errors import ConfigError, DataError
from fedunlearn.evaluate import greedy_continuations, lcs_length, memorization, rouge_l
from fedunlearn.evaluate._common import encode_batched


def test_rouge_l_on_known_strings() -> None:
    # Lin (2004)'s example: LCS("police killed the gunman", "police kill the gunman") = 3 words.
    ref = "police killed the gunman".split()
    cand = "police kill the gunman".split()
    score = rouge_l(ref, cand)
    assert score.lcs == 3
    assert score.precision == pytest.approx(3 / 4) and score.recall == pytest.approx(3 / 4)
    assert score.f1 == pytest.approx(3 / 4)
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # CLRS: "BCBA"
    uneven = rouge_l("a b c d e f".split(), "a c f".split())
    assert (uneven.precision, uneven.recall) == (1.0, pytest.approx(0.5))
    assert uneven.f1 == pytest.approx(2 / 3)
    assert rouge_l([], [1, 2]).f1 == 0.0 and rouge_l([1], [2]).f1 == 0.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=12), st.lists(st.integers(0, 3), max_size=12))
def test_lcs_properties(a: list[int], b: list[int]) -> None:
    n = lcs_length(a, b)
    assert n == lcs_length(b, a) <= min(len(a), len(b))
    assert lcs_length(a, a) == len(a)
    assert lcs_length(a + b, b) == len(b)


def test_batched_greedy_equals_one_at_a_time(memorized) -> None:
    tok = memorized.base.tokenizer
    texts = memorized.consortium.organizations[0].texts("holdout")[:5]
    prompts = [row[: 3 + i] for i, row in enumerate(encode_batched(tok, texts, max_length=48))]  # ragged
    together = greedy_continuations(memorized.model, prompts, 6, batch_size=5)
    for prompt, out in zip(prompts, together):
        assert greedy_continuations(memorized.model, [prompt], 6, batch_size=1)[0] == out


def test_memorized_records_are_reproduced(memorized) -> None:
    tok = memorized.base.tokenizer
    org = memorized.consortium.organizations[0]
    trained = memorization(memorized.model, tok, org.texts("train"), max_length=48)
    assert trained.exact_match_rate == 1.0 and trained.mean_rouge_l == 1.0
    assert trained.exact_match.shape == (len(org.train),)
    base = memorization(memorized.base.model, tok, org.texts("train"), max_length=48)
    assert base.exact_match_rate == 0.0 and base.mean_rouge_l < 0.5
    # prompt = <bos> + ceil(n/2) tokens; target = the rest
    body = len(encode_batched(tok, [org.texts("train")[0]], max_length=48)[0]) - 2
    assert trained.prompt_tokens[0] == 1 + -(-body // 2)
    assert trained.target_tokens[0] == body - -(-body // 2)


def test_memorization_errors(memorized) -> None:
    tok = memorized.base.tokenizer
    with pytest.raises(DataError, match="no records"):
        memorization(memorized.model, tok, [])
    with pytest.raises(DataError, match="at least 2"):
        memorization(memorized.model, tok, ["a"])
    with pytest.raises(ConfigError, match="prompt_fraction"):
        memorization(memorized.model, tok, ["a b c d"], prompt_fraction=1.0)
