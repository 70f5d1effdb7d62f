"""LoraSpec, wrap_lora and canonical LoRA states."""

from __future__ import annotations

import re

import pytest
import torch
from peft import PeftModel

from fedunlearn.errors import ConfigError, ModelError
from fedunlearn.models import (
    LoraSpec,
    get_lora_state,
    lora_state_keys,
    set_lora_state,
    wrap_lora,
)

CANONICAL = re.compile(r"^base_model\.model\.model\.layers\.\d+\.self_attn\.[qkvo]_proj\.lora_[AB]\.weight$")


def test_spec_defaults_and_scaling():
    spec = LoraSpec()
    assert (spec.r, spec.alpha, spec.dropout) == (8, 16, 0.0)
    assert spec.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert spec.scaling == 2.0
    assert LoraSpec(target_modules=["q_proj"]).target_modules == ("q_proj",)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "LoraSpec.r"),
        ({"r": 2.0}, "LoraSpec.r"),
        ({"alpha": -1}, "LoraSpec.alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"target_modules": "q_proj"}, "tuple of module names"),
        ({"target_modules": ()}, "at least one"),
        ({"target_modules": ("q_proj", "q_proj")}, "repeats"),
    ],
)
def test_spec_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LoraSpec(**kwargs)


def test_wrap_is_deterministic_from_seed(tiny_base):
    first = get_lora_state(wrap_lora(tiny_base, LoraSpec(), seed=7))
    again = get_lora_state(wrap_lora(tiny_base, LoraSpec(), seed=7))
    other = get_lora_state(wrap_lora(tiny_base, LoraSpec(), seed=8))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    a_keys = [k for k in first if ".lora_A." in k]
    assert all(not torch.equal(first[k], other[k]) for k in a_keys)
    # B starts at zero, so a fresh adapter does not change the model.
    assert all(not first[k].any() for k in first if ".lora_B." in k)


def test_init_is_peft_default_drawn_from_seed_alone(tiny_base):
    """A ~ Kaiming-uniform(a=√5) from a CPU generator in sorted key order, whatever the device."""
    state = get_lora_state(wrap_lora(tiny_base, LoraSpec(r=2), seed=3))
    generator = torch.Generator().manual_seed(3)
    for key, value in state.items():
        if ".lora_A." in key:
            expected = torch.empty(value.shape)
            torch.nn.init.kaiming_uniform_(expected, a=5**0.5, generator=generator)
            assert torch.equal(value, expected)
            assert value.abs().max() <= value.shape[1] ** -0.5  # PEFT's bound 1/sqrt(in)


def test_wrap_leaves_global_rng_and_base_alone(tiny_base):
    before = {k: v.clone() for k, v in tiny_base.model.state_dict().items()}
    torch.manual_seed(99)
    expected = torch.rand(2)
    torch.manual_seed(99)
    wrap_lora(tiny_base, LoraSpec(), seed=1)
    assert torch.equal(torch.rand(2), expected)
    after = tiny_base.model.state_dict()
    assert before.keys() == after.keys()  # no adapter injected into the shared base
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_only_lora_is_trainable(tiny_base):
    model = wrap_lora(tiny_base, LoraSpec(), seed=0)
    assert isinstance(model, PeftModel) and model.training
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    layers = tiny_base.model.config.num_hidden_layers
    assert len(trainable) == layers * 4 * 2


def test_state_format(tiny_base):
    model = wrap_lora(tiny_base, LoraSpec(r=4), seed=0)
    state = get_lora_state(model)
    assert list(state) == sorted(state) == lora_state_keys(model)
    hidden = tiny_base.model.config.hidden_size
    for key, value in state.items():
        assert CANONICAL.match(key), key
        assert value.device.type == "cpu" and value.dtype == torch.float32
        assert value.is_contiguous() and not value.requires_grad
        assert tuple(value.shape) == ((4, hidden) if ".lora_A." in key else (hidden, 4))
    # Clones: changing the state does not touch the model.
    next(iter(state.values())).add_(1.0)
    assert not torch.equal(get_lora_state(model)[next(iter(state))], next(iter(state.values())))


def test_set_get_round_trip(tiny_base, small_lora, make_state):
    model = wrap_lora(tiny_base, small_lora, seed=0)
    state = make_state(get_lora_state(model), seed=1)
    set_lora_state(model, {k: v.double() for k, v in state.items()})  # any dtype is accepted
    restored = get_lora_state(model)
    assert all(torch.equal(restored[k], state[k]) for k in state)


def test_set_changes_outputs(tiny_base, small_lora, make_state):
    model = wrap_lora(tiny_base, small_lora, seed=0)
    ids = torch.tensor([[0, 5, 9, 14]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        set_lora_state(model, make_state(get_lora_state(model), seed=2))
        after = model(input_ids=ids).logits
    assert not torch.allclose(before, after)


def test_set_is_strict(tiny_base, small_lora):
    model = wrap_lora(tiny_base, small_lora, seed=0)
    state = get_lora_state(model)
    keys = list(state)
    missing = dict(state)
    del missing[keys[0]]
    with pytest.raises(ModelError, match=re.escape(f"missing keys ['{keys[0]}']")):
        set_lora_state(model, missing)
    extra = {**state, "base_model.model.lm_head.lora_A.weight": torch.zeros(4, 4)}
    with pytest.raises(ModelError, match="unexpected keys .*lm_head"):
        set_lora_state(model, extra)
    wrong = {**state, keys[1]: torch.zeros(3, 3)}
    with pytest.raises(ModelError, match=re.escape(f"{keys[1]} has shape [3, 3]")):
        set_lora_state(model, wrong)
    nan = {**state, keys[2]: torch.full_like(state[keys[2]], float("nan"))}
    with pytest.raises(ModelError, match="NaN"):
        set_lora_state(model, nan)
    # Nothing was written by the failed calls.
    assert all(torch.equal(get_lora_state(model)[k], state[k]) for k in state)


def test_non_peft_model_is_refused(tiny_base):
    with pytest.raises(ModelError, match="wrap_lora"):
        get_lora_state(tiny_base.model)  # type: ignore[arg-type]


def test_unknown_target_module(tiny_base):
    with pytest.raises(ModelError, match="gate_projection"):
        wrap_lora(tiny_base, LoraSpec(target_modules=("gate_projection",)), seed=0)


def test_inplace_wrap_cannot_be_repeated(tiny_base):
    wrap_lora(tiny_base, LoraSpec(), seed=0, inplace=True)
    with pytest.raises(ModelError, match="load a fresh base"):
        wrap_lora(tiny_base, LoraSpec(), seed=0)


def test_seed_must_be_int(tiny_base):
    with pytest.raises(ConfigError, match="seed"):
        wrap_lora(tiny_base, LoraSpec(), seed="0")  # type: ignore[arg-type]
