"""Fixtures for the evaluation tests: the tiny base model and a LoRA copy that memorized a canary."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from fedunlearn.data import Consortium, generate_consortium
from fedunlearn.models import BaseModel, LoraSpec, load_base_model, pick_device, wrap_lora
from fedunlearn.training.local import encode_texts, fit_local, set_cpu_threads

MAX_LENGTH = 48
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


@dataclass
class Memorized:
    """A tiny consortium of one organization, the frozen base and a LoRA model trained on it."""

    consortium: Consortium
    base: BaseModel
    model: torch.nn.Module  # PEFT model, eval mode


@pytest.fixture(scope="session")
def tiny_base(tiny_model_dir) -> BaseModel:
    base = load_base_model(tiny_model_dir, device=pick_device("cpu"))
    set_cpu_threads(base.model)
    return base


@pytest.fixture(scope="session")
def memorized(tiny_base) -> Memorized:
    """LoRA fitted 40 epochs on 4 records and one canary repeated 4 times (about 2 s).

    The tiny base (hidden 32, 1 layer, barely pre-trained) cannot memorize through attention
    adapters alone (loss 5.5 -> 5.2 in 100 epochs); with LoRA on the MLP and ``lm_head`` too it
    reaches a loss of ~0.06 and ranks the canary's secret first among 10^3 candidates.
    """
    consortium = generate_consortium(
        organizations=["org-0"], records_per_org=4, holdout_per_org=12, canaries_per_org=1,
        canary_repeats=4, canary_digits=3, never_inserted=6, public_documents=20, seed=3,
    )
    spec = LoraSpec(r=16, alpha=32, target_modules=TARGETS)
    model = wrap_lora(tiny_base, spec, seed=0)
    data = encode_texts(tiny_base.tokenizer, consortium.organizations[0].texts("train"), max_length=MAX_LENGTH)
    fit_local(model, data, epochs=40, batch_size=8, lr=1e-2, seed=0)
    model.eval()
    return Memorized(consortium=consortium, base=tiny_base, model=model)
