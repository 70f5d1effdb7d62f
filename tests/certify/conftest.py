"""A trained run with an audit log, built once per module: three organizations, one shard each."""

from __future__ import annotations

import shutil

import pytest

from clients.app import make_app
from fedunlearn.config import OrganizationSettings, Settings, settings_to_flat
from tests.localgrid import LocalGrid


def small(tiny_model_dir, run_dir, **sections) -> Settings:
    s = Settings(organizations=tuple(OrganizationSettings(name=f"org-{i}") for i in range(3)))
    base = dict(
        run={"dir": str(run_dir), "discovery_timeout": 30.0},
        model={"path": str(tiny_model_dir), "device": "cpu"},
        data={"records_per_org": 16, "holdout_per_org": 4, "canaries_per_org": 1, "canary_repeats": 1,
              "never_inserted": 2, "public_documents": 20, "max_length": 32},
        train={"rounds": 2, "local_epochs": 1, "batch_size": 8, "lr": 2e-2},
        topology={"shards": 3},
    )
    base.update(sections)
    return s.replace(**base)


def grid_for(settings: Settings) -> LocalGrid:
    return LocalGrid(make_app(), len(settings.organizations), run_config=settings_to_flat(settings))


@pytest.fixture(scope="session")
def org_key(tmp_path_factory):
    """org-1's request key, made like `fedunlearn keys generate` does."""
    from fedunlearn.audit import generate_signing_key

    return generate_signing_key("org-1.example/erasure")


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir, tmp_path_factory, org_key):
    """Path of a trained, exported run in which org-1 then enrolled a public key (`keys enrol`)."""
    from typer.testing import CliRunner

    from fedunlearn.audit import save_public_key
    from fedunlearn.cli import app
    from fedunlearn.federation.workflow import train_workflow

    run_dir = tmp_path_factory.mktemp("certify") / "run"
    settings = small(tiny_model_dir, run_dir)
    train_workflow(grid_for(settings), settings)
    pub = save_public_key(org_key, run_dir.parent / "org-1.pub")
    result = CliRunner().invoke(app, ["keys", "enrol", "--run", str(run_dir), "--org", "org-1",
                                      "--public-key", str(pub)])
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture()
def run_copy(trained_run, tmp_path):
    """A private copy of the trained run that a test may change."""
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst
