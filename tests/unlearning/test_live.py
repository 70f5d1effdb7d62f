"""Erasure requests honored live, between rounds of a running training (fedunlearn.unlearning.live)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedunlearn.certify import RunAudit, sign_request, verify_run
from fedunlearn.cli import app
from fedunlearn.federation.workflow import train_workflow
from fedunlearn.ledger import Ledger
from fedunlearn.unlearning.live import apply_pending, status, submit
from tests.unlearning.conftest import base_settings, grid_for, train

ROOT = Path(__file__).resolve().parents[2]


def test_requests_arriving_mid_training_are_applied_and_training_goes_on(tiny_model_dir, tmp_path):
    settings = base_settings(tiny_model_dir, shards=2, rounds=3).replace(run={"dir": str(tmp_path / "run")})
    run = tmp_path / "run"
    seen: list[int] = []

    def arrivals(grid, run_dir, rnd):  # an organization's request arrives before round 2, a bad one before 3
        seen.append(rnd)
        with RunAudit.open(run_dir) as audit:
            if rnd == 2:
                submit(run_dir, sign_request(audit.signer, run=audit.origin, subjects=["org-2"], method="sisa"))
            if rnd == 3:
                submit(run_dir, sign_request(audit.signer, run=audit.origin, subjects=["org-9"]))
        apply_pending(run_dir, grid)

    report = train_workflow(grid_for(settings), settings, between_rounds=arrivals)
    assert seen == [1, 2, 3, 4]  # 4: after the last round
    with Ledger.open(run) as ledger:
        assert ledger.organization("org-2").status == "erased"
        assert all(ledger.head(s).round == 3 for s in range(2))  # training went on to its last round
        served = ledger.served()["served_hash"]
    never = train(base_settings(tiny_model_dir, shards=2, rounds=3), tmp_path / "never", without=("org-2",))
    with Ledger.open(never) as ledger:
        assert ledger.served()["served_hash"] == served  # the live erasure equals never having had org-2
    rows = {tuple(r["subjects"]): r for r in status(run)}
    assert rows[("org-2",)]["state"] == "applied" and rows[("org-2",)]["certificate"].endswith(".json")
    from fedunlearn.certify.certificate import Certificate

    notes = Certificate.read(rows[("org-2",)]["certificate"]).body["notes"]  # signed: when it came and went
    assert any(n.startswith("live request: received ") and "applied" in n and "deadline" in n for n in notes), notes
    assert rows[("org-9",)]["state"] == "refused" and "unknown organization" in rows[("org-9",)]["reason"]
    assert len(list((run / "certificates").glob("*.json"))) == 1
    with RunAudit.open(run) as audit:
        assert audit.events("refusal") and audit.events("erasure-request")
    assert verify_run(report.run_dir).ok
    listed = CliRunner().invoke(app, ["requests", "--run", str(run), "--json"])
    assert listed.exit_code == 0 and '"applied"' in listed.stdout and '"refused"' in listed.stdout


def test_a_request_queued_while_stopped_is_applied_when_training_resumes(tiny_model_dir, tmp_path):
    settings = base_settings(tiny_model_dir, shards=2, rounds=2).replace(run={"dir": str(tmp_path / "run")})
    train_workflow(grid_for(settings), settings)
    run = tmp_path / "run"
    key = tmp_path / "req.json"
    with RunAudit.open(run) as audit:
        sign_request(audit.signer, run=audit.origin, subjects=["org-1"], method="sisa").write(key)
    queued = CliRunner().invoke(app, ["requests", "--run", str(run), "--submit", str(key)])
    assert queued.exit_code == 0 and "received" in queued.output
    again = CliRunner().invoke(app, ["requests", "--run", str(run), "--submit", str(key)])
    assert again.exit_code == 2 and "already submitted" in again.output

    def live(grid, run_dir, rnd):
        apply_pending(run_dir, grid)

    train_workflow(grid_for(settings), settings, between_rounds=live)  # resumed: nothing left to train
    with Ledger.open(run) as ledger:
        assert ledger.organization("org-1").status == "erased"
    assert [r["state"] for r in status(run)] == ["applied"] and verify_run(run).ok


def _org_1_asks(run_dir, key, tmp_path) -> None:
    """The coordinator enrols org-1's request key; org-1 drops its signed request (drop) in its outbox."""
    from fedunlearn.audit import save_public_key

    pub = save_public_key(key, tmp_path / "org-1.pub")
    assert CliRunner().invoke(app, ["keys", "enrol", "--run", str(run_dir), "--org", "org-1",
                                    "--public-key", str(pub)]).exit_code == 0
    with RunAudit.open(run_dir) as audit:
        signed = sign_request(key, run=audit.origin, subjects=["org-1"], method="drop")
    box = run_dir / "requests" / "outbox" / "org-1"
    box.mkdir(parents=True)
    signed.write(box / "request.json")


