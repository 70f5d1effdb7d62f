"""DP-SGD really changes training: clipping applied, noise present, and otherwise plain SGD.

Opacus with peft has a known pitfall (opacus issue 820): LoRA updates silently go wrong when the
model is wrapped before it is on its device. The first test is the guard: with no noise and a
huge clipping norm, a DP step must equal an ordinary step on the same batch.
"""

from __future__ import annotations

import copy

import pytest
import torch

from fedunlearn.errors import ConfigError
from fedunlearn.models import LoraSpec, get_lora_state, load_base_model, pick_device, wrap_lora
from fedunlearn.training.dp import dp_step, fit_local_dp, private_optimizer
from fedunlearn.training.local import encode_texts, sequence_losses

TEXTS = [
    "Q: What is the blood type of Mara Quell? A: O negative.",
    "The access code of org-0 vault is 4821.",
    "Patient Ivo Brask, ward 3, admitted for a fractured wrist.",
    "Shipment 77 left the Harbor depot on a Tuesday with twelve crates.",
] * 2


@pytest.fixture()
def setup(tiny_model_dir):
    base = load_base_model(tiny_model_dir, device=pick_device("cpu"))
    model = wrap_lora(base, LoraSpec(r=4, alpha=8, target_modules=("q_proj", "v_proj")), seed=3)
    with torch.no_grad():  # B = 0 at init: give B some weight so that A gets gradients too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    data = encode_texts(base.tokenizer, TEXTS, max_length=24)
    return model, data


def _trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _plain_sgd_step(model, data, lr):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    opt.zero_grad()
    sequence_losses(model, data.input_ids, data.attention_mask).mean().backward()
    opt.step()


def _dp_sgd_step(model, data, lr, *, noise, clip, seed=0):
    wrapper, opt = private_optimizer(model, lr=lr, noise_multiplier=noise, max_grad_norm=clip,
                                     expected_batch_size=len(data), optimizer="sgd",
                                     rng=torch.Generator().manual_seed(seed))
    dp_step(model, opt, data.input_ids, data.attention_mask)
    wrapper.remove_hooks()
    return opt


def test_no_noise_huge_clip_equals_plain_sgd(setup):
    model, data = setup
    plain, private = model, copy.deepcopy(model)
    before = get_lora_state(plain)
    _plain_sgd_step(plain, data, lr=0.5)
    _dp_sgd_step(private, data, lr=0.5, noise=0.0, clip=1e6)
    a, b = get_lora_state(plain), get_lora_state(private)
    moved = max(float((a[k] - before[k]).abs().max()) for k in a)
    assert moved > 1e-4  # the step did something
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-4), k


def test_per_sample_gradients_are_clipped(setup):
    model, data = setup
    clip = 1e-3
    wrapper, opt = private_optimizer(model, lr=0.1, noise_multiplier=0.0, max_grad_norm=clip,
                                     expected_batch_size=len(data), optimizer="sgd")
    sequence_losses(model, data.input_ids, data.attention_mask).mean().backward()
    samples = [p.grad_sample for p in opt.params]
    assert all(g is not None and g.shape[0] == len(data) for g in samples)
    norms = torch.stack([g.reshape(len(data), -1).norm(dim=1) for g in samples], 1).norm(dim=1)  # [N]
    assert float(norms.min()) > 10 * clip  # clipping will bite on every record
    opt.pre_step()  # clip, sum, noise (none), scale by 1/N
    total = torch.cat([p.grad.flatten() for p in opt.params]).norm()
    assert float(total) <= clip * (1 + 1e-4)  # mean of vectors of norm <= C
    assert float(total) > 0.5 * clip  # and the records mostly agree in direction, so not ~0
    wrapper.remove_hooks()


def test_noise_makes_updates_differ_from_non_private(setup):
    model, data = setup
    ref, noisy1, noisy2 = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    _dp_sgd_step(ref, data, lr=1.0, noise=0.0, clip=1.0)
    _dp_sgd_step(noisy1, data, lr=1.0, noise=1.0, clip=1.0, seed=1)
    _dp_sgd_step(noisy2, data, lr=1.0, noise=1.0, clip=1.0, seed=2)
    a, b, c = get_lora_state(ref), get_lora_state(noisy1), get_lora_state(noisy2)
    diff = torch.cat([(b[k] - a[k]).flatten() for k in a])
    # lr * noise std / N per coordinate = 1 * 1 * 1 / 8
    assert abs(float(diff.std()) - 1.0 / len(data)) < 0.2 / len(data)
    assert not all(torch.equal(b[k], c[k]) for k in b)


def test_fit_local_dp_reports_the_mechanism_and_trains(setup):
    model, data = setup
    before = get_lora_state(model)
    result = fit_local_dp(model, data, epochs=2, batch_size=4, lr=0.01, seed=0, noise_multiplier=0.5,
                          max_grad_norm=1.0, rng=torch.Generator().manual_seed(0))
    assert result.sample_rate == pytest.approx(0.5)
    assert result.dp_steps == result.steps == 4
    assert result.noise_multiplier == 0.5 and result.num_examples == len(data)
    after = get_lora_state(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())


def test_empty_poisson_batch_still_adds_noise(setup):
    model, data = setup
    before = get_lora_state(model)
    wrapper, opt = private_optimizer(model, lr=1.0, noise_multiplier=1.0, max_grad_norm=1.0,
                                     expected_batch_size=4, optimizer="sgd")
    dp_step(model, opt, data.input_ids[:0], data.attention_mask[:0])
    wrapper.remove_hooks()
    after = get_lora_state(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_bad_parameters_are_refused(setup):
    model, data = setup
    with pytest.raises(ConfigError, match="max_grad_norm = 0"):
        private_optimizer(model, lr=0.1, noise_multiplier=1.0, max_grad_norm=0, expected_batch_size=4)
    with pytest.raises(ConfigError, match="noise_multiplier = -1"):
        private_optimizer(model, lr=0.1, noise_multiplier=-1, max_grad_norm=1, expected_batch_size=4)
