"""Certificates: the guarantee is checked, never overstated; signed, logged, verifiable; tamper-evident."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from typer.testing import CliRunner

from fedunlearn.certify import Certificate, RunAudit, authorize_request, certify_erasure, sign_request, verify_run
from fedunlearn.cli import app
from fedunlearn.errors import RunStateError
from fedunlearn.federation.serving import export_served
from fedunlearn.ledger import Ledger
from fedunlearn.runs import RunFolder
from tests.tamper import tamper_sql


def _erase_org1(run_dir, org_key):
    """A hand-made exact erasure (S = N: drop org-1's shard), then its certificate."""
    run = RunFolder.open(run_dir)
    with RunAudit.open(run_dir) as audit, Ledger.open(run_dir) as ledger:
        auth = authorize_request(audit, sign_request(org_key, run=audit.origin, subjects=["org-1"]))
        before = ledger.served()["served_hash"]
        with pytest.raises(RunStateError, match="lineage still holds"):  # nothing erased yet: not exact
            certify_erasure(run, auth, {"method": "drop", "guarantee": "exact", "served_hash": before},
                            ledger=ledger, audit=audit)
        ledger.rollback(1, ledger.chain(1)[0].id)
        served = export_served(run, ledger)
        ledger.mark_erased("org-1")
        ledger.purge_dependents("org-1")  # as the erasure engine does: the old shard-1 aggregates go
        result = {"method": "drop", "guarantee": "exact", "served_hash": served.hash, "previous_served_hash": before,
                  "heads": {0: ledger.head(0).hash, 2: ledger.head(2).hash},
                  "cost": {"client_steps": 0, "wall_seconds": 0.01, "organizations": []},
                  "full_retrain_cost": {"client_steps": 8, "wall_seconds": 2.0, "organizations": ["org-0", "org-2"]},
                  "notes": ["test"]}
        cert = certify_erasure(run, auth, result, ledger=ledger, audit=audit, evaluation={"mia_auc": 0.51})
    return cert


@pytest.fixture()
def erased(run_copy, org_key):
    return run_copy, _erase_org1(run_copy, org_key)


def test_exact_certificate_content(erased):
    run_dir, cert = erased
    body = cert.body
    assert body["guarantee"]["kind"] == "exact"
    assert body["cost_ratio"] == {"client_steps": "0", "wall_seconds": "0.005"}
    assert body["evaluation"] == {"mia_auc": "0.51"}
    assert body["models"]["after"]["served"] != body["models"]["before"]["served"]
    assert "torch" in body["versions"] and "opacus" in body["versions"]
    text = cert.path.read_text()
    assert "org-" not in text.replace("org-1.example", "")  # subjects and participants as keyed hashes only
    report = verify_run(run_dir)
    assert report.ok, report.problems
    assert any("signature and inclusion" in line for line in report.checked)


def test_purged_aggregates_are_logged_and_expected_missing(erased):
    run_dir, cert = erased
    with Ledger.open(run_dir) as ledger, RunAudit.open(run_dir) as audit:
        purged = ledger.purged("org-1")
        assert [c.shard for c in purged] == [1, 1] and not any(ledger.has_state(c.hash) for c in purged)
        applied = audit.events("erasure-applied")[-1][1]
        keep = ledger.chain(0)[-1].hash
    assert applied["purged"] == sorted(c.hash for c in purged)
    assert verify_run(run_dir).ok  # purged: missing by design
    with Ledger.open(run_dir) as ledger:
        for path in ledger.aggregate_paths(keep):  # deleted without a purge record: still reported
            path.unlink()
    problems = verify_run(run_dir).problems
    assert any(keep in p and "missing" in p for p in problems), problems


def test_certified_needs_client_level_dp(run_copy, org_key):
    run = RunFolder.open(run_copy)
    with RunAudit.open(run_copy) as audit, Ledger.open(run_copy) as ledger:
        auth = authorize_request(audit, sign_request(org_key, run=audit.origin, subjects=["org-1"]))
        result = {"method": "x", "guarantee": "certified", "served_hash": ledger.served()["served_hash"]}
        with pytest.raises(RunStateError, match="client-level DP"):
            certify_erasure(run, auth, result, ledger=ledger, audit=audit)
        empirical = certify_erasure(run, auth, {**result, "guarantee": "empirical"}, ledger=ledger, audit=audit)
    assert empirical.body["guarantee"]["kind"] == "empirical"


def test_every_byte_of_a_certificate_matters(erased):
    run_dir, cert = erased
    from fedunlearn.audit import AuditLog, load_public_key
    from fedunlearn.certify import verify_certificate

    key = load_public_key(run_dir / "audit.pub")
    data = cert.path.read_bytes()
    with AuditLog.open(run_dir / "audit.sqlite", origin=key.name, create=False) as log:
        assert verify_certificate(Certificate.from_bytes(data, cert.path), key, log) == []
        for i in range(0, len(data), 3):
            bad = bytearray(data)
            bad[i] ^= 0x01
            try:
                problems = verify_certificate(Certificate.from_bytes(bytes(bad), cert.path), key, log)
            except Exception:  # noqa: BLE001 - unreadable counts as detected
                continue
            assert problems, f"a change at byte {i} went unnoticed"


def _tamper_sql(run_dir, sql, *args):
    tamper_sql(run_dir / "audit.sqlite", sql, *args)


def _tamper_note(run_dir, seq):
    conn = sqlite3.connect(run_dir / "audit.sqlite")
    note = bytearray(conn.execute("SELECT note FROM checkpoints WHERE seq = ?", (seq,)).fetchone()[0])
    conn.close()
    note[len(note) // 2] ^= 0x01  # one byte of the signed body (the root's base64)
    _tamper_sql(run_dir, "UPDATE checkpoints SET note = ? WHERE seq = ?", bytes(note), seq)


def _flip(path, offset=-10):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


TAMPERS = {
    "log-entry": (lambda d: _tamper_sql(d, "UPDATE entries SET entry = CAST(replace(CAST(entry AS TEXT), '\"round\":1', "
                                           "'\"round\":7') AS BLOB) WHERE idx = (SELECT min(idx) FROM entries WHERE "
                                           "CAST(entry AS TEXT) LIKE '%\"round\":1%')"), "entry"),
    "log-checkpoint": (lambda d: _tamper_note(d, 1), "checkpoint 1"),
    "log-rollback": (lambda d: _tamper_sql(d, "DELETE FROM entries WHERE idx >= (SELECT max(idx) - 1 FROM entries)"),
                     "removed"),
    "certificate": (lambda d: _flip(next((d / "certificates").glob("*.json")), 200), "certificate"),
    "served-adapter": (lambda d: _flip(d / "export" / "served" / "adapter_model.safetensors"),
                       "export/served/adapter_model.safetensors"),
    "served-config": (lambda d: _flip(d / "export" / "served" / "adapter_config.json", 5),
                      "export/served/adapter_config.json"),
    "shard-adapter": (lambda d: _flip(d / "export" / "shard-0" / "adapter_model.safetensors"), "export/shard-0"),
    "ledger-served": (lambda d: _ledger_sql(d, "UPDATE served SET served_hash = '0' || substr(served_hash, 2) "
                                               "WHERE id = (SELECT max(id) FROM served)"), "ledger: served hash"),
    "ledger-blob": (lambda d: _flip(sorted((d / "blobs").rglob("*"), key=lambda p: (p.is_file(), str(p)))[-1]), "blob"),
}


def _ledger_sql(run_dir, sql):
    tamper_sql(run_dir / "ledger.sqlite", sql)


def _run_json(run_dir, key, value):
    path = run_dir / "run.json"
    doc = json.loads(path.read_text())
    doc["settings"][key] = value
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


# the ledger and the settings decide what an erasure does: each is bound to the signed log
LINEAGE_TAMPERS = {
    "ledger-status": (lambda d: _ledger_sql(d, "UPDATE organizations SET status = 'active', erased = NULL "
                                               "WHERE name = 'org-1'"), "'org-1' is 'active' but the log records"),
    "ledger-weight": (lambda d: _ledger_sql(d, "UPDATE contributions SET weight = weight * 2 WHERE checkpoint_id = "
                                               "(SELECT min(checkpoint_id) FROM contributions)"), "contributions"),
    "ledger-org": (lambda d: _ledger_sql(d, "UPDATE contributions SET org = 'org-2' WHERE org = 'org-0'"),
                   "contributions"),
    "ledger-examples": (lambda d: _ledger_sql(d, "UPDATE contributions SET num_examples = num_examples + 1"),
                        "contributions"),
    "ledger-parent": (lambda d: _ledger_sql(d, "UPDATE checkpoints SET parent_id = (SELECT min(id) FROM checkpoints "
                                               "WHERE round = 0) WHERE id = (SELECT max(id) FROM checkpoints WHERE "
                                               "round = 2 AND shard = 0)"), "parent differ"),
    "run-json-lr": (lambda d: _run_json(d, "train.lr", 0.5), "run.json: its settings differ"),
    "run-json-base": (lambda d: _run_json(d, "model.path", "/elsewhere"), "run.json: its settings differ"),
}
TAMPERS.update(LINEAGE_TAMPERS)


def _delete_an_update_blob(run_dir):
    conn = sqlite3.connect(run_dir / "ledger.sqlite")
    digest = conn.execute("SELECT update_hash FROM contributions WHERE org = 'org-0' LIMIT 1").fetchone()[0]
    conn.close()
    paths = [p for p in (run_dir / "blobs").rglob("*") if p.is_file() and digest in p.name]
    assert paths
    for path in paths:
        path.unlink()


# files the log vouches for: gone, or joined by a stranger
TAMPERS.update({
    "certificate-deleted": (lambda d: next((d / "certificates").glob("*.json")).unlink(),
                            "logged but its file is missing"),
    "update-blob-deleted": (_delete_an_update_blob, "of 'org-0'"),
    "served-extra-file": (lambda d: (d / "export" / "served" / "extra.bin").write_bytes(b"x"),
                          "export/served/extra.bin: in the served folder but not in the logged export"),
    "audit-pub": (lambda d: _flip(d / "audit.pub", 20), "audit.pub"),
})

# what the served model is made of, and the fingerprint of each organization's data
TAMPERS.update({
    "ledger-served-weights": (lambda d: _ledger_sql(d, "UPDATE served SET weights = replace(weights, '0.', '9.') "
                                                       "WHERE id = (SELECT max(id) FROM served)"), "served"),
    "ledger-data-sha256": (lambda d: _ledger_sql(d, "UPDATE meta SET value = '0' || substr(value, 2) "
                                                    "WHERE key = 'data-sha256/org-0'"), "data-sha256"),
    "ledger-data-sha256-deleted": (lambda d: _ledger_sql(d, "DELETE FROM meta WHERE key = 'data-sha256/org-0'"),
                                   "data-sha256/org-0: missing"),
})


@pytest.mark.parametrize("kind", sorted(TAMPERS))
def test_tampering_is_detected_and_named(erased, tmp_path, kind):
    run_dir, _ = erased
    victim = tmp_path / "victim"
    shutil.copytree(run_dir, victim)
    tamper, needle = TAMPERS[kind]
    tamper(victim)
    out = CliRunner().invoke(app, ["verify", "--run", str(victim), "--public-key", str(run_dir / "audit.pub")])
    assert out.exit_code == 1, out.output
    assert needle in out.output.replace("\n", " "), out.output


def test_cli_verify_passes_on_an_intact_run(erased):
    run_dir, cert = erased
    out = CliRunner().invoke(app, ["verify", "--run", str(run_dir), "--certificate", str(cert.path), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout[out.stdout.index("{"):])["ok"] is True
