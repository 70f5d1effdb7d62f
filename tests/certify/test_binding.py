"""Settings and lineage bound to the signed log (fedunlearn.certify.binding)."""

from __future__ import annotations

from fedunlearn.certify import RunAudit
from fedunlearn.certify.binding import UNBOUND_SETTINGS, bind_settings, binding_problems, settings_digest
from fedunlearn.ledger import Ledger


def test_a_trained_run_has_its_settings_logged_before_its_first_round(run_copy):
    with RunAudit.open(run_copy) as audit, Ledger.open(run_copy) as ledger:
        kinds = [e["type"] for _, e in audit.events()]
        assert kinds.index("run-settings") < kinds.index("round-commit")
        assert audit.events("run-settings")[0][1]["sha256"] == settings_digest(run_copy)
        assert bind_settings(audit) is False  # once only
        problems, notes = binding_problems(run_copy, [e for _, e in audit.events()], ledger, audit.subject)
        assert problems == [] and notes == []
        updates = audit.events("round-commit")[-1][1]["updates"]
        assert updates and all(isinstance(u["examples"], int) for u in updates)


def test_a_run_made_before_the_binding_says_what_cannot_be_checked(run_copy):
    with RunAudit.open(run_copy) as audit, Ledger.open(run_copy) as ledger:
        older = [e for _, e in audit.events() if e["type"] != "run-settings"]  # as an older log reads
        problems, notes = binding_problems(run_copy, older, ledger, audit.subject)
        assert problems == [] and UNBOUND_SETTINGS in notes
        problems, notes = binding_problems(run_copy, older, ledger, None)  # no HMAC secret at hand
        assert problems == [] and any("identities" in n for n in notes)
