"""The evaluation summary enters the erasure's certificate by re-issuing it; verify still passes."""

from __future__ import annotations

from fedunlearn.certify import RunAudit, authorize_request, certify_erasure, sign_request, verify_run
from fedunlearn.certify.amend import find_certificate, reissue_with_evaluation
from fedunlearn.federation.serving import export_served
from fedunlearn.ledger import Ledger
from fedunlearn.runs import RunFolder
from tests.certify.conftest import org_key, run_copy, trained_run  # noqa: F401  (fixtures)


def drop_and_certify(run_dir, org_key) -> tuple[dict, object]:
    """Drop org-1's shard from ``run_dir`` by hand (as the ``drop`` engine does) and certify it.

    Returns the erasure record and its signed certificate.
    """
    run = RunFolder.open(run_dir)
    with RunAudit.open(run_dir) as audit, Ledger.open(run_dir) as ledger:
        auth = authorize_request(audit, sign_request(org_key, run=audit.origin, subjects=["org-1"]))
        before = ledger.served()["served_hash"]
        ledger.rollback(1, ledger.chain(1)[0].id)
        ledger.mark_erased("org-1")
        served = export_served(run, ledger)
        ledger.purge_erased()  # as the erasure engine does: nothing readable depends on org-1
        erasure = {"method": "drop", "guarantee": "exact", "served_hash": served.hash, "previous_served_hash": before,
                   "heads": {}, "cost": {"client_steps": 0}, "full_retrain_cost": {"client_steps": 8}}
        return erasure, certify_erasure(run, auth, erasure, ledger=ledger, audit=audit)


def test_reissued_certificate_verifies(run_copy, org_key):  # noqa: F811
    result, first = drop_and_certify(run_copy, org_key)
    assert find_certificate(run_copy, result["served_hash"]).digest == first.digest
    second = reissue_with_evaluation(run_copy, first, {"after:drop": {"mia_auc": {"loss": 0.5}}})
    assert second.body["supersedes"] == first.digest
    assert second.body["evaluation"]["after:drop"]["mia_auc"]["loss"] == "0.5"
    assert find_certificate(run_copy, result["served_hash"]).digest == second.digest
    report = verify_run(run_copy)
    assert report.ok, report.problems
