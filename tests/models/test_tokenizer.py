"""train_tokenizer: byte-level BPE with fixed special tokens, deterministic."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from fedunlearn.data import public_corpus
from fedunlearn.errors import ConfigError, ModelError
from fedunlearn.models import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, train_tokenizer


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return public_corpus(200, seed=3)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer(corpus, vocab_size=400)


def test_special_tokens_have_fixed_ids(tokenizer):
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        BOS_TOKEN,
        EOS_TOKEN,
        PAD_TOKEN,
    )
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)


@pytest.mark.parametrize(
    "text",
    [
        "The river rose in spring.",
        "  leading and trailing spaces  ",
        "Ünïcödé, emoji 🎉 and 漢字 never seen in training",
        "line\nbreaks\tand tabs",
    ],
)
def test_round_trip(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.eos_token_id not in ids  # only <|bos|> is added
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_typed_special_text_round_trips_without_skipping(tokenizer):
    text = "a <|eos|> b"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_deterministic(corpus, tokenizer):
    again = train_tokenizer(list(corpus), vocab_size=400)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_vocab_bound_and_learned_merges(tokenizer):
    assert 259 < len(tokenizer) <= 400
    # Frequent words of the corpus become single tokens.
    assert len(tokenizer(" the", add_special_tokens=False)["input_ids"]) == 1


def test_save_load_round_trip(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "Forecasters expect light snow."
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.pad_token_id == 2


@pytest.mark.parametrize("bad", [100, 258, 2048.0, True])
def test_rejects_tiny_vocab(corpus, bad):
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(corpus, vocab_size=bad)


def test_rejects_empty_corpus():
    with pytest.raises(ModelError, match="empty corpus"):
        train_tokenizer(["", ""])
