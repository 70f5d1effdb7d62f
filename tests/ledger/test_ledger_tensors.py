"""Canonical bytes and identity hashes of tensor states."""

from __future__ import annotations

import hashlib
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedunlearn.errors import LedgerError
from fedunlearn.ledger import state_from_bytes, state_sha256, state_to_bytes

_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64]
_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz._0123456789", min_size=1, max_size=24)
_shapes = st.lists(st.integers(min_value=0, max_value=4), min_size=0, max_size=3)


@st.composite
def states(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    names = draw(st.lists(_names, min_size=0, max_size=5, unique=True))
    state = {}
    for name in names:
        shape = draw(_shapes)
        dtype = draw(st.sampled_from(_DTYPES))
        seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
        generator = torch.Generator().manual_seed(seed)
        state[name] = (torch.randn(shape, generator=generator) * 100).to(dtype)
    return state


@settings(max_examples=60, deadline=None)
@given(state=states(), shuffle_seed=st.integers(min_value=0, max_value=1000))
def test_bytes_round_trip_and_hash_ignore_insertion_order(
    state: dict[str, torch.Tensor], shuffle_seed: int
) -> None:
    items = list(state.items())
    random.Random(shuffle_seed).shuffle(items)
    reordered = dict(items)
    data = state_to_bytes(state)
    assert state_to_bytes(reordered) == data
    assert state_sha256(reordered) == state_sha256(state) == hashlib.sha256(data).hexdigest()
    loaded = state_from_bytes(data)
    assert list(loaded) == sorted(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)
    assert state_to_bytes(loaded) == data


def test_definition_matches_plain_safetensors() -> None:
    import safetensors.torch

    state = {"b": torch.ones(2, 3), "a": torch.arange(4.0)}
    assert state_to_bytes(state) == safetensors.torch.save(dict(sorted(state.items())))


def test_views_and_non_contiguous_tensors_serialize_like_copies() -> None:
    base = torch.arange(12.0).reshape(3, 4)
    state = {"t": base.T, "row": base[0], "whole": base}  # views sharing one storage
    copies = {name: tensor.contiguous().clone() for name, tensor in state.items()}
    assert state_to_bytes(state) == state_to_bytes(copies)


def test_hash_changes_with_one_value() -> None:
    state = {"w": torch.zeros(3)}
    other = {"w": torch.tensor([0.0, 0.0, 1e-7])}
    assert state_sha256(state) != state_sha256(other)


@pytest.mark.parametrize(
    ("state", "fragment"),
    [({1: torch.zeros(1)}, "expected str"), ({"w": [1.0]}, "torch.Tensor"), ([1, 2], "mapping")],
)
def test_invalid_states_are_refused(state: object, fragment: str) -> None:
    with pytest.raises(LedgerError, match=fragment):
        state_to_bytes(state)  # type: ignore[arg-type]


def test_garbage_bytes_are_refused() -> None:
    with pytest.raises(LedgerError, match="not a valid safetensors"):
        state_from_bytes(b"\x00" * 5)
