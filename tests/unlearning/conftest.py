"""Trained runs for erasure tests: trained once per session on the LocalGrid, copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clients.app import make_app
from fedunlearn.config import OrganizationSettings, Settings, settings_to_flat
from fedunlearn.federation.coordinator import Coordinator
from fedunlearn.federation.workflow import open_or_create_ledger, train_workflow
from fedunlearn.models import resolve_model_path
from fedunlearn.runs import RunFolder
from tests.localgrid import LocalGrid


def base_settings(model_dir: Path, *, shards: int = 2, late: dict[str, int] | None = None,
                  orgs: int = 3, rounds: int = 2) -> Settings:
    """``orgs`` organizations dealt round-robin into ``shards``; ``late`` maps name -> join round."""
    late = late or {}
    organizations = tuple(OrganizationSettings(name=f"org-{i}", join_round=late.get(f"org-{i}", 1))
                          for i in range(orgs))
    return Settings(organizations=organizations).replace(
        run={"discovery_timeout": 10.0},
        model={"path": str(model_dir), "device": "cpu"},
        data={"records_per_org": 16, "holdout_per_org": 8, "canaries_per_org": 1, "canary_repeats": 2,
              "never_inserted": 5, "public_documents": 20, "max_length": 40},
        train={"rounds": rounds, "local_epochs": 1, "batch_size": 8, "lr": 2e-2},
        topology={"shards": shards},
    )


def grid_for(settings: Settings) -> LocalGrid:
    return LocalGrid(make_app(), len(settings.organizations), run_config=settings_to_flat(settings))


def train(settings: Settings, run_dir: Path, *, without: tuple[str, ...] = ()) -> Path:
    """Train a run; organizations in ``without`` never train (the from-scratch reference)."""
    settings = settings.replace(run={"dir": str(run_dir)})
    if not without:
        return train_workflow(grid_for(settings), settings).run_dir
    run = RunFolder.create_or_resume(run_dir, settings, resolve_model_path(settings.model.path))
    with open_or_create_ledger(run) as ledger:
        coord = Coordinator(grid_for(settings), run, ledger)
        coord.enrol()
        coord.initialize()
        coord.connect()
        for rnd in range(1, settings.train.rounds + 1):
            for shard in range(settings.topology.shards):
                members = [m for m in ledger.members(shard, rnd) if m not in without]
                coord.train_round(shard, rnd, members=members)
        coord.export()
    return run.path


@pytest.fixture(scope="session")
def run_factory(tiny_model_dir, tmp_path_factory):
    """``make(name, **base_settings kwargs)`` -> path of a trained run (cached by name)."""
    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("trained")

    def make(name: str, *, without: tuple[str, ...] = (), **kwargs) -> Path:
        if name not in cache:
            cache[name] = train(base_settings(tiny_model_dir, **kwargs), root / name, without=without)
        return cache[name]

    return make


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# org-0 and org-2 share shard 0, org-2 joins at round 2; org-1 is alone in shard 1
SHARDED = dict(shards=2, late={"org-2": 2})


@pytest.fixture()
def sharded_run(run_factory, tmp_path) -> Path:
    return copy_run(run_factory("sharded", **SHARDED), tmp_path / "run")


def checkpoints_depending_on(ledger, subject: str) -> dict[int, tuple[str, int | None, bool]]:
    """Every checkpoint, any branch: id -> (aggregate hash, parent id, whether a contribution of
    ``subject`` is on its ancestry, itself included), re-derived from the lineage tables."""
    rows = ledger._query("SELECT id, parent_id, hash FROM checkpoints")
    parent = {r["id"]: r["parent_id"] for r in rows}
    direct = {r["checkpoint_id"] for r in ledger._query("SELECT checkpoint_id FROM contributions WHERE org = ?",
                                                         (subject,))}

    def depends(i):
        while i is not None:
            if i in direct:
                return True
            i = parent[i]
        return False

    return {r["id"]: (r["hash"], r["parent_id"], depends(r["id"])) for r in rows}
