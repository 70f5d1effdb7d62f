"""Bad input and faults: clear errors with nothing changed; a killed erasure is completed by a re-run."""

from __future__ import annotations

import json

import pytest

from fedunlearn.errors import ConfigError, RunStateError, UnknownNameError
from fedunlearn.federation import protocol
from fedunlearn.unlearning.service import erase, prepare_erasure
from fedunlearn.federation.workflow import train_workflow
from fedunlearn.ledger import Ledger
from fedunlearn.unlearning import EraseRequest
from tests.unlearning.conftest import SHARDED, base_settings, copy_run, grid_for


def _snapshot(run_dir) -> dict:
    with Ledger.open(run_dir) as ledger:
        return {"served": ledger.served()["served_hash"], "stats": ledger.stats(),
                "heads": {s: ledger.head(s).id for s in ledger.stats()["rounds_per_shard"]},
                "status": {o.name: o.status for o in ledger.organizations()},
                "shredded": {o.name: ledger.keys.is_shredded(o.name) for o in ledger.organizations()},
                "pending": ledger.meta.get("erasure.pending", ""),
                "served_files": sorted(p.name for p in (run_dir / "export" / "served").iterdir())}


@pytest.mark.parametrize("request_, error, match", [
    (EraseRequest(("org-9",)), UnknownNameError, r"unknown organization 'org-9'.*'org-0', 'org-1', 'org-2'"),
    (EraseRequest(("org-1",), method="sisa2"), UnknownNameError, r"unknown erasure method 'sisa2'; did you mean 'sisa'\?.*'retrain'"),
    (EraseRequest(("org-1",), method="drop"), ConfigError, r"'drop' cannot erase.*shard 0 holds \['org-0', 'org-2'\].*--method sisa"),
    (EraseRequest(("org-0", "org-1", "org-2")), RunStateError, r"would leave no organization"),
    (EraseRequest(("org-1",), records=("r-1",)), ConfigError, r"record ids"),
])
def test_bad_requests_change_nothing(sharded_run, request_, error, match):
    before = _snapshot(sharded_run)
    with pytest.raises(error, match=match):
        prepare_erasure(sharded_run, request_)
    with pytest.raises(error, match=match):
        erase(sharded_run, request_)
    assert _snapshot(sharded_run) == before


def test_already_erased_and_foreign_run_folders_are_refused(sharded_run, tmp_path):
    erase(sharded_run, EraseRequest(("org-1",)), grid=None)  # org-1 is alone in shard 1: no training
    before = _snapshot(sharded_run)
    with pytest.raises(RunStateError, match=r"'org-1' was already erased"):
        erase(sharded_run, EraseRequest(("org-1",)))
    with pytest.raises(UnknownNameError) as info:  # the valid names are those one could still erase
        prepare_erasure(sharded_run, EraseRequest(("org-11",)))
    assert "did you mean 'org-0'?" in str(info.value) or "did you mean 'org-2'?" in str(info.value)
    assert "'org-1'" not in str(info.value).partition("valid")[2]
    with pytest.raises(UnknownNameError) as info:  # record-level: the user's names, not internal ones
        prepare_erasure(sharded_run, EraseRequest(("org-0",), method="npx", records=("r-1",)))
    assert "did you mean 'npo'?" in str(info.value) and "sisa-records" not in str(info.value)
    assert "'sisa'" in str(info.value) and "'retrain'" not in str(info.value)
    assert _snapshot(sharded_run) == before
    meta = json.loads((sharded_run / "run.json").read_text())
    meta["format"] = 99
    (sharded_run / "run.json").write_text(json.dumps(meta))
    with pytest.raises(RunStateError, match=r"format 99.*reads format 1"):
        erase(sharded_run, EraseRequest(("org-0",)))
    with pytest.raises(RunStateError, match=r"not a fedunlearn run folder"):
        erase(tmp_path / "nothing-here", EraseRequest(("org-0",)))


