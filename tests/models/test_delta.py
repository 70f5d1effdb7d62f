"""ΔW arithmetic: FedAvg of factors, exact concatenated combination, serialization."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedunlearn.errors import ConfigError, ModelError
from fedunlearn.models import (
    average_states,
    combine_exact,
    delta_weights,
    lora_modules,
    state_from_bytes,
    state_sha256,
    state_to_bytes,
)

PREFIXES = ("base_model.model.model.layers.0.self_attn.q_proj", "base_model.model.model.layers.0.self_attn.v_proj")


def make(seed: int, r: int = 3, d_in: int = 5, d_out: int = 4) -> dict[str, torch.Tensor]:
    """A two-module state with seeded values of trained-LoRA size (A [r, in], B [out, r])."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for prefix in PREFIXES:
        state[f"{prefix}.lora_A.weight"] = 0.3 * torch.randn(r, d_in, generator=g)
        state[f"{prefix}.lora_B.weight"] = 0.1 * torch.randn(d_out, r, generator=g)
    return state


def weighted_sum(deltas: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    return {k: sum(w * d[k].double() for d, w in zip(deltas, weights)) for k in deltas[0]}


def test_lora_modules_pairs_factors():
    state = make(0)
    modules = lora_modules(state)
    assert list(modules) == sorted(PREFIXES)
    a, b = modules[PREFIXES[0]]
    assert a is state[f"{PREFIXES[0]}.lora_A.weight"] and b is state[f"{PREFIXES[0]}.lora_B.weight"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update({"x.bias": torch.zeros(1)}), "not a LoRA factor"),
        (lambda s: s.pop(f"{PREFIXES[0]}.lora_B.weight"), "lora_B.weight"),
        (lambda s: s.update({f"{PREFIXES[0]}.lora_B.weight": torch.zeros(4, 2)}), "do not compose"),
        (lambda s: s.clear(), "empty"),
    ],
)
def test_lora_modules_rejects_malformed(mutate, message):
    state = make(0)
    mutate(state)
    with pytest.raises(ModelError, match=message):
        lora_modules(state)


def test_delta_weights_is_scaled_product():
    state = make(1)
    deltas = delta_weights(state, scaling=2.5)
    for prefix in PREFIXES:
        a, b = state[f"{prefix}.lora_A.weight"], state[f"{prefix}.lora_B.weight"]
        assert deltas[prefix].shape == (4, 5)
        torch.testing.assert_close(deltas[prefix], 2.5 * b @ a)
    with pytest.raises(ConfigError, match="scaling"):
        delta_weights(state, float("inf"))


def test_average_states_math():
    s0, s1 = make(0), make(1)
    avg = average_states([s0, s1], [1.0, 3.0])
    for key in s0:
        torch.testing.assert_close(avg[key], 0.25 * s0[key] + 0.75 * s1[key])
    assert list(avg) == sorted(s0)
    # Only relative weights matter (example counts work as they are).
    same = average_states([s0, s1], [10, 30])
    assert all(torch.allclose(same[k], avg[k], atol=0, rtol=1e-6) for k in avg)
    # Averaging factors is not averaging ΔW: that is why combine_exact exists.
    d_avg = delta_weights(avg, 1.0)[PREFIXES[0]]
    d_exact = weighted_sum([delta_weights(s0, 1.0), delta_weights(s1, 1.0)], [0.25, 0.75])[PREFIXES[0]]
    assert not torch.allclose(d_avg.double(), d_exact, atol=1e-3)


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1.0], "one weight per state"), ([1.0, -1.0], "non-negative"), ([0.0, 0.0], "positive sum"),
     ([1.0, float("nan")], "finite")],
)
def test_average_states_validates_weights(weights, message):
    with pytest.raises(ConfigError, match=message):
        average_states([make(0), make(1)], weights)


