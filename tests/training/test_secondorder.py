"""Per-record gradients, Fisher and Hessian local solves (GIANT's local step) on the tiny model."""

from __future__ import annotations

import pytest
import torch

from fedunlearn.errors import ConfigError
from fedunlearn.models import LoraSpec, load_base_model, pick_device, wrap_lora
from fedunlearn.training.local import encode_texts, fit_local
from fedunlearn.training.secondorder import hessian_vector_product, local_solve, loss_gradient, per_example_gradients

TEXTS = [
    "Q: What is the blood type of Mara Quell? A: O negative.",
    "The access code of org-0 vault is 4821.",
    "Patient Ivo Brask, ward 3, admitted for a fractured wrist.",
    "Shipment 77 left the Harbor depot on a Tuesday with twelve crates.",
    "A short one.",
]


@pytest.fixture(scope="module")
def trained(tiny_model_dir):
    base = load_base_model(tiny_model_dir, device=pick_device("cpu"))
    model = wrap_lora(base, LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj")), seed=0)
    data = encode_texts(base.tokenizer, TEXTS, max_length=32)
    fit_local(model, data, epochs=3, batch_size=2, lr=2e-2, seed=0)  # B ≠ 0: a non-trivial curvature
    return model, data


def _flat(d):
    return torch.cat([d[k].double().reshape(-1) for k in sorted(d)])


def test_per_record_gradients_average_to_the_loss_gradient(trained):
    model, data = trained
    mean, G, loss = per_example_gradients(model, data)
    ref = loss_gradient(model, data, batch_size=2)
    assert G.shape[0] == len(data) and abs(loss - ref.loss) < 1e-5
    assert torch.allclose(_flat(mean), _flat(ref.gradient), atol=1e-6)


def test_batched_per_record_gradients_equal_one_backward_per_record(trained):
    """Opacus' hooks on padded batches give exactly each record's own gradient, and leave no trace."""
    from fedunlearn.models.lora import _lora_parameters
    from fedunlearn.training.local import sequence_losses
    from fedunlearn.training.modelpool import _clean

    model, data = trained
    params = _lora_parameters(model)
    ref = []
    for j in range(len(data)):  # one unpadded record at a time: the definition
        width = int(data.attention_mask[j].sum())
        loss = sequence_losses(model, data.input_ids[j : j + 1, :width], data.attention_mask[j : j + 1, :width]).sum()
        ref.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))]))
    ref = torch.stack(ref)
    for batch_size in (1, 2, len(data)):  # the last batch pads the short records the most
        _, G, _ = per_example_gradients(model, data, batch_size=batch_size)
        assert torch.allclose(G, ref, atol=1e-6, rtol=1e-4), batch_size
    assert _clean(model) and all(p.grad is None for p in model.parameters())
    assert not any(hasattr(m, "activations") for m in model.modules())


def test_fisher_local_solve_solves_its_system(trained):
    model, data = trained
    g = loss_gradient(model, data).gradient
    res = local_solve(model, data, g, curvature="fisher", damping=0.1, iterations=200, tolerance=1e-8, hessian_scale=0.5)
    _, G, _ = per_example_gradients(model, data)
    Gd = G.double()
    A = 0.5 * Gd.T @ Gd / G.shape[0] + 0.1 * torch.eye(G.shape[1], dtype=torch.float64)  # known system
    expected = torch.linalg.solve(A, _flat(g))
    assert res.solve.converged and res.passes == 1 and res.num_examples == len(data)
    assert torch.allclose(_flat(res.x), expected, rtol=1e-3, atol=1e-5 * float(expected.abs().max()))
    assert torch.allclose(_flat(res.gradient), _flat(g), atol=1e-6)


def test_hessian_local_solve_has_a_small_residual(trained):
    model, data = trained
    g = loss_gradient(model, data).gradient
    res = local_solve(model, data, g, curvature="hessian", damping=1.0, iterations=20, tolerance=1e-4)
    hx = hessian_vector_product(model, data, res.x)
    r = _flat(g) - (_flat(hx) + 1.0 * _flat(res.x))
    assert res.passes == 1 + 2 * res.solve.iterations
    if res.solve.stopped == "tolerance":  # CG stops early only on indefinite curvature (then it says so)
        assert float(r.norm() / _flat(g).norm()) < 1e-3


def test_local_solve_checks_its_input(trained):
    model, data = trained
    g = loss_gradient(model, data).gradient
    with pytest.raises(ConfigError, match="curvature 'gauss'"):
        local_solve(model, data, g, curvature="gauss", damping=1.0, iterations=2, tolerance=1e-3)
    with pytest.raises(ConfigError, match="right-hand side"):
        local_solve(model, data, {"x": torch.ones(2)}, damping=1.0, iterations=2, tolerance=1e-3)
