"""Key rotation: coordinator and organization keys change only by a rotation the old key attests."""

from __future__ import annotations

import base64
import json
import sqlite3

import pytest
from typer.testing import CliRunner

from fedunlearn.audit import (
    AuditLog,
    attest_rotation,
    generate_signing_key,
    load_public_key,
    rotation_event,
    save_private_key,
    save_public_key,
    sign_checkpoint,
)
from fedunlearn.audit.rotation import rotation_message
from fedunlearn.certify import RunAudit, authorize_request, certify_erasure, sign_request, verify_run
from fedunlearn.cli import app
from fedunlearn.errors import AuthorizationError, RunStateError
from fedunlearn.ledger import Ledger
from fedunlearn.runs import RunFolder


def _certify(run_dir, audit, ledger, subject="org-0"):
    auth = authorize_request(audit, sign_request(audit.signer, run=audit.origin, subjects=[subject]))
    served = ledger.served()["served_hash"]
    return certify_erasure(RunFolder.open(run_dir), auth, {"method": "dp", "guarantee": "empirical",
                                                           "served_hash": served}, ledger=ledger, audit=audit)


def test_coordinator_rotation_keeps_the_whole_history_verifiable(run_copy):
    pinned = load_public_key(run_copy / "audit.pub")
    with RunAudit.open(run_copy) as audit, Ledger.open(run_copy) as ledger:
        before = _certify(run_copy, audit, ledger)
        old = audit.signer
        new = audit.rotate_key()
        assert new.raw != old.verifier.raw and new.name == pinned.name == audit.origin
        after = _certify(run_copy, audit, ledger)
    # checkpoints before the rotation verify under the old key, later ones under the new key only
    with AuditLog.open(run_copy / "audit.sqlite", origin=pinned.name, create=False) as log:
        notes = log.checkpoints()
        report = log.verify(pinned)
    assert report.ok, report.problems
    assert [k.key_id for _, k in report.keys.coordinator] == [pinned.key_id, new.key_id]
    signers = [new.key_id.hex() if new.key_id.hex() in _key_ids(n) else old.key_id.hex() for n in notes]
    assert signers[0] == old.key_id.hex() and signers[-1] == new.key_id.hex()
    assert before.signature["vkey"] == pinned.vkey and after.signature["vkey"] == new.vkey
    result = verify_run(run_copy)
    assert result.ok, result.problems
    assert any("1 attested rotation" in line for line in result.checked)
    # reopening finds the new key in force; audit.pub stays the pinned first key
    with RunAudit.open(run_copy) as audit:
        assert audit.verifier.raw == new.raw
        assert load_public_key(run_copy / "audit.pub").raw == pinned.raw
        # a request signed with the rotated-out coordinator key is refused and logged
        with pytest.raises(AuthorizationError, match="rotated-out coordinator key"):
            authorize_request(audit, sign_request(old, run=audit.origin, subjects=["org-2"]))
    assert verify_run(run_copy).ok


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _key_ids(note: str) -> str:
    return " ".join(base64.b64decode(line.split(" ")[-1])[:4].hex() for line in note.split("\n\n")[1].splitlines())


def _forge_checkpoint(run_dir, key):
    """Append a checkpoint of the current tree signed by ``key`` (as an attacker with file access could)."""
    origin = load_public_key(run_dir / "audit.pub").name
    with AuditLog.open(run_dir / "audit.sqlite", origin=origin) as log:
        size, root = log.size, log.root()
    conn = sqlite3.connect(run_dir / "audit.sqlite")
    seq = conn.execute("SELECT MAX(seq) + 1 FROM checkpoints").fetchone()[0]
    conn.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?)",
                 (seq, size, root, sign_checkpoint(origin, size, root, key).encode()))
    conn.commit()
    conn.close()


def test_checkpoint_by_a_key_never_rotated_in_is_rejected(run_copy):
    assert verify_run(run_copy).ok
    _forge_checkpoint(run_copy, generate_signing_key(load_public_key(run_copy / "audit.pub").name))
    result = verify_run(run_copy)
    assert not result.ok
    assert any("no signature from key" in p and "0 rotation(s) followed" in p for p in result.problems), result.problems


def test_checkpoint_by_a_rotated_out_key_is_rejected(run_copy):
    with RunAudit.open(run_copy) as audit:
        old = audit.signer
        audit.rotate_key()
    _forge_checkpoint(run_copy, old)  # the old key (say, stolen) signs the current tree
    result = verify_run(run_copy)
    assert any("a rotated-out key signed it" in p for p in result.problems), result.problems


def test_rotation_not_attested_by_the_previous_key_is_rejected(run_copy):
    with RunAudit.open(run_copy) as audit:
        impostor = generate_signing_key(audit.origin)
        # the new key attests itself instead of the coordinator's key in force
        message = rotation_message(audit.origin, "coordinator", audit.signer.verifier.raw, impostor.verifier.raw)
        statement = {"role": "coordinator", "old": _b64(audit.signer.verifier.raw), "new": _b64(impostor.verifier.raw),
                     "attestation": _b64(impostor.sign(message))}
        audit.append(rotation_event(statement))
        audit.signer = audit.log.signer = impostor  # ... and signs the log from then on
        audit.checkpoint()
    result = verify_run(run_copy)
    assert not result.ok
    assert any("key rotation rejected" in p for p in result.problems), result.problems
    assert any("no signature from key" in p for p in result.problems), result.problems
    save_private_key(impostor, run_copy / "secrets" / "coordinator.pem", overwrite=True)
    with pytest.raises(RunStateError, match="not the coordinator key in force"):
        RunAudit.open(run_copy)  # the log still holds the old key in force


