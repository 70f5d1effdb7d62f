"""One contract every registered unlearning method must pass (the dp_accounting pattern)."""

from __future__ import annotations

import pytest

from fedunlearn.unlearning.service import erase
from fedunlearn.ledger import Ledger
from fedunlearn.runs import RunFolder
from fedunlearn.unlearning import GUARANTEES, UNLEARNERS, EraseRequest, UnlearnResult, get_unlearner
from tests.unlearning.conftest import SHARDED, base_settings, copy_run, grid_for


@pytest.mark.parametrize("name", UNLEARNERS.names())
def test_unlearner_contract(name, run_factory, tiny_model_dir, tmp_path):
    unlearner = get_unlearner(name)
    assert unlearner.name == name and unlearner.guarantee in GUARANTEES
    kwargs = SHARDED
    run = copy_run(run_factory("sharded", **SHARDED), tmp_path / "run")
    if unlearner.supports(RunFolder.open(run)) is not None:
        assert isinstance(unlearner.supports(RunFolder.open(run)), str)
        kwargs = dict(shards=3)
        run = copy_run(run_factory("s-eq-n", **kwargs), tmp_path / "run-n")
        assert unlearner.supports(RunFolder.open(run)) is None
    if unlearner.level == "record":  # one organization forgets some of its records and stays
        _record_contract(name, run, base_settings(tiny_model_dir, **kwargs))
        return
    result = erase(run, EraseRequest(("org-2",), method=name), grid=grid_for(base_settings(tiny_model_dir, **kwargs)))
    assert isinstance(result, UnlearnResult)
    assert result.method == name and result.subjects == ("org-2",)
    assert "org-2" not in result.organizations and "org-2" not in result.full_retrain_cost.organizations
    for cost in (result.cost, result.full_retrain_cost):
        assert cost.client_steps >= 0 and cost.wall_seconds >= 0 and cost.bytes_sent >= 0 and cost.rounds >= 0
    assert result.full_retrain_cost.estimated or name == "retrain"
    with Ledger.open(run) as ledger:
        assert ledger.served()["served_hash"] == result.served_hash
        assert ledger.organization("org-2").status == "erased"
        if result.guarantee == "exact":
            assert ledger.dependents("org-2") == []
        assert {s: ledger.head(s).hash for s in result.heads} == result.heads
    assert (result.served_path / "adapter_model.safetensors").is_file()


def _record_contract(name, run, settings):
    from fedunlearn.training.client import organization_data

    record = organization_data(settings, "org-2").train[0].id
    result = erase(run, EraseRequest(("org-2",), method=name, records=(record,)), grid=grid_for(settings))
    assert isinstance(result, UnlearnResult) and result.method == name and result.guarantee in GUARANTEES
    for cost in (result.cost, result.full_retrain_cost):
        assert cost.client_steps > 0 and cost.wall_seconds >= 0 and cost.bytes_sent > 0
    with Ledger.open(run) as ledger:
        assert ledger.organization("org-2").status == "active"
        assert ledger.served()["served_hash"] == result.served_hash
        assert {s: ledger.head(s).hash for s in result.heads} == result.heads
        assert record in ledger.meta["forgotten-records/org-2"]
