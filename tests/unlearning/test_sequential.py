"""Sequential erasures: three organizations erased one after another with each method; after each,
the ledger, the certificates and `verify` stay correct, and exact methods equal a run that never had
any of the erased organizations."""

from __future__ import annotations

import pytest

from fedunlearn.certify import verify_run
from fedunlearn.certify.certificate import Certificate
from fedunlearn.errors import RunStateError
from fedunlearn.ledger import Ledger
from fedunlearn.unlearning import EraseRequest
from fedunlearn.unlearning.service import certified_erase
from tests.unlearning.conftest import base_settings, copy_run, grid_for, train

FIVE = dict(shards=2, orgs=5)  # org-0, org-2, org-4 in shard 0; org-1, org-3 in shard 1
CHAIN = ("org-1", "org-2", "org-4")  # one of shard 1, then two of shard 0 (org-0 and org-3 remain)


@pytest.mark.parametrize("method", ["sisa", "retrain", "influence", "subtract", "negate"])
def test_three_erasures_in_a_row(method, tiny_model_dir, tmp_path_factory, tmp_path):
    settings = base_settings(tiny_model_dir, **FIVE)
    trained = train(settings, tmp_path_factory.mktemp("five") / "run")
    run = copy_run(trained, tmp_path / "run")
    served = []
    exact_chain = method in ("sisa", "retrain")
    for k, org in enumerate(CHAIN, start=1):
        if method == "subtract" and k == 3:  # org-4 shares shard 0 with org-2, whose updates were shredded
            with pytest.raises(RunStateError, match=r"shredded with their keys; erase 'org-4' with sisa or retrain"):
                certified_erase(run, EraseRequest((org,), method=method), grid=grid_for(settings))
            assert verify_run(run).ok  # the refusal changed nothing and is logged
            result, certificate = certified_erase(run, EraseRequest((org,), method="sisa"), grid=grid_for(settings))
            method = "sisa"  # exact from here on: it also removes what subtract left of org-2
        else:
            result, certificate = certified_erase(run, EraseRequest((org,), method=method), grid=grid_for(settings))
        served.append(result.served_hash)
        with Ledger.open(run) as ledger:
            erased = {o.name for o in ledger.organizations() if o.status == "erased"}
            assert erased == set(CHAIN[:k])
            assert ledger.served()["served_hash"] == result.served_hash
            if result.guarantee == "exact":  # what it erased; exact chains: everything erased so far
                for gone in (CHAIN[:k] if exact_chain else (org,)):
                    assert ledger.dependents(gone) == []
        assert Certificate.read(certificate.path).body["method"] == method
        assert len(list((run / "certificates").glob("*.json"))) == k
        report = verify_run(run)
        assert report.ok, (method, org, report.problems)
    assert len(set(served)) == len(CHAIN)  # every erasure changed the served model
    if exact_chain:  # exact: the same as a run that never had them
        never = train(settings, tmp_path / "never", without=CHAIN)
        with Ledger.open(never) as ledger:
            assert ledger.served()["served_hash"] == served[-1]
