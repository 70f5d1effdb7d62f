"""Serving options: ΔW merge vs output ensemble, measured on retained organizations' holdouts."""

from __future__ import annotations

import math

import pytest

from fedunlearn.federation.ensemble import serving_utility
from fedunlearn.unlearning.service import erase
from fedunlearn.ledger import Ledger
from fedunlearn.runs import RunFolder
from fedunlearn.training.client import OrganizationClient, organization_data
from fedunlearn.unlearning import EraseRequest
from tests.unlearning.conftest import copy_run


def test_one_shard_merge_and_ensemble_agree_with_the_clients_own_evaluation(run_factory):
    run = RunFolder.open(run_factory("one-shard", shards=1))
    with Ledger.open(run.path) as ledger:
        utility = serving_utility(run, ledger, ["org-1"])
        state = ledger.get_state(ledger.head(0).hash)
    assert utility.weights == {0: 1.0}
    client = OrganizationClient(settings=run.settings, name="org-1", data=organization_data(run.settings, "org-1"))
    expected = client.evaluate(state).loss
    assert utility.merge["org-1"] == pytest.approx(expected, rel=1e-5)
    assert utility.ensemble["org-1"] == pytest.approx(expected, rel=1e-5)


def test_after_erasure_both_options_serve_only_retained_shards(run_factory, tmp_path):
    path = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    erase(path, EraseRequest(("org-1",), method="drop"))
    run = RunFolder.open(path)
    with Ledger.open(path) as ledger:
        utility = serving_utility(run, ledger)
    assert sorted(utility.merge) == sorted(utility.ensemble) == ["org-0", "org-2"]
    assert sorted(utility.weights) == [0, 2] and math.isclose(sum(utility.weights.values()), 1.0)
    assert all(math.isfinite(v) for v in [*utility.merge.values(), *utility.ensemble.values()])
    assert utility.mean_merge != utility.mean_ensemble  # two different serving rules
