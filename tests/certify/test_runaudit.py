"""The audit log of a trained run: keys on disk, enrolment and round events, no names, verifies."""

from __future__ import annotations

import stat

from fedunlearn.audit import load_public_key
from fedunlearn.certify import RunAudit, verify_run
from fedunlearn.ledger import Ledger


def test_run_has_a_signed_log_and_keys_outside_it(trained_run):
    assert (trained_run / "audit.sqlite").is_file()
    vkey = load_public_key(trained_run / "audit.pub")
    for secret in ("coordinator.pem", "subject-hmac.key"):
        mode = (trained_run / "secrets" / secret).stat().st_mode
        assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE((trained_run / "secrets").stat().st_mode) == 0o700
    with RunAudit.open(trained_run) as audit:
        assert audit.verifier.vkey == vkey.vkey
        report = audit.log.verify(vkey)
        assert report.ok, report.problems
        assert report.signed_size == report.size  # everything is covered by a signature


def test_enrolment_round_and_export_events(trained_run, org_key):
    with RunAudit.open(trained_run) as audit, Ledger.open(trained_run) as ledger:
        enrol = [e for _, e in audit.events("enrolment")]
        assert sorted({e["org"] for e in enrol}) == sorted(audit.subject(f"org-{i}") for i in range(3))
        assert audit.enrolled_key("org-1").raw == org_key.verifier.raw
        assert audit.enrolled_key("org-0") is None
        rounds = [e for _, e in audit.events("round-commit")]
        assert len(rounds) == 3 * 3  # 3 shards x rounds 0..2
        by_ckpt = {e["checkpoint"]: e for e in rounds}
        for shard in range(3):
            for ckpt in ledger.chain(shard):
                event = by_ckpt[ckpt.id]
                assert event["aggregate"] == ckpt.hash and event["round"] == ckpt.round
                assert [u["update"] for u in event["updates"]] == [c.update_hash for c in ledger.contributions(ckpt.id)]
        export = [e for _, e in audit.events("export")][-1]
        assert export["served_hash"] == ledger.served()["served_hash"]
        assert any(f.startswith("export/served/") for f in export["files"])
        # a checkpoint was signed after every committed round
        assert len(audit.log.checkpoints()) >= 1 + 2 * 3


def test_no_organization_name_in_the_log(trained_run):
    data = (trained_run / "audit.sqlite").read_bytes()
    for i in range(3):
        assert f"org-{i}".encode() not in data


def test_resume_logs_nothing_twice(trained_run, run_copy):
    with RunAudit.open(run_copy) as audit, Ledger.open(run_copy) as ledger:
        size = audit.log.size
        assert audit.sync(ledger) == 0
        audit.enrol("org-1", shard=1, join_round=1, public_key=audit.enrolled_key("org-1"))
        assert audit.log.size == size
    assert verify_run(run_copy).ok
