"""The per-process model pool: reuse, exactness against a fresh model, isolation between borrowers."""

from __future__ import annotations

import threading

import pytest
import torch

from fedunlearn.errors import ConfigError, ModelError
from fedunlearn.models import get_lora_state
from fedunlearn.training import modelpool
from fedunlearn.training.client import OrganizationClient, organization_data


@pytest.fixture()
def client(small_settings, monkeypatch):
    monkeypatch.setattr(modelpool, "MAX_IDLE", 2)
    modelpool.clear()
    yield OrganizationClient(settings=small_settings, name="org-1", data=organization_data(small_settings, "org-1"))
    modelpool.clear()


def _state(client: OrganizationClient, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: 0.05 * torch.randn(v.shape, generator=gen) for k, v in _zero(client).items()}


def _zero(client: OrganizationClient) -> dict[str, torch.Tensor]:
    from fedunlearn.models import wrap_lora
    from fedunlearn.training.client import lora_spec

    return get_lora_state(wrap_lora(client.base, lora_spec(client.settings), seed=0))


def test_a_pooled_model_trains_exactly_like_a_fresh_one(client):
    a, b = _state(client, 1), _state(client, 2)
    first, _ = client.train(a, seed=3)  # builds the pooled model
    assert modelpool.idle_count() == 1
    client.train(b, seed=4)  # dirties it with another state, optimizer steps and grads
    again, _ = client.train(a, seed=3)  # the same model, reloaded
    assert modelpool.idle_count() == 1
    fresh_model = client.model_with(a)
    from fedunlearn.training.local import fit_local

    t = client.settings.train
    fit_local(fresh_model, client.train_data, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr, seed=3,
              weight_decay=t.weight_decay)
    fresh = get_lora_state(fresh_model)
    for k in first:
        assert torch.equal(first[k], again[k]) and torch.equal(first[k], fresh[k]), k
    assert client.evaluate(a).loss == pytest.approx(client.evaluate(a).loss, abs=0)


def test_concurrent_borrowers_get_distinct_models_and_their_own_state(client):
    a, b = _state(client, 1), _state(client, 2)
    key = ("k",)
    inside = threading.Barrier(2)
    seen: dict[str, tuple[int, dict[str, torch.Tensor]]] = {}

    def use(name, state):
        with modelpool.borrow(key, client.base, _spec(client), state) as model:
            inside.wait(timeout=30)  # both hold a model at the same time
            seen[name] = (id(model), get_lora_state(model))

    threads = [threading.Thread(target=use, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert seen["a"][0] != seen["b"][0]
    assert all(torch.equal(seen["a"][1][k], a[k]) and torch.equal(seen["b"][1][k], b[k]) for k in a)
    assert modelpool.idle_count(key) == 2


def test_a_model_is_dropped_after_an_error_or_left_hooks_and_a_bad_state_is_refused(client):
    key = ("k",)
    with pytest.raises(RuntimeError, match="boom"):
        with modelpool.borrow(key, client.base, _spec(client), _state(client, 1)):
            raise RuntimeError("boom")
    assert modelpool.idle_count(key) == 0
    with modelpool.borrow(key, client.base, _spec(client), _state(client, 1)) as model:
        model.register_forward_hook(lambda *a: None)  # e.g. hooks someone forgot to remove
    assert modelpool.idle_count(key) == 0
    with modelpool.borrow(key, client.base, _spec(client), _state(client, 1)) as model:
        model(input_ids=torch.tensor([[1, 2, 3]]))  # a clean use goes back
    assert modelpool.idle_count(key) == 1
    with pytest.raises(ModelError, match="missing keys"):
        with modelpool.borrow(key, client.base, _spec(client), {}):
            raise AssertionError("never lent")
    assert modelpool.idle_count(key) == 0


def _spec(client: OrganizationClient):
    from fedunlearn.training.client import lora_spec

    return lora_spec(client.settings)


def test_the_pool_size_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("FEDUNLEARN_MODEL_POOL", "0")
    assert modelpool._max_idle() == 0
    monkeypatch.setenv("FEDUNLEARN_MODEL_POOL", "many")
    with pytest.raises(ConfigError, match="FEDUNLEARN_MODEL_POOL = 'many'"):
        modelpool._max_idle()


def test_a_pool_of_zero_keeps_nothing(client, monkeypatch):
    monkeypatch.setattr(modelpool, "MAX_IDLE", 0)
    client.evaluate(_state(client, 1))
    assert modelpool.idle_count() == 0
