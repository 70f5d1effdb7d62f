"""Erasure requests honored live, between rounds of a running training (fedunlearn.unlearning.live)."""

from __future__ import annotations

from typer.testing import CliRunner

from fedunlearn.certify import RunAudit, sign_request, verify_run
from fedunlearn.cli import app
from fedunlearn.federation.workflow import train_workflow
from fedunlearn.ledger import Ledger
from fedunlearn.unlearning.live import apply_pending, status, submit
from tests.unlearning.conftest import base_settings, grid_for, train


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
    assert seen == [1, 2, 3]
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


def test_an_organization_hands_its_request_to_its_own_node(tiny_model_dir, tmp_path):
    """The request rides on the organization's evaluation reply (Flower Messages), is queued by the
    coordinator and applied before the next round; signed with the organization's enrolled key."""
    from fedunlearn.audit import generate_signing_key, save_public_key

    settings = base_settings(tiny_model_dir, shards=3, rounds=3).replace(run={"dir": str(tmp_path / "run")})
    run = tmp_path / "run"
    key = generate_signing_key("org-1.example/erasure")

    def org_side(grid, run_dir, rnd):
        if rnd == 1:  # enrol org-1's request key, then org-1 drops its own signed request in its outbox
            pub = save_public_key(key, tmp_path / "org-1.pub")
            assert CliRunner().invoke(app, ["keys", "enrol", "--run", str(run_dir), "--org", "org-1",
                                            "--public-key", str(pub)]).exit_code == 0
            with RunAudit.open(run_dir) as audit:
                signed = sign_request(key, run=audit.origin, subjects=["org-1"], method="drop")
            box = run_dir / "requests" / "outbox" / "org-1"
            box.mkdir(parents=True)
            signed.write(box / "request.json")
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