def test_an_organization_hands_its_request_to_its_own_node(tiny_model_dir, tmp_path):
    """The request rides on the organization's evaluation reply (Flower Messages), is queued by the
    coordinator and applied before the next round; signed with the organization's enrolled key."""
    from fedunlearn.audit import generate_signing_key

    settings = base_settings(tiny_model_dir, shards=3, rounds=3).replace(run={"dir": str(tmp_path / "run")})
    run = tmp_path / "run"
    key = generate_signing_key("org-1.example/erasure")

    def org_side(grid, run_dir, rnd):
        if rnd == 1:  # enrol org-1's request key, then org-1 drops its own signed request in its outbox
            _org_1_asks(run_dir, key, tmp_path)
        apply_pending(run_dir, grid)

    train_workflow(grid_for(settings), settings, between_rounds=org_side)
    [row] = status(run)
    assert row["state"] == "applied" and row["via"] == "node of org-1" and row["subjects"] == ["org-1"]
    assert (run / "requests" / "outbox" / "org-1" / "sent" / "request.json").is_file()
    with Ledger.open(run) as ledger:
        assert ledger.organization("org-1").status == "erased" and ledger.head(1).round == 3
    with RunAudit.open(run) as audit:
        assert [e["signer"] for _, e in audit.events("erasure-request")] == ["subject"]
    assert verify_run(run).ok


def test_a_request_that_comes_with_the_last_rounds_replies_is_applied_before_the_training_ends(tiny_model_dir,
                                                                                                 tmp_path):
    """Dropped in its outbox during the last round, the request rides on that round's evaluation
    reply; it is applied before the training ends, not at some later resume."""
    from fedunlearn.audit import generate_signing_key

    settings = base_settings(tiny_model_dir, shards=3, rounds=2).replace(run={"dir": str(tmp_path / "run")})
    run = tmp_path / "run"
    key = generate_signing_key("org-1.example/erasure")

    def org_side(grid, run_dir, rnd):
        if rnd == 2:  # the last round: org-1 asks now; its reply to round 2's evaluation carries it
            _org_1_asks(run_dir, key, tmp_path)
        apply_pending(run_dir, grid)

    report = train_workflow(grid_for(settings), settings, between_rounds=org_side)
    [row] = status(run)
    assert row["state"] == "applied" and row["via"] == "node of org-1"
    with Ledger.open(run) as ledger:
        assert ledger.organization("org-1").status == "erased"
        assert ledger.served()["served_hash"] == report.served.hash  # the export came after the erasure
    assert verify_run(run).ok