def test_organization_rotation_refuses_the_old_key(run_copy, org_key, tmp_path):
    new = generate_signing_key("org-1.example/erasure-2026")
    with RunAudit.open(run_copy) as audit:
        # not attested by org-1's key in force: refused and logged
        forged = attest_rotation(generate_signing_key("x.example/k"), new.verifier, origin=audit.origin,
                                 role="organization")
        with pytest.raises(AuthorizationError, match="refused"):
            audit.rotate_org_key("org-1", forged)
        assert [e for _, e in audit.events("refusal")][-1]["what"] == "key-rotation"
        with pytest.raises(RunStateError, match="keys rotate"):  # re-enrolment cannot swap the key
            audit.enrol("org-1", shard=1, join_round=1, public_key=new.verifier)
    # the organization rotates with its current key through the CLI
    paths = {}
    for label, key in (("old", org_key), ("new", new)):
        paths[label] = (save_private_key(key, tmp_path / f"{label}.pem"), save_public_key(key, tmp_path / f"{label}.pub"))
    out = CliRunner().invoke(app, ["keys", "rotate", "--run", str(run_copy), "--org", "org-1",
                                   "--key", str(paths["old"][0]), "--new-public-key", str(paths["new"][1])])
    assert out.exit_code == 0, out.output
    assert load_public_key(run_copy / "org-keys" / "org-1.pub").raw == new.verifier.raw
    with RunAudit.open(run_copy) as audit:
        assert audit.enrolled_key("org-1").raw == new.verifier.raw
        event = [e for _, e in audit.events("key-rotation")][-1]
        assert event["role"] == "organization" and "org-1" not in json.dumps(event)
        with pytest.raises(AuthorizationError, match="rotated out by the organization"):
            authorize_request(audit, sign_request(org_key, run=audit.origin, subjects=["org-1"]))
        assert "rotated out" in [e for _, e in audit.events("refusal")][-1]["reason"]
        auth = authorize_request(audit, sign_request(new, run=audit.origin, subjects=["org-1"]))
        assert auth.signer_role == "subject"
    assert verify_run(run_copy).ok


def test_organization_rotates_offline_with_a_signed_statement(run_copy, org_key, tmp_path):
    """`keys sign-rotation` on the organization's machine, `keys rotate --statement` at the coordinator."""
    new = generate_signing_key("org-1.example/erasure-2026")
    old_pem = save_private_key(org_key, tmp_path / "old.pem")
    new_pub = save_public_key(new, tmp_path / "new.pub")
    runner = CliRunner()
    statement = tmp_path / "rotation.json"
    out = runner.invoke(app, ["keys", "sign-rotation", "--key", str(old_pem), "--new-public-key", str(new_pub),
                              "--run", str(run_copy / "audit.pub"), "--out", str(statement)])
    assert out.exit_code == 0, out.output
    assert "PRIVATE" not in statement.read_text(encoding="utf-8")  # only public material travels
    swapped = json.loads(statement.read_text(encoding="utf-8"))  # a statement whose key was swapped in transit
    swapped["new_public_key"] = generate_signing_key("org-1.example/erasure-2026").verifier.vkey
    (tmp_path / "swapped.json").write_text(json.dumps(swapped), encoding="utf-8")
    out = runner.invoke(app, ["keys", "rotate", "--run", str(run_copy), "--org", "org-1",
                              "--statement", str(tmp_path / "swapped.json")])
    assert out.exit_code != 0 and "not the key its signed 'new' field names" in out.output
    out = runner.invoke(app, ["keys", "rotate", "--run", str(run_copy), "--org", "org-1", "--statement", str(statement),
                              "--key", str(old_pem)])
    assert out.exit_code != 0 and "drop --key" in out.output
    out = runner.invoke(app, ["keys", "rotate", "--run", str(run_copy), "--org", "org-1", "--statement", str(statement)])
    assert out.exit_code == 0, out.output
    assert load_public_key(run_copy / "org-keys" / "org-1.pub").raw == new.verifier.raw
    with RunAudit.open(run_copy) as audit:
        assert audit.enrolled_key("org-1").raw == new.verifier.raw
        with pytest.raises(AuthorizationError, match="rotated out by the organization"):
            authorize_request(audit, sign_request(org_key, run=audit.origin, subjects=["org-1"]))
        assert authorize_request(audit, sign_request(new, run=audit.origin, subjects=["org-1"])).signer_role == "subject"
    assert verify_run(run_copy).ok


def test_cli_rotates_the_coordinator_key(run_copy):
    runner = CliRunner()
    out = runner.invoke(app, ["keys", "rotate", "--run", str(run_copy)])
    assert out.exit_code == 0, out.output
    assert "coordinator key rotated" in out.output
    out = runner.invoke(app, ["verify", "--run", str(run_copy)])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["keys", "rotate", "--run", str(run_copy), "--key", "x.pem"])
    assert out.exit_code == 2 and "--org" in out.output


def test_interrupted_rotation_is_completed_on_open(run_copy):
    with RunAudit.open(run_copy) as audit:
        new = generate_signing_key(audit.origin)
        save_private_key(new, run_copy / "secrets" / "coordinator.next.pem")
        audit.append(rotation_event(attest_rotation(audit.signer, new.verifier, origin=audit.origin,
                                                    role="coordinator")))
        audit.signer = audit.log.signer = new
        audit.checkpoint()  # ... and the process dies before coordinator.pem is replaced
    with RunAudit.open(run_copy) as audit:
        assert audit.verifier.raw == new.verifier.raw
    assert not (run_copy / "secrets" / "coordinator.next.pem").exists()
    assert verify_run(run_copy).ok
