"""One erasure service: the CLI, the Python API and the ServerApp's erase workflow give the same
erasure, the same certificate guarantee and a run that verifies."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedunlearn.certify import verify_run
from fedunlearn.certify.certificate import Certificate
from fedunlearn.cli import app
from fedunlearn.ledger import Ledger
from fedunlearn.unlearning import EraseRequest
from fedunlearn.unlearning.service import certified_erase, certified_erasure_workflow
from tests.unlearning.conftest import SHARDED, base_settings, copy_run, grid_for


def _outcome(run):
    with Ledger.open(run) as ledger:
        served = ledger.served()["served_hash"]
        statuses = {o.name: o.status for o in ledger.organizations()}
    certificates = sorted((run / "certificates").glob("*.json"))
    assert len(certificates) == 1
    body = Certificate.read(certificates[0]).body
    assert verify_run(run).ok
    return served, tuple(sorted(statuses.items())), body["guarantee"]["kind"], body["method"]


def _server_workflow(run, request, settings):
    workflow = certified_erasure_workflow(request)
    return workflow(grid_for(settings), settings.replace(run={"dir": str(run)}))


def test_every_front_end_gives_the_same_certified_erasure(run_factory, tiny_model_dir, tmp_path):
    per_org = run_factory("s-eq-n", shards=3)
    request = EraseRequest(("org-1",), method="drop")
    outcomes = {}
    cli = copy_run(per_org, tmp_path / "cli")
    out = CliRunner().invoke(app, ["forget", "--run", str(cli), "--org", "org-1", "--method", "drop", "--json"])
    assert out.exit_code == 0, out.output
    outcomes["cli"] = _outcome(cli)
    api = copy_run(per_org, tmp_path / "api")
    certified_erase(api, request)
    outcomes["api"] = _outcome(api)
    server = copy_run(per_org, tmp_path / "server")
    _server_workflow(server, request, base_settings(tiny_model_dir, shards=3))
    outcomes["server"] = _outcome(server)
    assert len(set(outcomes.values())) == 1, outcomes
    assert dict(outcomes["api"][1])["org-1"] == "erased" and outcomes["api"][2] == "exact"


def test_a_retraining_erasure_is_the_same_through_the_api_and_the_serverapp(run_factory, tiny_model_dir, tmp_path):
    src = run_factory("sharded", **SHARDED)
    settings = base_settings(tiny_model_dir, **SHARDED)
    request = EraseRequest(("org-2",), method="sisa")
    api = copy_run(src, tmp_path / "api")
    result, _ = certified_erase(api, request, grid=grid_for(settings))
    server = copy_run(src, tmp_path / "server")
    served = _server_workflow(server, request, settings)
    assert result.cost.client_steps > 0 and served.served_hash == result.served_hash
    assert _outcome(api) == _outcome(server)


def test_a_refusal_through_the_service_is_logged_and_changes_nothing(run_factory, tmp_path):
    from fedunlearn.certify import RunAudit
    from fedunlearn.errors import UnknownNameError

    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    with Ledger.open(run) as ledger:
        before = ledger.served()["served_hash"]
    with pytest.raises(UnknownNameError):
        certified_erase(run, EraseRequest(("org-7",), method="drop"))
    with RunAudit.open(run) as audit:
        assert [e["reason"] for _, e in audit.events("refusal")][-1].startswith("unknown organization")
    with Ledger.open(run) as ledger:
        assert ledger.served()["served_hash"] == before
    assert verify_run(run).ok


def test_no_erasure_from_lineage_the_log_contradicts(run_factory, tmp_path):
    """The subject's contributions re-attributed in the ledger: a 'sisa'/'drop' erasure of it would
    change nothing and be certified exact. The service refuses, logs why, and changes nothing."""
    from fedunlearn.certify import RunAudit
    from fedunlearn.errors import IntegrityError
    from tests.tamper import tamper_sql

    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    tamper_sql(run / "ledger.sqlite", "UPDATE contributions SET org = 'org-0' WHERE org = 'org-1'")
    with Ledger.open(run) as ledger:
        before = ledger.served()["served_hash"]
    out = CliRunner().invoke(app, ["forget", "--run", str(run), "--org", "org-1", "--method", "drop"])
    assert out.exit_code == 2 and "disagree with the signed audit log" in out.output and "contributions" in out.output
    with pytest.raises(IntegrityError):
        certified_erase(run, EraseRequest(("org-1",), method="drop"))
    with Ledger.open(run) as ledger:
        assert ledger.served()["served_hash"] == before and ledger.organization("org-1").status == "active"
    assert not list((run / "certificates").glob("*.json"))  # nothing certified
    with RunAudit.open(run) as audit:
        assert "disagree with the signed audit log" in audit.events("refusal")[-1][1]["reason"]
    report = verify_run(run)
    assert not report.ok and any("contributions" in p for p in report.problems)
