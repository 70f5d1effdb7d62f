"""The ε budget stops an organization before a round would exceed it; DP-FedAvg's sample is keyed by a run secret."""

from __future__ import annotations

import json

import pytest
import torch

from fedunlearn.certify import RunAudit, verify_run
from fedunlearn.certify.accounting import epsilon
from fedunlearn.certify.budget import record_history
from fedunlearn.certify.runaudit import dp_secret
from fedunlearn.config import DpSettings, OrganizationSettings
from fedunlearn.federation import protocol
from fedunlearn.federation.dpfedavg import dp_fedavg, keyed_generator, keyed_poisson_sample, poisson_sample
from fedunlearn.ledger import Ledger
from fedunlearn.models import LoraSpec, get_lora_state, load_base_model, pick_device, wrap_lora
from fedunlearn.progress import Reporter
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


class Messages(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def _train_rounds(grid) -> list[int]:
    return [int(m.content["config"]["round"]) for m in grid.sent if m.metadata.message_type == "train"]


def _budget_records(run_dir) -> dict[str, dict]:
    with Ledger.open(run_dir) as ledger:
        return {k.split("/", 1)[1]: json.loads(v) for k, v in ledger.meta.items() if k.startswith("budget-exhausted/")}


def test_a_first_round_over_the_record_budget_stops_cleanly_and_exports(tiny_model_dir, tmp_path):
    settings = small(tiny_model_dir, tmp_path / "run", train={"rounds": 2, "local_epochs": 1, "batch_size": 32,
                                                               "lr": 2e-2},  # q = 1: ε of one round is 4.4
                     dp={"record_level": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "max_epsilon": 1.0},
                     run={"dir": str(tmp_path / "run"), "discovery_timeout": 30.0, "retries": 0})
    from fedunlearn.federation.workflow import train_workflow

    grid, said = grid_for(settings), Messages()
    report = train_workflow(grid, settings, reporter=said)  # no FederationError: a clean stop
    assert _train_rounds(grid) == [1, 1, 1]  # each organization refused round 1; round 2 was never asked
    assert any("no round was trained" in line and "no model to export" in line for line in said.lines)
    assert report.served is None and not (report.run_dir / "export").exists()
    spent = _budget_records(report.run_dir)
    assert sorted(spent) == ["org-0", "org-1", "org-2"]
    assert all(r["by"] == "organization" and r["round"] == 1 and r["from_round"] == 2 and r["epsilon"] > 1.0
               for r in spent.values())
    with Ledger.open(report.run_dir) as ledger:
        for s in range(3):  # round 1 is a carry-over of the initial adapter: nothing was trained
            assert ledger.head(s).round == 1 and not ledger.contributions(ledger.head(s).id)
            assert ledger.head(s).hash == ledger.chain(s)[0].hash
            assert ledger.members(s, 1) == [f"org-{s}"] and ledger.members(s, 2) == []  # out from round 2 on
        assert ledger.served() is None
    with RunAudit.open(report.run_dir) as audit:
        assert not [u for _, e in audit.events("round-commit") for u in e["updates"]]  # no update was trained
        logged = [e for _, e in audit.events("budget-exhausted")]
        assert sorted(e["org"] for e in logged) == sorted(audit.subject(f"org-{i}") for i in range(3))
        assert all(e["by"] == "organization" and e["max_epsilon"] == "1" for e in logged)
    assert "org-0" not in (report.run_dir / "audit.sqlite").read_bytes().decode("latin-1")  # keyed hashes only
    assert verify_run(report.run_dir).ok
    # resuming the stopped run trains nothing and does not ask anyone again
    again = grid_for(settings)
    train_workflow(again, settings, reporter=Messages())
    assert _train_rounds(again) == []


def test_the_organizations_check_counts_its_earlier_rounds_sent_by_the_server(tiny_model_dir, tmp_path, monkeypatch):
    """A budget between one and two rounds: round 1 trains, round 2 is refused by each organization
    from the history the server sent (its own node history is wiped to prove it), round 3 is never sent."""
    one, two = epsilon([(1.0, 1.0, 1)], 1e-5), epsilon([(1.0, 1.0, 1)] * 2, 1e-5)
    settings = small(tiny_model_dir, tmp_path / "run", train={"rounds": 3, "local_epochs": 1, "batch_size": 32,
                                                               "lr": 2e-2},
                     dp={"record_level": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0,
                         "max_epsilon": (one + two) / 2})
    from fedunlearn.federation.coordinator import Coordinator
    from fedunlearn.federation.workflow import train_workflow

    monkeypatch.setattr(Coordinator, "_stop_over_budget", lambda self, rnd: None)  # leave it to the organizations
    grid = grid_for(settings)
    sent_history = []

    def forget_node_history(msg):
        cfg = msg.content["config"]
        if msg.metadata.message_type == "train" and int(cfg["round"]) == 2:
            sent_history.append(protocol.dp_history_of(dict(cfg)))
            state = grid.contexts[msg.metadata.dst_node_id].state
            assert "dp-history" in state  # the node counted round 1 itself ...
            del state["dp-history"]  # ... but only the server's account may stop it here

    grid.before_send = forget_node_history
    report = train_workflow(grid, settings)
    assert _train_rounds(grid) == [1, 1, 1, 2, 2, 2]
    assert sent_history == [[(1.0, 1.0, 1)]] * 3
    spent = _budget_records(report.run_dir)
    assert {o: (r["by"], r["round"], r["from_round"]) for o, r in spent.items()} == {
        f"org-{i}": ("organization", 2, 3) for i in range(3)}
    assert all(r["epsilon"] == pytest.approx(two, rel=1e-3) for r in spent.values())
    with Ledger.open(report.run_dir) as ledger:
        for s in range(3):
            chain = ledger.chain(s)
            assert [ck.round for ck in chain] == [0, 1, 2]
            assert len(ledger.contributions(chain[1].id)) == 1 and not ledger.contributions(chain[2].id)
            assert chain[2].hash == chain[1].hash  # round 2 carried round 1's model over
    with RunAudit.open(report.run_dir) as audit:
        for i in range(3):  # the logged record-level ε stays within the budget
            assert epsilon(record_history(audit.events("round-commit"), audit.subject(f"org-{i}")), 1e-5) <= (one + two) / 2
    assert verify_run(report.run_dir).ok


def test_the_coordinator_stops_each_organization_at_its_own_budget(tiny_model_dir, tmp_path):
    """org-2 joins in round 2: the log predicts org-0 and org-1 over the budget before round 3 and
    org-2 before round 4; org-2 alone trains round 3, and round 4 is never started."""
    one, two, three = (epsilon([(1.0, 1.0, 1)] * k, 1e-5) for k in (1, 2, 3))
    settings = small(tiny_model_dir, tmp_path / "run", train={"rounds": 5, "local_epochs": 1, "batch_size": 32,
                                                               "lr": 2e-2},
                     dp={"record_level": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0,
                         "max_epsilon": (two + three) / 2})
    settings = settings.replace(organizations=tuple(
        OrganizationSettings(name=f"org-{i}", join_round=2 if i == 2 else 1) for i in range(3)))
    from fedunlearn.federation.workflow import train_workflow

    grid, said = grid_for(settings), Messages()
    report = train_workflow(grid, settings, reporter=said)
    rounds = {}
    for m in grid.sent:
        if m.metadata.message_type == "train":
            rounds.setdefault(m.content["config"]["org"], []).append(int(m.content["config"]["round"]))
    assert rounds == {"org-0": [1, 2], "org-1": [1, 2], "org-2": [2, 3]}
    spent = _budget_records(report.run_dir)
    assert {o: (r["by"], r["from_round"]) for o, r in spent.items()} == {
        "org-0": ("coordinator", 3), "org-1": ("coordinator", 3), "org-2": ("coordinator", 4)}
    assert any("training stops before round 4" in line and "up to round 3" in line for line in said.lines)
    assert report.served is not None and report.served.path.is_dir()  # the last committed model is exported
    with Ledger.open(report.run_dir) as ledger:
        assert [ledger.head(s).round for s in range(3)] == [3, 3, 3]
        assert ledger.members(0, 3) == [] and ledger.members(2, 3) == ["org-2"]
    with RunAudit.open(report.run_dir) as audit:
        assert len(audit.events("budget-exhausted")) == 3
    assert verify_run(report.run_dir).ok


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


def test_the_budget_check_takes_the_larger_of_the_servers_and_the_nodes_account():
    from fedunlearn.training.dp import node_history, worst_history
    from flwr.app import ConfigRecord

    logged, local = [(1.0, 1.0, 1)], [(1.0, 1.0, 1), (1.0, 0.5, 4)]  # the node also sent an uncommitted update
    assert worst_history(logged, local, delta=1e-5) == local
    assert worst_history(local, logged, delta=1e-5) == local
    assert worst_history(logged, logged, delta=1e-5) == logged and worst_history([], [], delta=1e-5) == []
    state = {"dp-history": ConfigRecord({"z": [1.0, 1.0], "q": [1.0, 0.5], "steps": [1, 4]})}
    assert node_history(state) == local and node_history({}) == []
    sent = protocol.dp_history_config(local)
    assert protocol.dp_history_of(sent) == local and protocol.dp_history_config([]) == {}