KILLED_TRAINING = """
import os, sys
from pathlib import Path
from fedunlearn import crashpoints
from fedunlearn.certify import RunAudit, sign_request
from fedunlearn.federation.workflow import train_workflow
from fedunlearn.ledger import Ledger
from fedunlearn.unlearning.live import apply_pending, submit
from tests.unlearning.conftest import base_settings, grid_for

point, model, run = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
subjects = sys.argv[5].split(",")  # one request per organization, all arriving before round 2
settings = base_settings(model, shards=2, rounds=3, orgs=3 + (len(subjects) > 1)).replace(run={"dir": str(run)})

def arrivals(grid, run_dir, rnd):
    if rnd == 2:  # org-2's request arrives before round 2; the process dies inside its erasure
        with Ledger.open(run_dir) as ledger:
            served = ledger.served()  # None until the first export (the end of a first training)
            Path(sys.argv[4]).write_text(served["served_hash"] if served else "")
        with RunAudit.open(run_dir) as audit:
            for subject in subjects:
                submit(run_dir, sign_request(audit.signer, run=audit.origin, subjects=[subject], method="sisa"))
        crashpoints.install(lambda name: os._exit(137) if name == point else None)  # kill -9 there
    apply_pending(run_dir, grid)

train_workflow(grid_for(settings), settings, between_rounds=arrivals)
"""


@pytest.mark.slow
@pytest.mark.parametrize("point, subjects", [("erasure.journaled", ("org-2",)), ("certify.applied", ("org-2",)),
                                             ("request.logged", ("org-2", "org-3")),  # after the 1st of 2
                                             ("erasure.switched", ("org-2", "org-3")),
                                             ("certify.written", ("org-2", "org-3"))])  # after the 1st of 2
def test_a_training_killed_during_a_live_erasure_completes_it_when_restarted(point, subjects, tiny_model_dir,
                                                                            tmp_path):
    """Killed inside a live erasure (of one request, or of two carried out together): before the
    switch the previous served model stays in service and the requests stay pending; the restarted
    training completes the erasure (one certificate per request) before it trains on, and ends
    where a run that never had the organizations ends."""
    import subprocess
    import sys

    from fedunlearn.crashpoints import POINTS

    assert point in POINTS
    orgs = 3 + (len(subjects) > 1)
    run, served_file = tmp_path / "run", tmp_path / "served-before.txt"
    killed = subprocess.run([sys.executable, "-c", KILLED_TRAINING, point, str(tiny_model_dir), str(run),
                             str(served_file), ",".join(subjects)], capture_output=True, text=True, timeout=300,
                            cwd=ROOT)
    assert killed.returncode == 137, (killed.stdout[-2000:], killed.stderr[-3000:])
    waiting = status(run)
    assert [r["state"] for r in waiting] == ["received"] * len(subjects)  # still waiting
    assert sorted(s for r in waiting for s in r["subjects"]) == list(subjects)
    with Ledger.open(run) as ledger:
        if POINTS.index(point) < POINTS.index("erasure.switched"):
            served = ledger.served()
            assert (served["served_hash"] if served else "") == served_file.read_text()  # the previous one serves
            assert ledger.organization("org-2").status == "active"
    settings = base_settings(tiny_model_dir, shards=2, rounds=3, orgs=orgs).replace(run={"dir": str(run)})
    train_workflow(grid_for(settings), settings, between_rounds=lambda grid, run_dir, rnd: apply_pending(run_dir, grid))
    done = status(run)
    assert [r["state"] for r in done] == ["applied"] * len(subjects) and all(r["certificate"] for r in done)
    assert len(list((run / "certificates").glob("*.json"))) == len(subjects)  # one per request, none twice
    never = train(base_settings(tiny_model_dir, shards=2, rounds=3, orgs=orgs), tmp_path / "never", without=subjects)
    with Ledger.open(run) as ledger, Ledger.open(never) as reference:
        assert all(ledger.organization(s).status == "erased" for s in subjects)
        assert all(ledger.head(s).round == 3 for s in range(2))
        assert ledger.served()["served_hash"] == reference.served()["served_hash"]
    report = verify_run(run)
    assert report.ok, report.problems


