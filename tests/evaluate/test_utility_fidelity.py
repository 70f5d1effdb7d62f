"""Perplexity on retained organizations and public text; next-token KL to retrains and its spread."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from fedunlearn.data import generate_consortium
from fedunlearn.errors import ConfigError, DataError, UnknownNameError
from fedunlearn.evaluate import (
    fidelity_to_retrain,
    mean_next_token_kl,
    perplexity,
    retrain_spread,
    utility_report,
)
from fedunlearn.training.local import encode_texts, sequence_losses

from .fakes import CharTokenizer, FixedLogits


def test_perplexity_is_token_weighted(tiny_base) -> None:
    tok = tiny_base.tokenizer
    texts = ["Patient Ivo Brask, ward 3.", "Shipment 77 left the Harbor depot on a Tuesday with twelve crates."]
    result = perplexity(tiny_base.model, tok, texts, max_length=48)
    data = encode_texts(tok, texts, max_length=48)
    with torch.no_grad():
        per_seq = [float(sequence_losses(tiny_base.model, data.input_ids[i : i + 1, : int(m.sum())],
                                         data.attention_mask[i : i + 1, : int(m.sum())]))
                   for i, m in enumerate(data.attention_mask)]
    counts = (data.attention_mask.sum(dim=1) - 1).tolist()
    expected = sum(l * c for l, c in zip(per_seq, counts)) / sum(counts)
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-5)
    assert result.tokens == sum(counts)


def test_utility_report_skips_erased_organizations(tiny_base) -> None:
    consortium = generate_consortium(organizations=["a", "b", "c"], records_per_org=2, holdout_per_org=3,
                                     canaries_per_org=0, never_inserted=0, public_documents=5)
    report = utility_report(tiny_base.model, tiny_base.tokenizer, consortium, erased=["b"], max_length=48)
    assert list(report.holdout) == ["a", "c"]
    assert report.public is not None and report.public.num_texts == 5
    assert report.mean_holdout_loss == pytest.approx((report.holdout["a"].loss + report.holdout["c"].loss) / 2)
    with pytest.raises(UnknownNameError, match="'a', 'b', 'c'"):
        utility_report(tiny_base.model, tiny_base.tokenizer, consortium, erased=["zz"])
    with pytest.raises(DataError, match="holdout"):
        utility_report(tiny_base.model, tiny_base.tokenizer, consortium, erased=["a", "b", "c"])


def test_kl_by_hand() -> None:
    p, q = [0.5, 0.25, 0.125, 0.125], [0.25, 0.25, 0.25, 0.25]
    ref, model = FixedLogits([math.log(x) for x in p]), FixedLogits([math.log(x) for x in q])
    kl = mean_next_token_kl(ref, model, CharTokenizer(), ["abcd", "ab"], max_length=8)
    expected = sum(a * math.log(a / b) for a, b in zip(p, q))  # 0.25 ln 2
    assert kl.mean == pytest.approx(expected, rel=1e-5)
    assert kl.tokens == 3 + 1
    assert np.allclose(kl.per_text, expected, rtol=1e-5)
    assert mean_next_token_kl(ref, ref, CharTokenizer(), ["abcd"], max_length=8).mean == pytest.approx(0.0, abs=1e-7)


def test_fidelity_and_spread(memorized) -> None:
    tok = memorized.base.tokenizer
    texts = memorized.consortium.organizations[0].texts("holdout")[:4]
    retrains = [memorized.model, copy.deepcopy(memorized.model), copy.deepcopy(memorized.model)]
    with torch.no_grad():  # three "seeds": small independent perturbations of the LoRA factors
        for seed, m in enumerate(retrains[1:], start=1):
            gen = torch.Generator().manual_seed(seed)
            for name, param in m.named_parameters():
                if "lora_B" in name:
                    param.add_(0.01 * torch.randn(param.shape, generator=gen))
    spread = retrain_spread(retrains, tok, texts, max_length=48)
    assert spread.pairwise.shape == (3, 3) and np.all(np.diag(spread.pairwise) == 0.0)
    assert 0.0 < spread.mean <= spread.max
    close = fidelity_to_retrain(retrains[0], retrains[1:], tok, texts, max_length=48)
    far = fidelity_to_retrain(memorized.base.model, retrains[1:], tok, texts, max_length=48)
    assert close.mean < far.mean
    assert not far.within_spread
    assert close.to_retrains.shape == (2,)
    with pytest.raises(ConfigError, match="at least 2"):
        retrain_spread(retrains[:1], tok, texts)
