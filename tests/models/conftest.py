"""Fixtures of the model tests: fresh copies of the session's tiny base model, random states."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
import torch

from fedunlearn.models import BaseModel, LoraSpec, load_base_model, pick_device

StateFactory = Callable[..., dict[str, torch.Tensor]]


@pytest.fixture()
def tiny_base(tiny_model_dir) -> BaseModel:
    """A fresh CPU copy of the session's tiny base model (built in tests/conftest.py)."""
    return load_base_model(tiny_model_dir, device=pick_device("cpu"))


@pytest.fixture()
def small_lora() -> LoraSpec:
    """Rank 4 on two projections: every adapter is a few hundred numbers."""
    return LoraSpec(r=4, alpha=8, target_modules=("q_proj", "v_proj"))


@pytest.fixture()
def make_state() -> StateFactory:
    """``make_state(like, seed, scale=0.1)``: seeded Gaussian values with the layout of `like`.

    Unlike a freshly wrapped adapter (B = 0), such a state has a non-zero ΔW.
    """

    def make(
        like: Mapping[str, torch.Tensor], seed: int, scale: float = 0.1
    ) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return {
            key: scale * torch.randn(tuple(value.shape), generator=generator)
            for key, value in sorted(like.items())
        }

    return make
