"""Round orchestration over an in-process grid: lineage, resume, export, rejected updates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clients.app import make_app
from fedunlearn.config import settings_to_flat
from fedunlearn.errors import FederationError
from fedunlearn.federation import protocol
from fedunlearn.federation.coordinator import Coordinator
from fedunlearn.federation.workflow import open_or_create_ledger, train_workflow
from fedunlearn.ledger import Ledger
from fedunlearn.models import delta_weights, state_sha256
from fedunlearn.runs import RunFolder
from tests.localgrid import LocalGrid


def _grid(settings):
    return LocalGrid(make_app(), len(settings.organizations), run_config=settings_to_flat(settings))


@pytest.fixture()
def sharded(small_settings):
    # org-0, org-2 -> shard 0; org-1 -> shard 1; org-2 joins at round 2
    return small_settings.replace(
        topology={"shards": 2},
        organizations=tuple(
            o if o.name != "org-2" else type(o)(name="org-2", join_round=2) for o in small_settings.organizations
        ),
    )


def test_training_records_lineage_and_exports(sharded):
    report = train_workflow(_grid(sharded), sharded)
    with Ledger.open(report.run_dir) as ledger:
        assert [ledger.head(s).round for s in (0, 1)] == [2, 2]
        deps = {d.shard: d.since_round for d in ledger.dependents("org-2")}
        assert deps == {0: 2}
        assert {d.shard: d.since_round for d in ledger.dependents("org-1")} == {1: 1}
        chain0 = ledger.chain(0)
        assert [c.round for c in chain0] == [0, 1, 2]
        assert sorted(c.org for c in ledger.contributions(chain0[1].id)) == ["org-0"]
        assert sorted(c.org for c in ledger.contributions(chain0[2].id)) == ["org-0", "org-2"]
        served = ledger.served()
        assert served["served_hash"] == report.served.hash
        # local training lowered the loss of every organization in its first round
        for ckpt in chain0[1:]:
            for c in ledger.contributions(ckpt.id):
                assert c.metrics["train-loss"] < c.metrics["train-loss-first"]
        # the served adapter is the exact weighted ΔW sum of the shard heads
        heads = {s: ledger.get_state(ledger.head(s).hash) for s in (0, 1)}
    from safetensors.torch import load_file
    from peft import PeftConfig

    cfg = PeftConfig.from_pretrained(str(report.served.path))
    combined = load_file(str(report.served.path / "adapter_model.safetensors"))
    combined = {k.replace(".weight", ".default.weight") if False else k: v for k, v in combined.items()}
    scaling_shard = sharded.lora.alpha / sharded.lora.r
    want = {}
    for s, w in report.served.weights.items():
        for mod, dw in delta_weights(heads[s], scaling_shard).items():
            want[mod] = want.get(mod, 0) + w * dw
    got = delta_weights({_canon(k): v for k, v in combined.items()}, cfg.lora_alpha / cfg.r)
    assert set(got) == set(want)
    for mod in want:
        assert torch.allclose(got[mod], want[mod], atol=1e-6), mod


def _canon(key: str) -> str:
    # peft's saved names drop the adapter name; canonical names are the same
    return key


def test_resume_after_interruption_gives_the_same_model(small_settings, tmp_path):
    ref = train_workflow(_grid(small_settings), small_settings.replace(run={"dir": str(tmp_path / "ref")}))

    settings = small_settings.replace(run={"dir": str(tmp_path / "cut")})
    grid = _grid(settings)
    calls = {"n": 0}

    def crash(msg):
        if msg.metadata.message_type == protocol.TRAIN:
            calls["n"] += 1
            if calls["n"] == 5:  # round 2, second organization: the round is not committed
                raise KeyboardInterrupt("server killed")

    grid.before_send = crash
    with pytest.raises(KeyboardInterrupt):
        train_workflow(grid, settings)
    run = RunFolder.open(tmp_path / "cut")
    with Ledger.open(run.path) as ledger:
        assert ledger.head(0).round == 1  # last committed round
    done = train_workflow(_grid(settings), settings)
    assert done.served.hash == ref.served.hash
    with Ledger.open(run.path) as ledger:
        assert [c.round for c in ledger.chain(0)] == [0, 1, 2]


def test_nan_update_is_rejected_and_nothing_committed(small_settings):
    good = make_app()

    def poisoned(msg, ctx):
        reply = good(msg, ctx)
        if msg.metadata.message_type == protocol.TRAIN and ctx.node_config["partition-id"] == 1:
            rec = reply.content["arrays"]
            state = rec.to_torch_state_dict()
            k = sorted(state)[0]
            state[k] = torch.full_like(state[k], float("nan"))
            from flwr.app import ArrayRecord
            reply.content["arrays"] = ArrayRecord(state)
        return reply

    grid = LocalGrid(poisoned, 3, run_config=settings_to_flat(small_settings))
    with pytest.raises(FederationError, match=r"org-1.*non-finite"):
        train_workflow(grid, small_settings)
    run = RunFolder.open(small_settings.run.dir)
    with Ledger.open(run.path) as ledger:
        assert ledger.head(0).round == 0


def test_missing_organization_times_out_with_its_name(small_settings):
    settings = small_settings.replace(run={"discovery_timeout": 1.0})
    grid = LocalGrid(make_app(), 2, run_config=settings_to_flat(settings))  # org-2 never starts
    with pytest.raises(FederationError, match=r"\['org-2'\] did not connect"):
        train_workflow(grid, settings)


def test_resume_with_other_data_is_refused(small_settings, tmp_path):
    """An organization whose records changed since it trained cannot resume or retrain the run."""
    settings = small_settings.replace(train={"rounds": 1})
    train_workflow(_grid(settings), settings)
    with Ledger.open(settings.run.dir) as ledger:
        assert len([k for k in ledger.meta if k.startswith("data-sha256/")]) == 3
    # the same run, but org-1 now generates other synthetic records (another canary count)
    other = settings.replace(data={"canaries_per_org": 2})
    grid = LocalGrid(make_app(settings_to_flat(other)), 3, run_config=settings_to_flat(settings))
    run = RunFolder.open(settings.run.dir)
    with Ledger.open(run.path) as ledger:
        coord = Coordinator(grid, run, ledger)
        with pytest.raises(FederationError, match=r"data differ from the data they trained on: org-0"):
            coord.connect()


def test_the_logged_fingerprint_binds_even_when_the_ledgers_copy_is_gone(small_settings, tmp_path):
    """The first logged data fingerprint decides: deleting the ledger's copy does not let other data in."""
    from fedunlearn.certify.runaudit import RunAudit
    from tests.tamper import tamper_sql

    settings = small_settings.replace(train={"rounds": 1})
    train_workflow(_grid(settings), settings)
    with RunAudit.open(settings.run.dir) as audit:
        assert len(audit.events("data-fingerprint")) == 3  # one per organization, at its first connection
    tamper_sql(Path(settings.run.dir) / "ledger.sqlite", "DELETE FROM meta WHERE key LIKE 'data-sha256/%'")
    other = settings.replace(data={"canaries_per_org": 2})
    grid = LocalGrid(make_app(settings_to_flat(other)), 3, run_config=settings_to_flat(settings))
    run = RunFolder.open(settings.run.dir)
    with Ledger.open(run.path) as ledger, RunAudit.open(run.path) as audit:
        coord = Coordinator(grid, run, ledger, audit=audit)
        with pytest.raises(FederationError, match=r"data differ from the data they trained on: org-0"):
            coord.connect()
