"""The record-level ε budget refuses a round before training it; DP-FedAvg's sample is keyed by a run secret."""

from __future__ import annotations

import torch
import pytest

from fedunlearn.certify import RunAudit
from fedunlearn.certify.accounting import epsilon
from fedunlearn.certify.runaudit import dp_secret
from fedunlearn.config import DpSettings
from fedunlearn.errors import FederationError
from fedunlearn.federation.dpfedavg import dp_fedavg, keyed_generator, keyed_poisson_sample, poisson_sample
from fedunlearn.ledger import Ledger
from fedunlearn.models import LoraSpec, get_lora_state, load_base_model, pick_device, wrap_lora
from fedunlearn.training.dp import PrivacyBudgetError, check_round_budget, fit_local_dp, planned_mechanism
from fedunlearn.training.local import encode_texts
from tests.certify.conftest import grid_for, small

ORGS = [f"org-{i}" for i in range(400)]


def test_predicted_epsilon_is_the_accountants_and_over_budget_is_refused():
    q, steps = planned_mechanism(17, batch_size=8, epochs=2)
    assert q == pytest.approx(8 / 17) and steps == 2 * 3
    assert planned_mechanism(8, batch_size=8, epochs=2) == (1.0, 2)
    planned = (1.0, 1.0, 2)  # a full-batch round of 2 steps: fast to account
    one = epsilon([planned], 1e-5)
    assert check_round_budget([], planned, delta=1e-5, max_epsilon=0.0) == pytest.approx(one)
    assert check_round_budget([], planned, delta=1e-5, max_epsilon=one * 1.01) == pytest.approx(one)
    with pytest.raises(PrivacyBudgetError, match="refused before training"):
        check_round_budget([], planned, delta=1e-5, max_epsilon=one * 0.99)  # the first round alone
    with pytest.raises(PrivacyBudgetError, match="over dp.max-epsilon"):  # history + this round
        check_round_budget([planned], planned, delta=1e-5, max_epsilon=one * 1.01)


def test_fit_local_dp_refuses_a_round_over_budget_without_taking_a_step(tiny_model_dir):
    base = load_base_model(tiny_model_dir, device=pick_device("cpu"))
    model = wrap_lora(base, LoraSpec(r=4, alpha=8, target_modules=("q_proj", "v_proj")), seed=3)
    data = encode_texts(base.tokenizer, [f"record {i} of the vault" for i in range(8)], max_length=16)
    before = get_lora_state(model)
    one = epsilon([(1.0, 1.0, 1)], 1e-5)  # batch size 8 of 8 records: q = 1, one step
    with pytest.raises(PrivacyBudgetError, match=f"to {one:.3f}"):
        fit_local_dp(model, data, epochs=1, batch_size=8, lr=0.5, seed=0, noise_multiplier=1.0, max_grad_norm=1.0,
                     max_epsilon=one / 2, delta=1e-5)
    after = get_lora_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing trained
    with pytest.raises(PrivacyBudgetError):  # earlier rounds count too
        fit_local_dp(model, data, epochs=1, batch_size=8, lr=0.5, seed=0, noise_multiplier=1.0, max_grad_norm=1.0,
                     max_epsilon=one * 1.01, delta=1e-5, history=[(1.0, 1.0, 1)])
    result = fit_local_dp(model, data, epochs=1, batch_size=8, lr=0.5, seed=0, noise_multiplier=1.0,
                          max_grad_norm=1.0, max_epsilon=one * 1.01, delta=1e-5)
    assert result.dp_steps == 1


def test_a_federated_run_refuses_its_first_round_over_the_record_budget(tiny_model_dir, tmp_path):
    settings = small(tiny_model_dir, tmp_path / "run", train={"rounds": 1, "local_epochs": 1, "batch_size": 32,
                                                               "lr": 2e-2},  # q = 1: ε of one round is 4.4
                     dp={"record_level": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "max_epsilon": 1.0},
                     run={"dir": str(tmp_path / "run"), "discovery_timeout": 30.0, "retries": 0})
    from fedunlearn.federation.workflow import train_workflow

    with pytest.raises(FederationError, match="PrivacyBudgetError.*refused before training"):
        train_workflow(grid_for(settings), settings)
    with Ledger.open(tmp_path / "run") as ledger:
        assert all(ledger.head(s).round == 0 for s in range(3))  # nothing committed
    with RunAudit.open(tmp_path / "run") as audit:
        assert not [u for _, e in audit.events("round-commit") for u in e["updates"]]  # no update was trained


def test_keyed_sampling_replays_for_a_retrain_and_differs_between_secrets(tmp_path):
    a, b = b"\x01" * 32, b"\x02" * 32
    first = keyed_poisson_sample(ORGS, 0.3, a, shard=1, rnd=4)
    assert 80 < len(first) < 160
    # a retrain of the shard without one organization samples exactly the same others
    subject = first[0]
    retrain = keyed_poisson_sample([o for o in ORGS if o != subject], 0.3, a, shard=1, rnd=4)
    assert retrain == first[1:]
    assert poisson_sample(ORGS, 0.3, key=a, shard=1, rnd=4) == first
    # other secret, round or shard: another sample
    assert keyed_poisson_sample(ORGS, 0.3, b, shard=1, rnd=4) != first
    assert keyed_poisson_sample(ORGS, 0.3, a, shard=1, rnd=5) != first
    assert keyed_poisson_sample(ORGS, 0.3, a, shard=2, rnd=4) != first
    # the noise is keyed the same way: same secret, same noise; another secret, other noise
    dp = DpSettings(client_level=True, client_noise_multiplier=1.0, client_clip=0.5, client_sample_rate=0.3)
    base = {"w": torch.zeros(50)}
    noise = [dp_fedavg(base, [], eligible=4, dp=dp, rng=keyed_generator(k, shard=1, rnd=4)).state["w"] for k in (a, a, b)]
    assert torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], noise[2])


def test_the_run_secret_is_kept_with_the_run_secrets_and_not_derived_from_the_seed(tmp_path):
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    first = dp_secret(tmp_path / "one")
    assert dp_secret(tmp_path / "one") == first  # stable for the run (a retrain reads the same file)
    assert (tmp_path / "one" / "secrets" / "dp-sampling.key").stat().st_mode & 0o077 == 0
    assert dp_secret(tmp_path / "two") != first  # random per run: nothing public derives it