def test_states_must_share_layout():
    with pytest.raises(ModelError, match="state 1 does not match state 0"):
        average_states([make(0), make(1, r=2)], [1, 1])
    with pytest.raises(ModelError, match="state 1 does not match state 0"):
        combine_exact([make(0), make(1, r=2)], [0.5, 0.5])
    with pytest.raises(ConfigError, match="at least one"):
        combine_exact([], [])


def test_combine_exact_matches_weighted_delta_sum():
    states = [make(seed) for seed in range(3)]
    weights = [0.2, 0.5, 0.3]
    combined = combine_exact(states, weights)
    a = combined[f"{PREFIXES[0]}.lora_A.weight"]
    b = combined[f"{PREFIXES[0]}.lora_B.weight"]
    assert a.shape == (9, 5) and b.shape == (4, 9)  # [S*r, in], [out, S*r]
    scaling = 16 / 3  # alpha / r, unchanged by scaling both by S
    merged = delta_weights(combined, scaling)
    expected = weighted_sum([delta_weights(s, scaling) for s in states], weights)
    for prefix in PREFIXES:
        assert torch.allclose(merged[prefix].double(), expected[prefix], atol=1e-6, rtol=0)


def test_combine_exact_uses_weights_as_given():
    state = make(4)
    doubled = delta_weights(combine_exact([state], [2.0]), 1.0)
    single = delta_weights(state, 1.0)
    for prefix in PREFIXES:
        torch.testing.assert_close(doubled[prefix], 2.0 * single[prefix])


def test_bytes_round_trip_and_hash():
    state = make(5)
    data = state_to_bytes(state)
    back = state_from_bytes(data)
    assert list(back) == sorted(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    shuffled = dict(reversed(list(state.items())))
    assert state_to_bytes(shuffled) == data
    assert state_sha256(shuffled) == state_sha256(state)
    assert len(state_sha256(state)) == 64
    changed = dict(state)
    key = next(iter(changed))
    changed[key] = changed[key].clone()
    changed[key][0, 0] += 1e-6
    assert state_sha256(changed) != state_sha256(state)


def test_views_of_one_tensor_serialize():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {"x.lora_A.weight": base[:2], "x.lora_B.weight": base.t()[:, :2]}
    back = state_from_bytes(state_to_bytes(state))
    assert torch.equal(back["x.lora_B.weight"], base.t()[:, :2])


def test_from_bytes_rejects_garbage():
    with pytest.raises(ModelError, match="safetensors"):
        state_from_bytes(b"definitely not safetensors")


seeds = st.integers(min_value=0, max_value=2**31 - 1)
weights_strategy = st.floats(min_value=-3, max_value=3, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, r=st.integers(1, 4), scaling=st.floats(0.25, 8))
def test_property_single_state_unit_weight_is_identity(seed, r, scaling):
    state = make(seed, r=r)
    combined = combine_exact([state], [1.0])
    assert all(torch.equal(combined[k], state[k]) for k in state)
    for prefix, delta in delta_weights(combined, scaling).items():
        torch.testing.assert_close(delta, delta_weights(state, scaling)[prefix])


@settings(max_examples=40, deadline=None)
@given(
    seed=seeds,
    r=st.integers(1, 4),
    weights=st.lists(weights_strategy, min_size=1, max_size=5),
)
def test_property_combination_is_linear_in_delta_w(seed, r, weights):
    states = [make(seed + i, r=r) for i in range(len(weights))]
    merged = delta_weights(combine_exact(states, weights), 0.5)
    expected = weighted_sum([delta_weights(s, 0.5) for s in states], weights)
    for prefix in PREFIXES:
        assert torch.allclose(merged[prefix].double(), expected[prefix], atol=1e-5, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, count=st.integers(1, 4), scale=st.floats(0.01, 100))
def test_property_average_of_copies_is_the_state(seed, count, scale):
    state = make(seed)
    avg = average_states([state] * count, [scale] * count)
    for key in state:
        torch.testing.assert_close(avg[key], state[key])
