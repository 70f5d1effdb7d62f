"""Erasure requests: only the subject's enrolled key or the coordinator's; refusals are logged."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

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
        logged, deadline = (datetime.fromisoformat(event[k].replace("Z", "+00:00")) for k in ("time", "deadline"))
        assert timedelta(days=29, hours=23) < deadline - logged <= timedelta(days=30)  # one month from receipt
        from fedunlearn.unlearning import EraseRequest

        request = EraseRequest.from_authorization(auth)
        assert request.subjects == ("org-1",) and request.requested_by.startswith("subject key ")
    assert verify_run(run_copy).ok


def test_coordinator_may_sign_for_anyone(run_copy):
    with RunAudit.open(run_copy) as audit:
        auth = authorize_request(audit, sign_request(audit.signer, run=audit.origin, subjects=["org-0", "org-2"]))
        assert auth.signer_role == "coordinator" and auth.subjects == ("org-0", "org-2")


def _padding_variant(signature: str) -> str:
    """The same 64 signature bytes, base64 with other padding bits (decodes identically, not canonical)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body, last = signature[:-3], signature[-3]  # 64 bytes -> 86 chars + "=="; the 86th holds 4 padding bits
    i = alphabet.index(last)
    variant = body + alphabet[(i & ~0xF) | ((i + 1) & 0xF)] + "=="
    assert base64.b64decode(variant, validate=True) == base64.b64decode(signature) and variant != signature
    return variant


def _signed_body(key, body):
    from fedunlearn.audit import canonical_json
    from fedunlearn.certify import SignedRequest
    from fedunlearn.certify.authorize import _DOMAIN

    return SignedRequest(body, key.verifier.vkey, base64.b64encode(key.sign(_DOMAIN + canonical_json(body))).decode())


@pytest.mark.parametrize("case", ["other-org", "stranger", "wrong-run", "altered", "unknown-subject",
                                  "no-key-enrolled", "replay", "garbage", "bad-signature", "non-canonical-signature",
                                  "replay-reencoded", "issued-1970", "issued-2999", "issued-garbage",
                                  "issued-missing", "issued-before-run"])
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
        elif case in ("non-canonical-signature", "replay-reencoded"):
            signed = sign_request(org_key, run=origin, subjects=["org-1"])
            if case == "replay-reencoded":  # the first use is accepted; the same signature re-encoded is a replay
                authorize_request(audit, signed)
            doc = json.loads(signed.to_json())
            doc["signature"] = _padding_variant(doc["signature"])
            request = doc
        elif case.startswith("issued-"):
            issued = {"issued-1970": "1970-01-01T00:00:00Z", "issued-2999": "2999-01-01T00:00:00Z",
                      "issued-garbage": "not-a-date",  # a day before the run was made: recent, but older than the run
                      "issued-before-run": (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
                      }.get(case)
            body = dict(sign_request(org_key, run=origin, subjects=["org-1"]).request)
            if issued is None:
                del body["issued"]
            else:
                body["issued"] = issued
            request = _signed_body(org_key, body)  # correctly signed: only the time is wrong
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
        reason = refusals[-1]["reason"]
        expected = {"issued-1970": "days old", "issued-2999": "future", "issued-garbage": "not a UTC time",
                    "issued-missing": "no 'issued'", "issued-before-run": "predates the run",
                    "non-canonical-signature": "canonical base64", "replay-reencoded": "canonical base64"}
        assert expected.get(case, "") in reason, reason
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
