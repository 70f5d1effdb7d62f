"""Erasure requests: only the subject's enrolled key or the coordinator's; refusals are logged."""

from __future__ import annotations

import json

import pytest

from fedunlearn.audit import generate_signing_key, load_signing_key
from fedunlearn.certify import RunAudit, authorize_request, sign_request, verify_run
from fedunlearn.errors import AuthorizationError


def _refusals(audit):
    return [e for _, e in audit.events("refusal")]


def test_subject_signs_its_own_request(run_copy, org_key):
    with RunAudit.open(run_copy) as audit:
        auth = authorize_request(audit, sign_request(org_key, run=audit.origin, subjects=["org-1"]).to_json())
        assert auth.subjects == ("org-1",) and auth.signer_role == "subject"
        event = dict(audit.events("erasure-request"))[auth.log_index]
        assert event["subjects"] == [audit.subject("org-1")] and event["request"] == auth.request.digest
        assert auth.to_erase_request().subjects == ("org-1",)
    assert verify_run(run_copy).ok


def test_coordinator_may_sign_for_anyone(run_copy):
    with RunAudit.open(run_copy) as audit:
        auth = authorize_request(audit, sign_request(audit.signer, run=audit.origin, subjects=["org-0", "org-2"]))
        assert auth.signer_role == "coordinator" and auth.subjects == ("org-0", "org-2")


@pytest.mark.parametrize("case", ["other-org", "stranger", "wrong-run", "altered", "unknown-subject",
                                  "no-key-enrolled", "replay", "garbage", "bad-signature"])
def test_unauthorized_requests_are_refused_and_logged(run_copy, org_key, case):
    with RunAudit.open(run_copy) as audit:
        origin = audit.origin
        request: object
        if case == "other-org":  # org-1 asks for org-0's erasure
            request = sign_request(org_key, run=origin, subjects=["org-0"])
        elif case == "stranger":
            request = sign_request(generate_signing_key("x.example/k"), run=origin, subjects=["org-1"])
        elif case == "wrong-run":
            request = sign_request(org_key, run="fedunlearn.local/other/00", subjects=["org-1"])
        elif case == "altered":
            doc = json.loads(sign_request(org_key, run=origin, subjects=["org-1"]).to_json())
            doc["request"]["method"] = "retrain"
            request = doc
        elif case == "unknown-subject":
            request = sign_request(audit.signer, run=origin, subjects=["org-9"])
        elif case == "no-key-enrolled":  # org-0 enrolled no key: a key claiming to be its is refused
            request = sign_request(generate_signing_key("org-0.example/k"), run=origin, subjects=["org-0"])
        elif case == "replay":
            request = sign_request(org_key, run=origin, subjects=["org-1"])
            authorize_request(audit, request)
        elif case == "garbage":
            request = b"{not json"
        else:
            doc = json.loads(sign_request(org_key, run=origin, subjects=["org-1"]).to_json())
            doc["signature"] = doc["signature"][:-4] + "AAA="
            request = doc
        before = len(_refusals(audit))
        with pytest.raises(AuthorizationError, match="refused"):
            authorize_request(audit, request)
        refusals = _refusals(audit)
        assert len(refusals) == before + 1
        assert "org-" not in json.dumps(refusals[-1])  # keyed hashes only
    assert verify_run(run_copy).ok  # the refusal is signed into the log


def test_cli_signs_a_request(run_copy, tmp_path):
    from typer.testing import CliRunner

    from fedunlearn.certify import SignedRequest
    from fedunlearn.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["keys", "generate", "--name", "org-2.example/erasure", "--out", str(tmp_path / "k")])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["keys", "enrol", "--run", str(run_copy), "--org", "org-2",
                              "--public-key", str(tmp_path / "k" / "erasure.pub")])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["keys", "sign-request", "--key", str(tmp_path / "k" / "erasure.pem"),
                              "--name", "org-2.example/erasure", "--run", str(run_copy), "--subject", "org-2",
                              "--out", str(tmp_path / "req.json")])
    assert out.exit_code == 0, out.output
    with RunAudit.open(run_copy) as audit:
        auth = authorize_request(audit, SignedRequest.read(tmp_path / "req.json"))
    assert auth.signer_role == "subject"
    assert load_signing_key(tmp_path / "k" / "erasure.pem", name="org-2.example/erasure")
