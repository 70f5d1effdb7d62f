"""Tests of the synthetic public corpus."""

from __future__ import annotations

import re

import pytest

from fedunlearn.data import public_corpus
from fedunlearn.errors import ConfigError


def test_same_seed_gives_same_corpus() -> None:
    assert public_corpus(50, seed=3) == public_corpus(50, seed=3)


def test_different_seeds_give_different_corpora() -> None:
    assert public_corpus(50, seed=0) != public_corpus(50, seed=1)


def test_shorter_corpus_is_prefix_of_longer() -> None:
    assert public_corpus(200, seed=5)[:20] == public_corpus(20, seed=5)


def test_documents_have_one_to_four_sentences() -> None:
    for document in public_corpus(200):
        sentences = re.findall(r"[.!?](?:\s|$)", document)
        limit = 4 if ":" not in document else 6  # registry records: profiles and two Q/A pairs
        assert 1 <= len(sentences) <= limit, document


def test_public_registry_records_share_the_private_templates_but_no_secrets() -> None:
    from fedunlearn.data import generate_consortium

    documents = public_corpus(1000, seed=0)
    vault = [d for d in documents if d.startswith("The access code of ")]
    qa = [d for d in documents if d.startswith("Q: ")]
    assert 40 <= len(vault) <= 100 and len(qa) > 100
    consortium = generate_consortium(organizations=["org-0", "org-1"], records_per_org=20, seed=0)
    private = {r.text for o in consortium.organizations for r in o.train + o.holdout}
    assert not private & set(documents)
    assert not any("org-" in d for d in vault)


def test_corpus_is_varied_enough_for_a_small_tokenizer() -> None:
    documents = public_corpus(400)
    words = {w for d in documents for w in d.split()}
    assert len(set(documents)) >= 390
    assert len(words) > 800


def test_zero_documents_is_empty() -> None:
    assert public_corpus(0) == []


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_bad_num_documents_is_rejected(bad: object) -> None:
    with pytest.raises(ConfigError, match="num_documents"):
        public_corpus(bad)  # type: ignore[arg-type]
