"""``fedunlearn forget`` through typer's CliRunner."""

from __future__ import annotations

import json

import pytest

from typer.testing import CliRunner

from fedunlearn.cli import app
from fedunlearn.ledger import Ledger
from tests.unlearning.conftest import copy_run

runner = CliRunner()


def test_forget_sisa_on_one_shard_per_organization(run_factory, tmp_path):
    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    out = runner.invoke(app, ["forget", "--run", str(run), "--org", "org-1", "--method", "sisa", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["subjects"] == ["org-1"] and doc["guarantee"] == "exact" and doc["cost"]["client_steps"] == 0
    assert doc["full_retrain_cost"]["estimated"] is True
    with Ledger.open(run) as ledger:
        assert ledger.organization("org-1").status == "erased"
        assert ledger.served()["served_hash"] == doc["served_hash"]
    log = [json.loads(line) for line in (run / "erasures.jsonl").read_text().splitlines()]
    assert [row["subjects"] for row in log] == [["org-1"]]
    again = runner.invoke(app, ["forget", "--run", str(run), "--org", "org-1"])
    assert again.exit_code == 2 and "already erased" in again.output


def test_forget_refuses_a_method_the_topology_cannot_serve(sharded_run):
    out = runner.invoke(app, ["forget", "--run", str(sharded_run), "--org", "org-1", "--method", "drop"])
    assert out.exit_code == 2
    assert "'drop' cannot erase" in out.output and "--method sisa" in out.output
    out = runner.invoke(app, ["forget", "--run", str(sharded_run), "--org", "org-7"])
    assert out.exit_code == 2 and "unknown organization 'org-7'" in out.output


def test_forget_prints_the_cost_table(run_factory, tmp_path):
    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    out = runner.invoke(app, ["forget", "--run", str(run), "--org", "org-0", "--org", "org-2", "--method", "drop"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "this erasure: 0 client-steps" in text and "full retraining (estimate):" in text and "estimated" in text
    assert "served model" in text and "nothing was trained" in text


def test_forget_is_authorized_certified_and_verifiable(run_factory, tmp_path):
    """The whole chain: signed request -> erasure -> signed certificate -> `fedunlearn verify`."""
    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    keys = tmp_path / "keys"
    for org in ("org-1", "org-2"):
        out = runner.invoke(app, ["keys", "generate", "--name", f"{org}.example/erasure", "--out", str(keys),
                                  "--stem", org])
        assert out.exit_code == 0, out.output
        out = runner.invoke(app, ["keys", "enrol", "--run", str(run), "--org", org,
                                  "--public-key", str(keys / f"{org}.pub")])
        assert out.exit_code == 0, out.output
    # org-2 may not ask for org-1's erasure: refused, logged, nothing changed
    forged = tmp_path / "forged.json"
    out = runner.invoke(app, ["keys", "sign-request", "--key", str(keys / "org-2.pem"), "--name",
                              "org-2.example/erasure", "--run", str(run), "--subject", "org-1", "--method", "drop",
                              "--out", str(forged)])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["forget", "--run", str(run), "--request", str(forged)])
    assert out.exit_code == 2, out.output
    with Ledger.open(run) as ledger:
        assert ledger.organization("org-1").status == "active"
    # org-1's own signed request goes through and is certified
    own = tmp_path / "own.json"
    out = runner.invoke(app, ["keys", "sign-request", "--key", str(keys / "org-1.pem"), "--name",
                              "org-1.example/erasure", "--run", str(run), "--subject", "org-1", "--method", "drop",
                              "--out", str(own)])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["forget", "--run", str(run), "--request", str(own), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["guarantee"] == "exact"
    certificate = doc["certificate"]
    out = runner.invoke(app, ["verify", "--run", str(run), "--certificate", certificate])
    assert out.exit_code == 0, out.output
    cert = json.loads(open(certificate).read())
    text = json.dumps(cert)
    assert "org-1" not in text  # the subject appears only as a keyed hash
    # one changed byte of the certificate makes verify fail, naming it
    data = bytearray(open(certificate, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(certificate, "wb").write(bytes(data))
    out = runner.invoke(app, ["verify", "--run", str(run), "--certificate", certificate])
    assert out.exit_code != 0


@pytest.mark.capture_before
def test_forget_captures_the_served_model_first_unless_told_not_to(run_factory, tmp_path, monkeypatch):
    captured = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "captured")
    out = runner.invoke(app, ["forget", "--run", str(captured), "--org", "org-1", "--method", "drop"])
    assert out.exit_code == 0, out.output
    files = list((captured / "evaluation" / "before").glob("*.json"))
    assert len(files) == 1 and "org-1" in json.loads(files[0].read_text())["evaluations"]

    skipped = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "skipped")
    out = runner.invoke(app, ["forget", "--run", str(skipped), "--org", "org-1", "--method", "drop",
                              "--no-capture-before"])
    assert out.exit_code == 0, out.output
    assert not (skipped / "evaluation" / "before").exists()


def test_requests_refused_before_authorization_are_logged_too(sharded_run, tmp_path):
    """An unknown subject and a malformed request file were refused without a trace in the log."""
    from fedunlearn.certify import RunAudit, verify_run

    def refusals():
        with RunAudit.open(sharded_run) as audit:
            return [e for _, e in audit.events("refusal")]

    out = runner.invoke(app, ["forget", "--run", str(sharded_run), "--org", "org-7"])
    assert out.exit_code == 2 and "unknown organization 'org-7'" in out.output
    logged = refusals()
    assert len(logged) == 1 and "unknown organization" in logged[0]["reason"] and "org-7" not in logged[0]["subjects"]
    bad = tmp_path / "request.json"
    bad.write_text('{"request": {"subjects": ["org-1"]}, "signer": 3}')
    out = runner.invoke(app, ["forget", "--run", str(sharded_run), "--request", str(bad)])
    assert out.exit_code == 2 and "signer" in out.output
    assert len(refusals()) == 2
    out = runner.invoke(app, ["forget", "--run", str(tmp_path / "nowhere"), "--org", "org-1"])
    assert out.exit_code != 0 and not (tmp_path / "nowhere").exists()  # not a run: nothing is created
    assert verify_run(sharded_run).ok


def test_record_level_forgetting_says_the_organization_stays(sharded_run, tiny_model_dir, capsys):
    from fedunlearn.cli import forget as forget_cli
    from fedunlearn.unlearning.service import erase
    from fedunlearn.training.client import organization_data
    from fedunlearn.unlearning import EraseRequest
    from tests.unlearning.conftest import SHARDED, base_settings, grid_for

    settings = base_settings(tiny_model_dir, **SHARDED)
    record = organization_data(settings, "org-2").train[0].id
    request = EraseRequest(("org-2",), method="npo", records=(record,))
    result = erase(sharded_run, request, grid=grid_for(settings))
    forget_cli._print(result, request)
    text = " ".join(capsys.readouterr().out.split())
    assert "forgot 1 record(s) of org-2 (org-2 stays in the federation) with npo" in text, text
    assert "erased" not in text and "nothing was trained" not in text


def test_verify_on_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    out = runner.invoke(app, ["verify", "--run", str(tmp_path)])
    assert out.exit_code == 2 and "is not a fedunlearn run folder" in out.output and "public key" not in out.output


def test_verify_checks_a_copy_of_the_served_adapter(run_factory, tmp_path):
    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    out = runner.invoke(app, ["forget", "--run", str(run), "--org", "org-1", "--method", "drop"])
    assert out.exit_code == 0, out.output
    copy = tmp_path / "served-copy"
    assert runner.invoke(app, ["export", "--run", str(run), "--out", str(copy)]).exit_code == 0
    ok = runner.invoke(app, ["verify", "--run", str(run), "--export", str(copy)])
    assert ok.exit_code == 0 and "files compared with the last logged export" in ok.output, ok.output
    weights = copy / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    bad = runner.invoke(app, ["verify", "--run", str(run), "--export", str(copy)])
    assert bad.exit_code == 1 and "adapter_model.safetensors differs from the logged export" in bad.output


def test_an_exported_copy_is_logged_and_a_stale_one_is_named(run_factory, tmp_path):
    """`export --out` logs the copy (destination, served hash, file hashes); after an erasure the
    copy made before it is named as stale by `verify --export`, with the fix."""
    from fedunlearn.certify.runaudit import RunAudit

    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    before = tmp_path / "before-erasure"
    assert runner.invoke(app, ["export", "--run", str(run), "--out", str(before)]).exit_code == 0
    with RunAudit.open(run) as audit:
        (_, copy_event), = audit.events("export-copy")
        served = audit.events("export")[-1][1]
    assert copy_event["destination"] == str(before.resolve()) and copy_event["served_hash"] == served["served_hash"]
    assert set(copy_event["files"]) == {p.name for p in before.iterdir()}
    assert runner.invoke(app, ["verify", "--run", str(run)]).exit_code == 0
    out = runner.invoke(app, ["forget", "--run", str(run), "--org", "org-1", "--method", "drop"])
    assert out.exit_code == 0, out.output
    stale = runner.invoke(app, ["verify", "--run", str(run), "--export", str(before)])
    text = " ".join(stale.output.split())
    assert stale.exit_code == 1 and "a stale copy" in text and str(before.resolve()) in text.replace(" ", "") or \
        str(before.resolve()) in stale.output.replace("\n", ""), stale.output
    assert "fedunlearn export" in text


def test_a_forged_copy_event_is_caught(run_factory, tmp_path):
    from fedunlearn.certify import verify_run
    from fedunlearn.certify.runaudit import RunAudit

    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    with RunAudit.open(run) as audit:  # a copy of a model the run never exported
        audit.append({"type": "export-copy", "served_hash": "0" * 64, "destination": "/elsewhere", "files": {}})
        audit.checkpoint()
    report = verify_run(run)
    assert not report.ok and any("does not copy the export logged before it" in p for p in report.problems)


def test_a_served_adapter_that_differs_from_the_logged_export_is_not_copied(run_factory, tmp_path):
    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    weights = run / "export" / "served" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    out = runner.invoke(app, ["export", "--run", str(run), "--out", str(tmp_path / "copy")])
    assert out.exit_code == 2 and "not the one the log records as exported" in " ".join(out.output.split())
    assert not (tmp_path / "copy").exists()  # nothing half-copied is left
    from fedunlearn.certify.runaudit import RunAudit

    with RunAudit.open(run) as audit:
        assert audit.events("export-copy") == []