def test_killed_mid_retrain_leaves_the_run_intact_and_a_rerun_completes(sharded_run, run_factory, tiny_model_dir, tmp_path):
    settings = base_settings(tiny_model_dir, **SHARDED)
    reference = erase(copy_run(run_factory("sharded", **SHARDED), tmp_path / "ref"), EraseRequest(("org-0",)),
                      grid=grid_for(settings))
    before = _snapshot(sharded_run)
    grid = grid_for(settings)
    calls = {"n": 0}

    def crash(msg):
        if msg.metadata.message_type == protocol.TRAIN:
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt("server killed mid-retrain")

    grid.before_send = crash
    with pytest.raises(KeyboardInterrupt):
        erase(sharded_run, EraseRequest(("org-0",)), grid=grid)
    after = _snapshot(sharded_run)
    assert after.pop("stats")["checkpoints"] == before.pop("stats")["checkpoints"]
    assert after == before  # served model, heads, status, keys: as they were
    done = erase(sharded_run, EraseRequest(("org-0",)), grid=grid_for(settings))
    assert done.served_hash == reference.served_hash


@pytest.mark.parametrize("where", ["switch", "mark"])
def test_killed_while_switching_is_completed_from_the_journal(sharded_run, run_factory, tiny_model_dir, tmp_path,
                                                              monkeypatch, where):
    settings = base_settings(tiny_model_dir, **SHARDED)
    reference = erase(copy_run(run_factory("sharded", **SHARDED), tmp_path / "ref"), EraseRequest(("org-2",)),
                      grid=grid_for(settings))
    target = Ledger.commit_round if where == "switch" else Ledger.set_meta

    def crash(self, *args, **kwargs):
        if where == "mark" and args[1] != "":
            return target(self, *args, **kwargs)  # let the journal be written; fail clearing it
        raise KeyboardInterrupt(f"killed in {where}")

    monkeypatch.setattr(Ledger, target.__name__, crash)
    with pytest.raises(KeyboardInterrupt):
        erase(sharded_run, EraseRequest(("org-2",)), grid=grid_for(settings))
    monkeypatch.undo()
    with Ledger.open(sharded_run) as ledger:
        assert json.loads(ledger.meta["erasure.pending"])["subjects"] == ["org-2"]
    with pytest.raises(RunStateError, match=r"unfinished erasure of \['org-2'\]"):
        erase(sharded_run, EraseRequest(("org-1",)))
    grid = grid_for(settings)
    done = erase(sharded_run, EraseRequest(("org-2",)), grid=grid)
    assert [m for m in grid.sent if m.metadata.message_type == protocol.TRAIN] == []  # no retraining
    assert done.served_hash == reference.served_hash
    with Ledger.open(sharded_run) as ledger:
        assert ledger.meta["erasure.pending"] == "" and ledger.organization("org-2").status == "erased"
        assert [c.round for c in ledger.chain(0)] == [0, 1, 2]


def test_an_erased_organization_is_not_addressed_by_later_rounds(tiny_model_dir, tmp_path):
    settings = base_settings(tiny_model_dir, **SHARDED).replace(run={"dir": str(tmp_path / "run")})
    grid = grid_for(settings)

    def stop_at_round_2(msg):
        if msg.metadata.message_type == protocol.TRAIN and protocol.config_of(msg)["round"] == 2:
            raise KeyboardInterrupt("interrupted after round 1")

    grid.before_send = stop_at_round_2
    with pytest.raises(KeyboardInterrupt):
        train_workflow(grid, settings)
    erase(tmp_path / "run", EraseRequest(("org-0",)), grid=None)  # shard 0 had only org-0 in round 1
    grid = grid_for(settings)
    train_workflow(grid, settings)  # resumes round 2
    org0 = list(grid.contexts)[0]
    assert not [m for m in grid.sent if m.metadata.dst_node_id == org0 and m.metadata.message_type != protocol.IDENTIFY]
    with Ledger.open(tmp_path / "run") as ledger:
        assert ledger.dependents("org-0") == []
        assert sorted(c.org for c in ledger.contributions(ledger.head(0).id)) == ["org-2"]
