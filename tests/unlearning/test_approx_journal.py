"""Forgotten records stay forgotten in later rounds; a killed approximate erasure completes on a re-run."""

from __future__ import annotations

import pytest

import fedunlearn.unlearning.approx as approx
from fedunlearn.federation import protocol
from fedunlearn.federation.coordinator import Coordinator
from fedunlearn.unlearning.service import erase, prepare_erasure
from fedunlearn.ledger import Ledger
from fedunlearn.runs import RunFolder
from fedunlearn.training.client import organization_data
from fedunlearn.unlearning import EraseRequest, NegateUnlearner, pending_erasure
from tests.unlearning.conftest import base_settings, copy_run, grid_for

FLAT = dict(shards=1, rounds=2)


def test_a_later_round_never_trains_on_forgotten_records(run_factory, tiny_model_dir, tmp_path):
    settings = base_settings(tiny_model_dir, **FLAT)
    run = copy_run(run_factory("flat", **FLAT), tmp_path / "run")
    data = organization_data(settings, "org-2")
    canary = data.canaries[0].id  # names every inserted copy canary-...#k
    copies = [r.id for r in data.train if r.id.split("#", 1)[0] == canary]
    assert len(copies) == settings.data.canary_repeats
    erase(run, EraseRequest(("org-2",), method="ga", records=(canary,), options={"forget-epochs": 1}),
          grid=grid_for(settings))
    grid = grid_for(settings)
    sent = []
    grid.before_send = sent.append
    with Ledger.open(run) as ledger:
        coord = Coordinator(grid, RunFolder.open(run), ledger)
        coord.connect()
        head = ledger.head(0)
        coord.train_round(0, head.round + 1, members=["org-0", "org-2"])
        contributions = {c.org: c for c in ledger.contributions(ledger.head(0).id)}
    train = {protocol.config_of(m)["org"]: protocol.config_of(m) for m in sent if m.metadata.message_type == "train"}
    assert train["org-2"][protocol.EXCLUDE_RECORDS].split("\n") == [canary]
    assert protocol.EXCLUDE_RECORDS not in train["org-0"]
    # the organization trained on its other records only: none of the canary's copies
    assert contributions["org-2"].num_examples == len(data.train) - len(copies)
    assert contributions["org-0"].num_examples == len(organization_data(settings, "org-0").train)


def _served(run):
    with Ledger.open(run) as ledger:
        return ledger.served()["served_hash"], ledger.head(0).id, ledger.organization("org-2").status


@pytest.mark.parametrize("where", ["compute", "switch"])
def test_killed_approximate_erasure_keeps_the_previous_model_and_completes(where, run_factory, tmp_path,
                                                                          monkeypatch):
    run = copy_run(run_factory("flat", **FLAT), tmp_path / "run")
    reference = copy_run(run_factory("flat", **FLAT), tmp_path / "reference")
    request = EraseRequest(("org-2",), method="negate")
    want = erase(reference, request)  # the same erasure, never interrupted
    before = _served(run)
    served_file = RunFolder.open(run).served_dir / "adapter_model.safetensors"
    export = served_file.read_bytes()

    def kill(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    if where == "compute":  # in the middle of computing the new adapter: nothing committed yet
        monkeypatch.setattr(NegateUnlearner, "compute", kill)
    else:  # after the journal and the commit, before the new model is exported and the subject erased
        monkeypatch.setattr(approx, "export_served", kill)
    with pytest.raises(KeyboardInterrupt):
        erase(run, request)
    monkeypatch.undo()
    served, head, status = _served(run)
    assert served == before[0] and status == "active"  # the previous model is still served
    assert served_file.read_bytes() == export
    with Ledger.open(run) as ledger:
        journal = pending_erasure(ledger)
    if where == "compute":
        assert journal is None and head == before[1]  # nothing was committed
    else:
        assert journal["method"] == "negate" and head != before[1]  # committed, not yet served
    assert prepare_erasure(run, request) is False  # completing needs no Flower
    got = erase(run, request)
    assert got.served_hash == want.served_hash and got.previous_served_hash == before[0]
    with Ledger.open(run) as ledger:
        assert pending_erasure(ledger) is None and ledger.organization("org-2").status == "erased"
        assert [c.round for c in ledger.chain(0)] == list(range(FLAT["rounds"] + 2))  # committed once
