"""Killed at every boundary of a certified erasure, the same command completes it: the erasure
applied, exactly one certificate, and a run that verifies (fedunlearn.crashpoints)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fedunlearn.certify import verify_run
from fedunlearn.cli import app
from fedunlearn.crashpoints import POINTS
from fedunlearn.ledger import Ledger
from fedunlearn.unlearning import EraseRequest
from fedunlearn.unlearning.service import certified_erase
from tests.unlearning.conftest import copy_run

pytestmark = pytest.mark.slow  # one process start per kill point

DRIVER = """
import os, sys
from fedunlearn import crashpoints
point = sys.argv[1]
crashpoints.install(lambda name: os._exit(137) if name == point else None)  # a kill -9 at that point
from fedunlearn.cli import run
sys.argv = ["fedunlearn"] + sys.argv[2:]
run()
"""


def _simulated(run):
    """The run as a simulation leaves it: its organizations' records saved in RUN/data."""
    from fedunlearn.data import save_consortium
    from fedunlearn.data.generated import synthetic_consortium
    from fedunlearn.runs import RunFolder

    save_consortium(synthetic_consortium(RunFolder.open(run).settings), run / "data")
    return run


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_each_point_is_completed_by_the_rerun(point, run_factory, tmp_path):
    import json

    from fedunlearn.certify import RunAudit

    src = run_factory("s-eq-n", shards=3)
    reference = copy_run(src, tmp_path / "reference")
    expected, _ = certified_erase(reference, EraseRequest(("org-1",), method="drop"))
    run = _simulated(copy_run(src, tmp_path / "run"))
    args = ["forget", "--run", str(run), "--org", "org-1", "--method", "drop", "--no-capture-before"]
    killed = subprocess.run([sys.executable, "-c", DRIVER, point, *args], capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, (point, killed.stdout, killed.stderr)  # the point was reached
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, (point, again.output)
    with Ledger.open(run) as ledger:
        assert ledger.organization("org-1").status == "erased"
        assert ledger.served()["served_hash"] == expected.served_hash
        assert ledger.meta.get("certification.pending", "") == ""
    assert len(list((run / "certificates").glob("*.json"))) == 1
    # the simulation's copy of org-1's records is gone (logged once); the others' are intact
    assert not (run / "data" / "org-1").exists() and (run / "data" / "org-0" / "train.jsonl").is_file()
    canaries = json.loads((run / "data" / "canaries.json").read_text())["inserted"]
    assert canaries and all(k["org"] != "org-1" for k in canaries)
    with RunAudit.open(run) as audit:
        assert [e["org"] for _, e in audit.events("data-removed")] == [audit.subject("org-1")]
        assert len(audit.events("erasure-applied")) == 1  # a rerun reuses what the killed process logged
    report = verify_run(run)
    assert report.ok, (point, report.problems)
    done = CliRunner().invoke(app, args)  # and now there is nothing left to do
    assert done.exit_code == 2 and "already erased" in done.output


SERVERAPP_DRIVER = """
import os, sys
from pathlib import Path
from fedunlearn import crashpoints
from tests.unlearning.test_crash import erase_through_the_serverapp

point, run = sys.argv[1], Path(sys.argv[2])
crashpoints.install(lambda name: os._exit(137) if name == point else None)  # a kill -9 at that point
erase_through_the_serverapp(run)
"""


def erase_through_the_serverapp(run) -> None:
    """The ServerApp with ``run.workflow = "erase"`` (SISA, org-2) over the in-process grid, given the
    run config `flwr run` hands the ServerApp of a deployment."""
    from flwr.app import Context, RecordDict

    from fedunlearn.config import settings_to_flat
    from fedunlearn.runs import RunFolder
    from server.app import make_app
    from tests.unlearning.conftest import grid_for

    settings = RunFolder.open(run).settings.replace(run={"dir": str(run), "workflow": "erase", "erase_orgs": "org-2",
                                                         "erase_method": "sisa"})
    flat = settings_to_flat(settings)
    make_app()(grid_for(settings), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=flat))


@pytest.fixture(scope="module")
def serverapp_reference(run_factory, tmp_path_factory):
    """The uninterrupted erasure's run (computed once for every kill point)."""
    reference = _simulated(copy_run(run_factory("two-shards", shards=2), tmp_path_factory.mktemp("ref") / "run"))
    erase_through_the_serverapp(reference)
    with Ledger.open(reference) as ledger:
        return ledger.served()["served_hash"]


#: The ServerApp path is the same service as `forget`'s (every point above); killed here at one point of
#: each phase (logged, journaled, switched, certified, records removed) to keep CI within its time.
SERVERAPP_POINTS = ("request.logged", "erasure.journaled", "erasure.switched", "certify.applied", "data.logged")


@pytest.mark.parametrize("point", SERVERAPP_POINTS)
def test_the_serverapps_erase_workflow_killed_at_each_point_is_completed_by_the_next_run(point, run_factory,
                                                                                          serverapp_reference,
                                                                                          tmp_path):
    """``run.workflow = "erase"`` (how ``flwr run`` erases in a deployment), SISA retraining over the
    ServerApp's grid, killed at a point of each phase (a separate process, kill -9): the next run of the same
    ServerApp completes it with one certificate, the model of an uninterrupted erasure, the records
    gone and a run that verifies."""
    from pathlib import Path

    from fedunlearn.certify import RunAudit

    assert point in POINTS
    run = _simulated(copy_run(run_factory("two-shards", shards=2), tmp_path / "run"))  # org-0, org-2: shard 0
    killed = subprocess.run([sys.executable, "-c", SERVERAPP_DRIVER, point, str(run)], capture_output=True,
                            text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert killed.returncode == 137, (point, killed.stdout[-2000:], killed.stderr[-3000:])  # the point was reached
    erase_through_the_serverapp(run)  # the next run, in this process
    with Ledger.open(run) as ledger:
        assert ledger.organization("org-2").status == "erased"
        assert ledger.served()["served_hash"] == serverapp_reference
        assert ledger.meta.get("certification.pending", "") == ""
    assert len(list((run / "certificates").glob("*.json"))) == 1
    assert not (run / "data" / "org-2").exists()
    with RunAudit.open(run) as audit:
        assert len(audit.events("data-removed")) == 1 and len(audit.events("erasure-applied")) == 1
    report = verify_run(run)
    assert report.ok, (point, report.problems)
