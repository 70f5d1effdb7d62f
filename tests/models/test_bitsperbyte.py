"""Bits per byte: uniform, unigram and model figures checked against direct computations."""

from __future__ import annotations

import math

import pytest
import torch

from fedunlearn.errors import ConfigError
from fedunlearn.models import UnigramModel, bits_per_byte, load_base_model, pick_device

TEXTS = ["The weather office confirmed light snow.", "Rivers flood in the spring after a long winter."]


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_base_model(tiny_model_dir, device=pick_device("cpu"))


def test_uniform_and_unigram_match_their_definitions(base):
    tok = base.tokenizer
    unigram = UnigramModel(tok, TEXTS)
    result = bits_per_byte(TEXTS, tok, unigram=unigram)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    nbytes = sum(len(t.encode()) for t in TEXTS)
    tokens = sum(map(len, ids))
    assert result.tokens == tokens and result.bytes == nbytes
    assert result.uniform == pytest.approx(tokens * math.log2(len(tok)) / nbytes)
    counts = {}
    for seq in ids:
        for t in seq:
            counts[t] = counts.get(t, 0) + 1
    expected = sum(-math.log2((counts[t] + 1) / (tokens + len(tok))) for seq in ids for t in seq) / nbytes
    assert result.unigram == pytest.approx(expected)
    assert result.unigram < result.uniform  # frequencies fitted on the same text always help
    assert math.isnan(result.model)


def test_model_figure_equals_the_models_own_loss(base):
    tok, model = base.tokenizer, base.model
    unigram = UnigramModel(tok, TEXTS)
    result = bits_per_byte(TEXTS, tok, unigram=unigram, model=model, batch_size=1)
    total = 0.0
    for text in TEXTS:  # Hugging Face's loss: mean NLL of every token after <|bos|>
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
    assert result.model == pytest.approx(total / math.log(2) / result.bytes, rel=1e-5)
    assert result.model_nats_per_token == pytest.approx(total / result.tokens, rel=1e-5)


def test_long_texts_are_scored_in_windows(base):
    tok = base.tokenizer
    long = " ".join(TEXTS * 20)
    result = bits_per_byte([long], tok, unigram=UnigramModel(tok, TEXTS), model=base.model, max_length=16)
    assert result.tokens == len(tok(long, add_special_tokens=False)["input_ids"])
    assert math.isfinite(result.model)


def test_bad_input(base):
    with pytest.raises(ConfigError, match="at least one non-empty text"):
        bits_per_byte(["", ""], base.tokenizer, unigram=UnigramModel(base.tokenizer, TEXTS))
