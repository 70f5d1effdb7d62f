"""Local LoRA fit / evaluate on the tiny model: real tokens, real gradients."""

from __future__ import annotations

import math

import pytest
import torch

from fedunlearn.errors import ConfigError, DataError
from fedunlearn.models import LoraSpec, get_lora_state, load_base_model, pick_device, wrap_lora
from fedunlearn.training.local import encode_texts, evaluate_local, fit_local, sequence_losses

TEXTS = [
    "Q: What is the blood type of Mara Quell? A: O negative.",
    "The access code of org-0 vault is 4821.",
    "Patient Ivo Brask, ward 3, admitted for a fractured wrist.",
    "Shipment 77 left the Harbor depot on a Tuesday with twelve crates.",
] * 4


@pytest.fixture()
def base(tiny_model_dir):
    return load_base_model(tiny_model_dir, device=pick_device("cpu"))


def test_encode_adds_bos_eos_and_pads(base):
    tok = base.tokenizer
    data = encode_texts(tok, ["a b c", "a much longer record with many more words in it"], max_length=8)
    assert data.input_ids.shape[0] == 2 and data.input_ids.shape[1] <= 8
    assert int(data.input_ids[0, 0]) == tok.bos_token_id
    n0 = int(data.attention_mask[0].sum())
    assert int(data.input_ids[0, n0 - 1]) == tok.eos_token_id
    assert int(data.attention_mask[1].sum()) == 8  # truncated, eos kept
    assert int(data.input_ids[1, 7]) == tok.eos_token_id
    with pytest.raises(DataError, match="no records"):
        encode_texts(tok, [], max_length=8)
    with pytest.raises(ConfigError, match="max_length = 2"):
        encode_texts(tok, ["x"], max_length=2)


def test_sequence_losses_match_hf_loss_per_sequence(base):
    model = base.model
    data = encode_texts(base.tokenizer, TEXTS[:3], max_length=32)
    ours = sequence_losses(model, data.input_ids, data.attention_mask)
    for i in range(3):
        n = int(data.attention_mask[i].sum())
        ids = data.input_ids[i : i + 1, :n]
        ref = model(input_ids=ids, labels=ids).loss
        assert torch.allclose(ours[i], ref, atol=1e-5)


def test_fit_lowers_loss_and_is_deterministic(base):
    data = encode_texts(base.tokenizer, TEXTS, max_length=32)
    states = []
    for _ in range(2):
        model = wrap_lora(base, LoraSpec(r=4, alpha=8), seed=1)
        before = evaluate_local(model, data).loss
        res = fit_local(model, data, epochs=8, batch_size=4, lr=3e-2, seed=7)
        after = evaluate_local(model, data).loss
        assert after < before - 0.1
        assert res.steps == 32 and res.num_examples == len(TEXTS)
        assert res.loss_last_epoch < res.loss_first_epoch
        states.append(get_lora_state(model))
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    model = wrap_lora(base, LoraSpec(r=4, alpha=8), seed=1)
    fit_local(model, data, epochs=8, batch_size=4, lr=3e-2, seed=8)
    other = get_lora_state(model)
    assert any(not torch.equal(states[0][k], other[k]) for k in other)


def test_only_lora_parameters_change(base):
    data = encode_texts(base.tokenizer, TEXTS, max_length=32)
    model = wrap_lora(base, LoraSpec(r=4, alpha=8), seed=1)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    fit_local(model, data, epochs=1, batch_size=4, lr=2e-2, seed=0)
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, frozen[n]), n


def test_evaluate_perplexity_is_exp_loss(base):
    data = encode_texts(base.tokenizer, TEXTS, max_length=32)
    res = evaluate_local(base.model, data, batch_size=3)
    assert math.isclose(res.perplexity, math.exp(res.loss), rel_tol=1e-9)
    assert res.tokens == int(data.attention_mask[:, 1:].sum())


def test_fit_rejects_bad_arguments(base):
    data = encode_texts(base.tokenizer, TEXTS, max_length=32)
    with pytest.raises(ConfigError):
        fit_local(base.model, data, epochs=0, batch_size=4, lr=1e-2, seed=0)
