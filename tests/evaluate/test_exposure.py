"""Canary exposure: ranks by hand, KV-cache scoring equal to full scoring, memorized vs unseen."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedunlearn.data import Canary, CanarySpace
from fedunlearn.errors import ConfigError, DataError
from fedunlearn.evaluate import (
    candidate_losses,
    candidate_tokens,
    canary_exposure,
    exposure_from_losses,
    exposure_report,
)
from fedunlearn.evaluate._common import encode_batched
from fedunlearn.training.local import encode_texts

from .fakes import Bigram

PREFIX, SUFFIX = "The access code of org-0 vault is ", "."


def test_rank_and_exposure_by_hand() -> None:
    losses = np.array([3.0, 1.0, 2.0, 4.0])
    assert exposure_from_losses(losses, 1).rank == 1.0
    assert exposure_from_losses(losses, 1).exposure == pytest.approx(2.0)  # log2 4 - log2 1
    assert exposure_from_losses(losses, 3).exposure == pytest.approx(0.0)  # last of 4
    tied = exposure_from_losses(np.array([1.0, 1.0, 5.0, 5.0]), 0)
    assert tied.rank == 1.5  # a tie counts half: no credit for indistinguishable candidates
    with pytest.raises(ConfigError, match="secret_index"):
        exposure_from_losses(losses, 4)


def test_secret_ranked_first_has_maximal_exposure(tiny_base) -> None:
    tok = tiny_base.tokenizer
    space = CanarySpace(2)
    canary = Canary(id="c", org="org-0", prefix=PREFIX, secret="47", suffix=SUFFIX, repeats=1)
    ids = encode_batched(tok, [canary.text], max_length=48)[0]
    vocab = max(len(tok), max(ids) + 1)
    table = torch.zeros(vocab, vocab)
    for a, b in zip(ids[:-1], ids[1:]):  # the secret's own transitions are strongly preferred
        table[a, b] = 20.0
    result = canary_exposure(Bigram(table), tok, canary, space, max_length=48)
    assert result.rank == 1.0
    assert result.exposure == pytest.approx(math.log2(100)) == pytest.approx(result.max_exposure)
    assert result.candidates == 100


def test_cached_scoring_equals_full_sequence_scoring(memorized) -> None:
    tok, model = memorized.base.tokenizer, memorized.model
    secrets = [f"{i:03d}" for i in range(0, 1000, 37)]
    losses = candidate_losses(model, tok, PREFIX, secrets, SUFFIX, max_length=48, batch_size=7)
    data = encode_texts(tok, [PREFIX + s + SUFFIX for s in secrets], max_length=48)
    with torch.no_grad():
        full = []
        for i in range(len(secrets)):
            n = int(data.attention_mask[i].sum())
            ids = data.input_ids[i : i + 1, :n]
            logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[0, :-1]  # [n-1, V]
            full.append(-float(logp.gather(-1, ids[0, 1:, None]).sum()))
    # The shared prefix adds the same constant to every full-sequence loss.
    offsets = np.array(full) - losses
    assert np.allclose(offsets, offsets[0], atol=1e-3)


def test_candidate_tokens_equal_training_tokenization(tiny_base) -> None:
    tok = tiny_base.tokenizer
    secrets = CanarySpace(3).candidates()
    fast = candidate_tokens(tok, PREFIX, secrets, SUFFIX, max_length=48)
    assert fast == encode_batched(tok, [PREFIX + s + SUFFIX for s in secrets], max_length=48)


def test_memorized_canary_is_exposed_and_unseen_ones_are_not(memorized) -> None:
    c = memorized.consortium
    canaries = c.organizations[0].canaries
    report = exposure_report(memorized.model, memorized.base.tokenizer, canaries, c.never_inserted,
                             c.canary_space, max_length=48)
    top = math.log2(c.canary_space.size)
    assert report.inserted[0].exposure > top - 1.0  # ranked within the top 2 of 1000
    assert report.baseline_mean < 4.0  # never-inserted: about log2(e) = 1.44 bits on average
    assert report.p_values[0] == pytest.approx(1 / (1 + len(c.never_inserted)))
    before = exposure_report(memorized.base.model, memorized.base.tokenizer, canaries, (), c.canary_space,
                             max_length=48)
    assert before.inserted[0].exposure < 6.0  # the base model never saw it
    assert math.isnan(before.baseline_mean)


def test_exposure_errors(tiny_base) -> None:
    tok = tiny_base.tokenizer
    bad = Canary(id="c", org="org-0", prefix=PREFIX, secret="12a", suffix=SUFFIX, repeats=1)
    with pytest.raises(DataError, match="12a"):
        canary_exposure(tiny_base.model, tok, bad, CanarySpace(3))
    with pytest.raises(ConfigError, match="max_length"):
        candidate_losses(tiny_base.model, tok, PREFIX, ["123", "124"], SUFFIX, max_length=4)
    with pytest.raises(DataError, match="no canaries"):
        exposure_report(tiny_base.model, tok, (), (), CanarySpace(3))


def test_tree_scoring_ranks_equal_brute_force_full_sentences(memorized) -> None:
    """The prefix-tree scoring is exact: every candidate's NLL equals full-sentence scoring minus a constant,
    so the secret's rank over the whole space is the brute-force rank; chunk size does not matter."""
    tok, model, c = memorized.base.tokenizer, memorized.model, memorized.consortium
    canary = c.organizations[0].canaries[0]
    secrets = c.canary_space.candidates()
    data = encode_texts(tok, [canary.prefix + s + canary.suffix for s in secrets], max_length=48)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=data.input_ids, attention_mask=data.attention_mask,
                                       position_ids=torch.arange(data.input_ids.shape[1]).expand_as(data.input_ids)
                                       ).logits.float(), dim=-1)  # [N, T, V]
        target = logp[:, :-1].gather(-1, data.input_ids[:, 1:, None]).squeeze(-1) * data.attention_mask[:, 1:]
        full = -target.sum(dim=1).double().numpy()  # [N] NLL of the whole sentence
    index = int(canary.secret)
    brute = exposure_from_losses(full, index)
    for chunk in (97, 1000):
        losses = candidate_losses(model, tok, canary.prefix, secrets, canary.suffix, max_length=48, batch_size=chunk)
        offsets = full - losses
        assert np.allclose(offsets, offsets[0], atol=1e-4)
        assert exposure_from_losses(losses, index) == brute
    result = canary_exposure(model, tok, canary, c.canary_space, max_length=48)
    assert (result.rank, result.exposure) == (brute.rank, brute.exposure)


def test_canaries_of_one_template_share_one_scoring(memorized) -> None:
    """Two canaries with the same prefix and suffix are scored once, with the same ranks as alone."""
    tok, model, c = memorized.base.tokenizer, memorized.model, memorized.consortium
    first = c.organizations[0].canaries[0]
    second = Canary(id="c2", org="org-0", prefix=first.prefix, secret=f"{(int(first.secret) + 1) % 1000:03d}",
                    suffix=first.suffix, repeats=0)
    report = exposure_report(model, tok, [first, second], (), c.canary_space, max_length=48)
    alone = [canary_exposure(model, tok, x, c.canary_space, max_length=48) for x in (first, second)]
    assert [r.rank for r in report.inserted] == [r.rank for r in alone]
    assert report.inserted[0].seconds == report.inserted[1].seconds  # one shared scoring
