"""DP-FedAvg aggregation, and DP-SGD + DP-FedAvg in a federated run with an ε budget."""

from __future__ import annotations

import math

import pytest
import torch

from fedunlearn.certify import RunAudit, authorize_request, certify_erasure, client_level_epsilon, privacy_accounts
from fedunlearn.certify import sign_request, verify_run
from fedunlearn.config import DpSettings
from fedunlearn.errors import ConfigError
from fedunlearn.federation.dpfedavg import clip_update, dp_fedavg, poisson_sample
from fedunlearn.ledger import Ledger
from fedunlearn.runs import RunFolder
from tests.certify.conftest import grid_for, small

BASE = {"a": torch.zeros(4, 3), "b": torch.ones(2)}


def _upd(scale):
    return {"a": torch.full((4, 3), scale), "b": torch.ones(2) + scale}


def test_no_noise_huge_clip_full_sampling_is_equal_weight_fedavg():
    dp = DpSettings(client_noise_multiplier=0.0, client_clip=1e6, client_sample_rate=1.0)
    out = dp_fedavg(BASE, [_upd(1.0), _upd(3.0)], eligible=2, dp=dp)
    assert torch.allclose(out.state["a"], torch.full((4, 3), 2.0))
    assert torch.allclose(out.state["b"], torch.ones(2) + 2.0)
    assert out.clipped == 0


def test_updates_are_clipped_and_noise_has_the_stated_scale():
    delta, norm = clip_update(_upd(10.0), BASE, 1.0)
    assert norm == pytest.approx(10.0 * math.sqrt(14))
    assert math.sqrt(sum(float((d * d).sum()) for d in delta.values())) == pytest.approx(1.0, rel=1e-5)
    dp = DpSettings(client_noise_multiplier=0.0, client_clip=0.5, client_sample_rate=0.5)
    out = dp_fedavg(BASE, [_upd(10.0)], eligible=4, dp=dp)
    moved = math.sqrt(sum(float(((out.state[k] - BASE[k]) ** 2).sum()) for k in BASE))
    assert moved == pytest.approx(0.5 / (0.5 * 4), rel=1e-5)  # C / (q |E|)
    assert out.clipped == 1
    big = {"w": torch.zeros(200, 200)}
    dp = DpSettings(client_noise_multiplier=2.0, client_clip=0.5, client_sample_rate=0.5)
    noisy = dp_fedavg(big, [], eligible=4, dp=dp, rng=torch.Generator().manual_seed(0))
    assert float(noisy.state["w"].std()) == pytest.approx(2.0 * 0.5 / 2.0, rel=0.02)  # z C / (q |E|)


def test_poisson_sampling():
    orgs = [f"o{i}" for i in range(2000)]
    picked = poisson_sample(orgs, 0.25, torch.Generator().manual_seed(1))
    assert 400 < len(picked) < 600 and picked == sorted(picked, key=orgs.index)
    assert poisson_sample(orgs[:3], 1.0) == orgs[:3]
    with pytest.raises(ConfigError, match="rate 0"):
        poisson_sample(orgs, 0.0)


def test_dp_settings_validate():
    with pytest.raises(ConfigError, match="dp.client-noise-multiplier = 0 gives no privacy"):
        DpSettings(client_level=True, client_noise_multiplier=0.0)
    with pytest.raises(ConfigError, match="dp.delta"):
        DpSettings(delta=0.0)
    assert not DpSettings().enabled


def test_dp_run_tracks_epsilon_stops_at_the_budget_and_certifies(tiny_model_dir, tmp_path):
    z, q, delta = 1.0, 1.0, 1e-5
    one, two = client_level_epsilon(z, q, 1, delta), client_level_epsilon(z, q, 2, delta)
    settings = small(tiny_model_dir, tmp_path / "run", train={"rounds": 3, "local_epochs": 1, "batch_size": 8, "lr": 2e-2},
                     dp={"record_level": True, "noise_multiplier": 3.0, "max_grad_norm": 1.0, "client_level": True,
                         "client_noise_multiplier": z, "client_clip": 0.5, "client_sample_rate": q, "delta": delta,
                         "max_epsilon": (one + two) / 2})
    settings = settings.replace(topology={"shards": 1})
    from fedunlearn.federation.workflow import train_workflow

    report = train_workflow(grid_for(settings), settings)
    with Ledger.open(report.run_dir) as ledger, RunAudit.open(report.run_dir) as audit:
        assert ledger.head(0).round == 1  # round 2 would have exceeded the budget
        contributions = ledger.contributions(ledger.head(0).id)
        assert {c.org for c in contributions} == {"org-0", "org-1", "org-2"}
        for c in contributions:
            q_rec = 8 / c.num_examples  # batch size / records
            assert c.metrics["dp-sample-rate"] == pytest.approx(q_rec)
            assert c.metrics["dp-steps"] == math.ceil(1 / q_rec)
            assert c.metrics["dp-epsilon"] > 0
        accounts = privacy_accounts(audit, ["org-0", "org-1"], settings.dp)
        assert accounts["org-0"]["client"].epsilon == pytest.approx(one, rel=1e-3)
        rec = accounts["org-1"]["record"].history
        assert len(rec) == 1 and rec[0][0] == 3.0 and rec[0][2] >= 2
        # "DP implies unlearning": the served model is certified for any one organization
        run = RunFolder.open(report.run_dir)
        auth = authorize_request(audit, sign_request(audit.signer, run=audit.origin, subjects=["org-2"]))
        cert = certify_erasure(run, auth, {"method": "dp", "guarantee": "certified",
                                           "served_hash": ledger.served()["served_hash"]}, ledger=ledger, audit=audit)
    guarantee = cert.body["guarantee"]
    assert guarantee["kind"] == "certified" and float(guarantee["epsilon"]) == pytest.approx(one, rel=1e-3)
    assert guarantee["delta"] == "0.00001" and guarantee["assumptions"]
    assert verify_run(report.run_dir).ok


def test_an_erasure_replays_rounds_with_the_dp_history_of_the_log(tiny_model_dir, tmp_path):
    """Retraining without a subject uses the retained organizations' records again: each replayed
    round's instructions carry the organization's DP-SGD history from the signed log (so it can
    refuse a round over its budget), as training rounds do."""
    from fedunlearn.federation import protocol
    from fedunlearn.federation.workflow import train_workflow
    from fedunlearn.unlearning import EraseRequest
    from fedunlearn.unlearning.service import certified_erase

    settings = small(tiny_model_dir, tmp_path / "run", train={"rounds": 2, "local_epochs": 1, "batch_size": 8, "lr": 2e-2},
                     dp={"record_level": True, "noise_multiplier": 3.0, "max_grad_norm": 1.0, "max_epsilon": 1e6})
    settings = settings.replace(topology={"shards": 1})
    report = train_workflow(grid_for(settings), settings)
    grid = grid_for(settings)
    result, _ = certified_erase(report.run_dir, EraseRequest(("org-2",), method="retrain"), grid=grid)
    trains = [m for m in grid.sent if m.metadata.message_type == protocol.TRAIN]
    assert trains and result.cost.client_steps > 0
    histories = [protocol.dp_history_of(protocol.config_of(m)) for m in trains]
    assert all(len(h) >= 2 for h in histories), histories  # both original rounds, for every replayed round
    assert verify_run(report.run_dir).ok