def test_requests_arriving_together_are_carried_out_by_one_erasure(tiny_model_dir, tmp_path):
    """Two organizations' requests arriving between the same rounds are applied by one erasure (each
    shard rolled back and retrained once), each with its own certificate; a request for an unknown
    organization and a second request for an organization already asked for are refused on their
    own, and do not stop the others from being carried out together."""
    from fedunlearn.certify.certificate import Certificate

    settings = base_settings(tiny_model_dir, shards=2, rounds=3, orgs=4).replace(run={"dir": str(tmp_path / "run")})
    run = tmp_path / "run"

    def arrivals(grid, run_dir, rnd):
        if rnd == 2:
            with RunAudit.open(run_dir) as audit:
                for subjects in (["org-2"], ["org-9"], ["org-3"], ["org-2"]):  # shard 0, unknown, shard 1, again
                    submit(run_dir, sign_request(audit.signer, run=audit.origin, subjects=subjects, method="sisa"))
        apply_pending(run_dir, grid)

    train_workflow(grid_for(settings), settings, between_rounds=arrivals)
    rows = status(run)
    states = sorted((r["subjects"][0], r["state"]) for r in rows)
    assert states == [("org-2", "applied"), ("org-2", "refused"), ("org-3", "applied"), ("org-9", "refused")]
    again = next(r for r in rows if r["subjects"] == ["org-2"] and r["state"] == "refused")
    assert "already erased" in again["reason"]
    erasures = [json.loads(line) for line in (run / "erasures.jsonl").read_text().splitlines()]
    assert [e["subjects"] for e in erasures] == [["org-2", "org-3"]]  # one erasure for both
    certificates = [Certificate.read(r["certificate"]) for r in rows if r["state"] == "applied"]
    assert len(certificates) == 2 and len(list((run / "certificates").glob("*.json"))) == 2
    assert [len(c.body["subjects"]) for c in certificates] == [1, 1]  # each names its own subject only
    assert certificates[0].body["subjects"] != certificates[1].body["subjects"]
    assert certificates[0].body["models"]["after"] == certificates[1].body["models"]["after"]
    assert all(any("together with 1 other request" in n for n in c.body["notes"]) for c in certificates)
    with RunAudit.open(run) as audit:
        assert len(audit.events("erasure-request")) == 2 and len(audit.events("erasure-applied")) == 2
        assert len(audit.events("refusal")) == 2  # unknown; already erased (both before authorization)
    never = train(base_settings(tiny_model_dir, shards=2, rounds=3, orgs=4), tmp_path / "never",
                  without=("org-2", "org-3"))
    with Ledger.open(run) as ledger, Ledger.open(never) as reference:
        assert ledger.served()["served_hash"] == reference.served()["served_hash"]
    report = verify_run(run)
    assert report.ok, report.problems


def test_an_erasure_that_fails_after_authorization_is_not_filed_as_refused(tiny_model_dir, tmp_path, monkeypatch):
    """The organizations' nodes vanish mid-erasure: the requests stay waiting (not "refused"), the
    training stops, and the next apply completes the erasure with one certificate per request."""
    from fedunlearn.errors import FederationError
    from fedunlearn.unlearning import service

    settings = base_settings(tiny_model_dir, shards=2, rounds=2, orgs=4).replace(run={"dir": str(tmp_path / "run")})
    run = train(settings.replace(run={"dir": ""}), tmp_path / "run")
    with RunAudit.open(run) as audit:
        for subject in ("org-2", "org-3"):
            submit(run, sign_request(audit.signer, run=audit.origin, subjects=[subject], method="sisa"))
    real = service.erase_workflow

    def nodes_gone(*args, **kwargs):
        raise FederationError("organizations ['org-0'] did not connect within 10 s")

    monkeypatch.setattr(service, "erase_workflow", nodes_gone)
    with pytest.raises(FederationError, match="did not connect"):
        apply_pending(run, grid_for(settings))
    assert [r["state"] for r in status(run)] == ["received", "received"]
    with RunAudit.open(run) as audit:
        assert not audit.events("refusal") and len(audit.events("erasure-request")) == 2
    monkeypatch.setattr(service, "erase_workflow", real)
    outcomes = apply_pending(run, grid_for(settings))
    assert [o["state"] for o in outcomes] == ["applied", "applied"]
    assert len(list((run / "certificates").glob("*.json"))) == 2
    report = verify_run(run)
    assert report.ok, report.problems
